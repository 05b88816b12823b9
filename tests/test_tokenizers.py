"""Tokenizers against the real publisher files of ../shared/data/tokenizers.

References: llama.cpp's ggml-vocab-*.gguf.inp/.out (46 strings each, ids made by HF
`tokenizer.encode(text, add_special_tokens=False)`), mistral-common's tokens_v1.json, and HF `tokenizers`
itself as the oracle for OLMo-2's tokenizer.json. The test builds checkpoint-like directories of symlinks
to the shared files plus the small JSON files a publisher ships beside them.
"""
import json
import struct
from pathlib import Path

import pytest

from data import load_tokenizer
from data.bpe_tokenizer import BYTE_TO_CHAR

VOCAB_TEST_SEP = "\n__ggml_vocab_test__\n"


def checkpoint_dir(root: Path, links: dict[str, Path] = {}, files: dict[str, object] = {}) -> Path:
    """A directory with `links` (name -> shared file) symlinked and `files` (name -> JSON object or text) written."""
    root.mkdir(parents=True, exist_ok=True)
    for name, target in links.items():
        (root / name).symlink_to(target)
    for name, content in files.items():
        (root / name).write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return root


def llama_cpp_cases(shared: Path, name: str) -> list[tuple[str, list[int]]]:
    """The 46 (text, reference ids) pairs of ggml-vocab-{name}.gguf.inp/.out."""
    base = shared / "tokenizers" / "llama_cpp_vocab" / f"ggml-vocab-{name}.gguf"
    inputs = Path(f"{base}.inp").read_text(encoding="utf-8")
    outputs = Path(f"{base}.out").read_text(encoding="utf-8")
    assert inputs.endswith(VOCAB_TEST_SEP) and outputs.endswith("\n")
    texts = inputs[: -len(VOCAB_TEST_SEP)].split(VOCAB_TEST_SEP)
    ids = [[int(i) for i in line.split()] for line in outputs[:-1].split("\n")]
    assert len(texts) == len(ids) == 46
    return list(zip(texts, ids))


def read_gguf_kv(path: Path) -> dict:
    """The key/value metadata of a GGUF v3 file (these vocab files hold no tensors)."""
    buf = path.read_bytes()
    assert buf[:4] == b"GGUF"
    version, _n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    assert version == 3
    scalars = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    offset = 24

    def string():
        nonlocal offset
        (n,) = struct.unpack_from("<Q", buf, offset)
        offset += 8 + n
        return buf[offset - n: offset].decode("utf-8")

    def value(kind):
        nonlocal offset
        if kind == 8:
            return string()
        if kind == 9:
            item_kind, n = struct.unpack_from("<IQ", buf, offset)
            offset += 12
            return [value(item_kind) for _ in range(n)]
        fmt = "<" + scalars[kind]
        (v,) = struct.unpack_from(fmt, buf, offset)
        offset += struct.calcsize(fmt)
        return v

    kv = {}
    for _ in range(n_kv):
        key = string()
        (kind,) = struct.unpack_from("<I", buf, offset)
        offset += 4
        kv[key] = value(kind)
    return kv


def assert_reference_lists(tok, cases):
    mismatches = [(text, tok.encode(text), ids) for text, ids in cases if tok.encode(text) != ids]
    assert not mismatches, mismatches[:3]
    for text, ids in cases:
        assert tok.decode(ids) == text


def added_tokens_decoder(tokens: dict[int, str], rstrip=()) -> dict:
    return {str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": c in rstrip,
                     "single_word": False, "special": True} for i, c in tokens.items()}


LLAMA2_SPECIAL = {0: "<unk>", 1: "<s>", 2: "</s>"}


# --- SentencePiece ------------------------------------------------------------------------------------


def test_llama2_reproduces_llama_cpp_reference_lists(shared_data, tmp_path):
    # Llama-2's tokenizer_config.json: <unk>/<s>/</s> added, bos <s>, eos </s>, pad null.
    tok = load_tokenizer(checkpoint_dir(tmp_path, {"tokenizer.model": shared_data / "tokenizers/llama2/tokenizer.model"}, {
        "tokenizer_config.json": {"added_tokens_decoder": added_tokens_decoder(LLAMA2_SPECIAL), "bos_token": "<s>",
                                  "eos_token": "</s>", "pad_token": None, "unk_token": "<unk>",
                                  "tokenizer_class": "LlamaTokenizer"}}))
    assert_reference_lists(tok, llama_cpp_cases(shared_data, "llama-spm"))
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, None)
    assert tok.encode("<s>Hi</s>") == [1] + tok.encode("Hi") + [2]


@pytest.fixture
def phi3_dir(shared_data, tmp_path):
    """Phi-3: the Llama-2 SentencePiece model plus the added tokens of ggml-vocab-phi-3.gguf (ids 32000-32010),
    with the flags of Phi-3-mini's published tokenizer_config.json (rstrip on </s> and on all but <|endoftext|>)."""
    tokens = read_gguf_kv(shared_data / "tokenizers/llama_cpp_vocab/ggml-vocab-phi-3.gguf")["tokenizer.ggml.tokens"]
    added = {i: tokens[i] for i in range(32000, 32011)}
    assert added[32000] == "<|endoftext|>" and added[32010] == "<|user|>"
    decoder = added_tokens_decoder({**LLAMA2_SPECIAL, **added}, rstrip=set(added.values()) - {"<|endoftext|>"} | {"</s>"})
    return checkpoint_dir(tmp_path / "phi3", {"tokenizer.model": shared_data / "tokenizers/llama2/tokenizer.model"}, {
        "tokenizer_config.json": {"added_tokens_decoder": decoder, "bos_token": "<s>", "eos_token": "<|endoftext|>",
                                  "pad_token": "<|endoftext|>", "unk_token": "<unk>", "tokenizer_class": "LlamaTokenizer",
                                  "add_bos_token": False, "add_eos_token": False, "legacy": True},
        "added_tokens.json": {c: i for i, c in added.items()}})


@pytest.fixture
def phi3(phi3_dir):
    return load_tokenizer(phi3_dir)


def test_phi3_reproduces_llama_cpp_reference_lists(phi3, shared_data):
    assert_reference_lists(phi3, llama_cpp_cases(shared_data, "phi-3"))
    assert (phi3.bos_id, phi3.eos_id, phi3.pad_id, phi3.vocab_size) == (1, 32000, 32000, 32011)


def test_phi3_added_tokens_split_first_and_swallow_whitespace_on_their_rstrip_side(phi3):
    # rstrip: "<|user|>\n" is the one id 32010; each segment between added tokens gets SPM's dummy prefix.
    chat = "<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n"
    assert phi3.encode(chat) == [32010] + phi3.encode("What is 2+2?") + [32007, 32001]
    assert phi3.encode("a<|endoftext|> b") == phi3.encode("a") + [32000] + phi3.encode(" b")
    assert phi3.decode(phi3.encode("x<|endoftext|>")) == "x<|endoftext|>"
    assert phi3.decode(phi3.encode("x<|endoftext|>"), skip_special_tokens=True) == "x"


def test_phi3_added_tokens_match_transformers(phi3, phi3_dir):
    # transformers rebuilds the tokenizer from tokenizer.model (through protobuf). Its legacy Metaspace does not
    # prefix a segment that already starts with a space, unlike the published tokenizer.json that made the
    # reference lists above, so these strings have no segment starting with a space.
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("google.protobuf")
    oracle = transformers.AutoTokenizer.from_pretrained(str(phi3_dir))
    texts = ["<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n4<|end|>\n<|endoftext|>", "<|system|>  \n\nBe brief.<|end|>",
             "a<|endoftext|>b<|user|>\tc", "<s>Hello</s>\n\nx<|placeholder6|>", "\n\nHi<|end|>\n\n there"]
    assert [phi3.encode(t) for t in texts] == [oracle.encode(t, add_special_tokens=False) for t in texts]


def test_mistral_reproduces_mistral_common_reference_sample(shared_data, tmp_path):
    # mistral-common v1: [BOS] + per turn SPM("[INST] {user} [/INST]") + SPM(assistant) + [EOS], each segment
    # encoded on its own (with the dummy prefix).
    ref = shared_data / "tokenizers/mistral/reference_samples_no_tools"
    tok = load_tokenizer(checkpoint_dir(tmp_path, {"tokenizer.model": shared_data / "tokenizers/mistral/tokenizer.model.v1"}))
    messages = json.loads((ref / "sample.json").read_text())["messages"]
    ids = [tok.bos_id]
    for message in messages:
        if message["role"] == "user":
            ids += tok.encode(f"[INST] {message['content']} [/INST]")
        else:
            ids += tok.encode(message["content"]) + [tok.eos_id]
    assert ids == json.loads((ref / "tokens_v1.json").read_text())["tokens"]
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, None)  # from the SentencePiece model itself


# --- byte-level BPE -----------------------------------------------------------------------------------


@pytest.fixture
def qwen2_dir(shared_data, tmp_path):
    src = shared_data / "tokenizers/qwen2"
    names = ["vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json", "special_tokens_map.json",
             "generation_config.json"]
    return checkpoint_dir(tmp_path, {n: src / n for n in names} | {"config.json": src / "config_qwen2-1.5b-instruct.json"})


@pytest.fixture
def qwen2(qwen2_dir):
    return load_tokenizer(qwen2_dir)


def test_qwen2_reproduces_llama_cpp_reference_lists(qwen2, shared_data):
    assert_reference_lists(qwen2, llama_cpp_cases(shared_data, "qwen2"))


def test_qwen2_special_ids_and_chat_markup(qwen2):
    # tokenizer_config.json: bos null (it wins over config.json's bos_token_id 151643), eos <|im_end|>, pad <|endoftext|>.
    assert (qwen2.bos_id, qwen2.eos_id, qwen2.pad_id) == (None, 151645, 151643)
    text = "<|im_start|>user\nHello<|im_end|>\n"
    assert qwen2.encode(text) == [151644] + qwen2.encode("user\nHello") + [151645] + qwen2.encode("\n")
    assert qwen2.decode(qwen2.encode(text)) == text


def test_qwen2_matches_transformers_on_gsm8k(qwen2, qwen2_dir, shared_data):
    transformers = pytest.importorskip("transformers")
    oracle = transformers.AutoTokenizer.from_pretrained(str(qwen2_dir))
    rows = [json.loads(line) for line in (shared_data / "gsm8k/test.jsonl").read_text(encoding="utf-8").splitlines()]
    texts = [r["question"] for r in rows] + ["<|im_start|>user\n  ünïcödé café 12345<|im_end|>\n"]
    mismatches = [t for t in texts if qwen2.encode(t) != oracle.encode(t, add_special_tokens=False)]
    assert not mismatches, mismatches[:3]


def test_gpt2_reproduces_llama_cpp_reference_lists_with_the_gguf_vocabulary(shared_data, tmp_path):
    kv = read_gguf_kv(shared_data / "tokenizers/llama_cpp_vocab/ggml-vocab-gpt-2.gguf")
    tok = load_tokenizer(checkpoint_dir(tmp_path, files={
        "vocab.json": {t: i for i, t in enumerate(kv["tokenizer.ggml.tokens"])},
        "merges.txt": "#version: 0.2\n" + "\n".join(kv["tokenizer.ggml.merges"]) + "\n",
        "tokenizer_config.json": {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>",
                                  "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}}))
    assert_reference_lists(tok, llama_cpp_cases(shared_data, "gpt-2"))
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (50256, 50256, None)


def test_roberta_reproduces_llama_cpp_reference_lists(shared_data, tmp_path):
    # No tokenizer_config.json: the GPT-2 pre-tokeniser is chosen from config.json's model_type.
    src = shared_data / "tokenizers/roberta"
    tok = load_tokenizer(checkpoint_dir(tmp_path, {"vocab.json": src / "vocab.json", "merges.txt": src / "merges_from_gguf.txt"},
                                        {"config.json": {"model_type": "roberta", "bos_token_id": 0, "eos_token_id": 2,
                                                         "pad_token_id": 1}}))
    assert_reference_lists(tok, llama_cpp_cases(shared_data, "roberta-bpe"))
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 2, 1)


def test_olmo2_tokenizer_json_matches_hf_tokenizers_on_gsm8k(shared_data, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    spec = shared_data / "tokenizers/olmo2/allenai_dolma2.json"
    # The eos/pad ids of OLMo-2 7B (peteish7 configs in the OLMo repo, see SOURCES.md).
    tok = load_tokenizer(checkpoint_dir(tmp_path, {"tokenizer.json": spec},
                                        {"config.json": {"model_type": "olmo2", "eos_token_id": 100257, "pad_token_id": 100277}}))
    oracle = tokenizers.Tokenizer.from_file(str(spec))
    rows = [json.loads(line) for line in (shared_data / "gsm8k/test.jsonl").read_text(encoding="utf-8").splitlines()]
    texts = [r["question"] for r in rows] + [r["answer"] for r in rows[:300]]
    texts.append("<|endoftext|>Q: 2+2?<|im_start|>user\n  x<|pad|>  \n\n ünïcödé 12345 ")
    assert len(rows) == 1319
    mismatches = [t for t in texts if tok.encode(t) != oracle.encode(t, add_special_tokens=False).ids]
    assert not mismatches, mismatches[:3]
    assert all(tok.decode(tok.encode(t)) == t for t in texts)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (None, 100257, 100277)


GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@pytest.mark.parametrize("normalizer, pre_tokenizer", [
    (None, {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}),
    ({"type": "NFKC"}, {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\p{N}"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}),
    ({"type": "Sequence", "normalizers": [{"type": "NFC"}]}, {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": " "}, "behavior": "Removed", "invert": False},
        {"type": "Split", "pattern": {"Regex": GPT2_REGEX}, "behavior": "Removed", "invert": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}),
])
def test_tokenizer_json_pre_tokenizer_variants_match_hf_tokenizers(shared_data, tmp_path, normalizer, pre_tokenizer):
    """Split behaviours, ByteLevel's own regex and prefix space, normaliser forms: RoBERTa's vocabulary and
    merges written as a tokenizer.json with each pre-tokenizer, checked against HF `tokenizers`."""
    tokenizers = pytest.importorskip("tokenizers")
    src = shared_data / "tokenizers/roberta"
    merges = (src / "merges_from_gguf.txt").read_text(encoding="utf-8").splitlines()[1:]
    spec = {"version": "1.0", "truncation": None, "padding": None, "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer, "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "added_tokens": [{"id": 50264, "content": "<mask>", "single_word": False, "lstrip": True, "rstrip": False,
                              "normalized": False, "special": True}],
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                      "vocab": json.loads((src / "vocab.json").read_text(encoding="utf-8")), "merges": merges}}
    root = checkpoint_dir(tmp_path, files={"tokenizer.json": spec})
    tok, oracle = load_tokenizer(root), tokenizers.Tokenizer.from_file(str(root / "tokenizer.json"))
    texts = [t for t, _ in llama_cpp_cases(shared_data, "roberta-bpe")] + ["Fill the <mask> in 12 ｆｕｌｌ-width ﬁ words"]
    mismatches = [t for t in texts if tok.encode(t) != oracle.encode(t, add_special_tokens=False).ids]
    assert not mismatches, mismatches[:3]


def test_tiny_random_checkpoint_tokenizer(tmp_path):
    from models.random_checkpoint import BOS_ID, EOS_ID, PAD_ID, write_tokenizer

    write_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    text = "Q: 5 + 5?\nA: ünïcödé 10 ✅"
    # No merges: one id per UTF-8 byte, through the byte-character table.
    assert tok.encode(text) == [vocab[BYTE_TO_CHAR[b]] for b in text.encode("utf-8")]
    assert tok.decode(tok.encode(text)) == text
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (BOS_ID, EOS_ID, PAD_ID)
    assert tok.encode("<s>a</s>") == [BOS_ID, vocab["a"], EOS_ID]


# --- special-id precedence and bad input --------------------------------------------------------------


def tiny_bpe_files(**extra) -> dict:
    vocab = {c: i for i, c in enumerate(BYTE_TO_CHAR.values())} | {"<a>": 256, "<b>": 257, "<c>": 258}
    return {"vocab.json": vocab, "merges.txt": "#version: 0.2\n", **extra}


@pytest.mark.parametrize("files, eos", [
    ({"tokenizer_config.json": {"tokenizer_class": "GPT2Tokenizer", "eos_token": {"content": "<a>", "lstrip": False}},
      "special_tokens_map.json": {"eos_token": "<b>"}, "generation_config.json": {"eos_token_id": 258}}, 256),
    ({"tokenizer_config.json": {"tokenizer_class": "GPT2Tokenizer"}, "special_tokens_map.json": {"eos_token": "<b>"},
      "generation_config.json": {"eos_token_id": 258}}, 257),
    ({"tokenizer_config.json": {"tokenizer_class": "GPT2Tokenizer"}, "generation_config.json": {"eos_token_id": [258, 257]},
      "config.json": {"eos_token_id": 256}}, 258),
    ({"config.json": {"model_type": "gpt2", "eos_token_id": 256}}, 256),
    ({"tokenizer_config.json": {"tokenizer_class": "GPT2Tokenizer", "eos_token": None},
      "config.json": {"eos_token_id": 256}}, None),
])
def test_special_id_precedence(tmp_path, files, eos):
    assert load_tokenizer(checkpoint_dir(tmp_path, files=tiny_bpe_files(**files))).eos_id == eos


GPT2_CONFIG = {"tokenizer_class": "GPT2Tokenizer"}


@pytest.mark.parametrize("files, missing, error, names", [
    ({}, (), FileNotFoundError, "no tokenizer files"),
    (tiny_bpe_files(), ("merges.txt",), FileNotFoundError, "merges.txt"),
    (tiny_bpe_files(**{"tokenizer_config.json": "{not json"}), (), ValueError, "tokenizer_config.json"),
    (tiny_bpe_files(**{"tokenizer_config.json": GPT2_CONFIG, "merges.txt": "#version: 0.2\na b\nc\n"}), (),
     ValueError, "merges.txt: line 3"),
    (tiny_bpe_files(**{"tokenizer_config.json": GPT2_CONFIG, "vocab.json": ["a"]}), (), ValueError, "vocab.json"),
    (tiny_bpe_files(**{"tokenizer_config.json": {"tokenizer_class": "BertTokenizer"}}), (), ValueError, "tokenizer_class"),
    (tiny_bpe_files(**{"config.json": {"model_type": "llama"}}), (), ValueError, "model_type 'llama'"),
    (tiny_bpe_files(**{"tokenizer_config.json": {**GPT2_CONFIG, "eos_token": "<zz>"}}), (), ValueError,
     "tokenizer_config.json: eos_token '<zz>'"),
    (tiny_bpe_files(**{"tokenizer_config.json": GPT2_CONFIG, "config.json": {"pad_token_id": 999}}), (), ValueError,
     "config.json: pad_token_id"),
    (tiny_bpe_files(**{"tokenizer_config.json": {**GPT2_CONFIG, "added_tokens_decoder": {"300": {"lstrip": True}}}}), (),
     ValueError, "added_tokens_decoder['300']"),
    ({"tokenizer.json": {"model": {"type": "Unigram", "vocab": []}}}, (), ValueError, "tokenizer.json: model.type"),
    ({"tokenizer.json": {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                         "pre_tokenizer": {"type": "Metaspace"}}}, (), ValueError, "pre_tokenizer type 'Metaspace'"),
    ({"tokenizer.model": "not a protobuf"}, (), ValueError, "tokenizer.model: not a readable SentencePiece model"),
])
def test_bad_tokenizer_files_are_errors_naming_the_file(tmp_path, files, missing, error, names):
    root = checkpoint_dir(tmp_path / "ckpt", files={k: v for k, v in files.items() if k not in missing})
    with pytest.raises(error, match=names.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        load_tokenizer(root)


def test_not_a_directory_and_bad_ids_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        load_tokenizer(tmp_path / "absent")
    tok = load_tokenizer(checkpoint_dir(tmp_path, files=tiny_bpe_files(**{"tokenizer_config.json": GPT2_CONFIG})))
    with pytest.raises(ValueError, match="token id 259 is out of range"):
        tok.decode([1, 259])
    with pytest.raises(ValueError, match="token id -1 is out of range"):
        tok.decode([-1])


def _tokenizer_json(path, vocab, merges, split_regex=r"\s+"):
    spec = {"model": {"type": "BPE", "vocab": vocab, "merges": merges},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": split_regex}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]},
            "decoder": {"type": "ByteLevel"}, "added_tokens": []}
    (path / "tokenizer.json").write_text(json.dumps(spec))


@pytest.mark.parametrize("vocab, merges, split_regex, words", [
    ({"a": "0", "b": 1}, [], r"\s+", "token 'a' has id '0'; ids must be integers"),
    ({"a": 0, "b": 1}, ["a b"], r"\s+", "merge 0 ('a' 'b') uses 'ab', which is not in the vocabulary"),
    ({"a": 0, "ab": 1}, ["a b"], r"\s+", "merge 0 ('a' 'b') uses 'b'"),
    ({"a": 0, "b": 1}, [], r"(\s+", "Split regex '(\\\\s+' does not compile"),
])
def test_bad_tokenizer_json_is_refused_at_load_naming_the_file(tmp_path, vocab, merges, split_regex, words):
    """What HF's tokenizers refuses when it loads the file, ours refuses then too (not at encode time)."""
    _tokenizer_json(tmp_path, vocab, merges, split_regex)
    with pytest.raises(ValueError, match="tokenizer.json: ") as e:
        load_tokenizer(tmp_path)
    assert words in str(e.value)
