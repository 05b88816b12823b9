"""The classification task object: collation, losses against HF's sequence classifiers, batched prediction,
RoBERTa's pair template against HF's tokenizer, and the demo data set."""
import json

import pytest
import torch

from data import load_tokenizer
from data.classification import ClassificationTask
from data.demo_data import demo_splits
from data.glue import Example, glue_file, read_glue
from models import load_model

transformers = pytest.importorskip("transformers")

EXAMPLES = [Example("a b c", "d e", 1), Example("f", None, 0), Example("g h i j k", "l", 2)]


def _char_encoder(a, b, max_len):
    """A stand-in tokenizer: one id per letter, BERT's template with [CLS] = 1, [SEP] = 2."""
    ids = lambda s: [3 + ord(c) - ord("a") for c in s.split()]  # noqa: E731
    first = [1] + ids(a) + [2]
    second = [] if b is None else ids(b) + [2]
    return (first + second)[:max_len], ([0] * len(first) + [1] * len(second))[:max_len]


class _CharTok:
    """The stand-in as a tokenizer: what ClassificationTask uses of one."""
    pad_id = 0
    encode_pair = staticmethod(_char_encoder)


def test_collate_pads_right_with_mask_types_and_labels():
    task = ClassificationTask(EXAMPLES, EXAMPLES[:1], _CharTok(), num_labels=3, metric="accuracy")
    batch = task.collate(task.train)
    assert batch["input_ids"].tolist() == [[1, 3, 4, 5, 2, 6, 7, 2, 0], [1, 8, 2, 0, 0, 0, 0, 0, 0],
                                           [1, 9, 10, 11, 12, 13, 2, 14, 2]]
    assert batch["attention_mask"].sum(1).tolist() == [8, 3, 9]
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 0]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0, 2]
    reg = ClassificationTask([Example("a", "b", 3.5)], [], _CharTok(), 1, "pearson")
    assert reg.collate(reg.train)["labels"].dtype == torch.float32


@pytest.mark.parametrize("num_labels", [1, 3])
def test_loss_equals_hf_sequence_classifier(tmp_path, num_labels):
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=20, num_labels=num_labels)
    hf = transformers.BertForSequenceClassification(cfg).eval()
    hf.save_pretrained(tmp_path)
    model = load_model(tmp_path).eval()
    examples = EXAMPLES if num_labels == 3 else [Example(e.text_a, e.text_b, 0.5 + e.label) for e in EXAMPLES]
    task = ClassificationTask(examples, [], _CharTok(), num_labels, "accuracy" if num_labels > 1 else "pearson")
    batch = task.collate(task.train)
    total, n = model.loss(batch)
    with torch.no_grad():
        ref = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"].long(),
                 token_type_ids=batch["token_type_ids"], labels=batch["labels"]).loss  # the batch mean
    assert n.item() == 3
    torch.testing.assert_close(total / n, ref, atol=1e-5, rtol=1e-5)


def test_batched_prediction_keeps_order_and_metrics(tmp_path):
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=20, num_labels=3)
    transformers.BertForSequenceClassification(cfg).save_pretrained(tmp_path)
    model = load_model(tmp_path).train()
    task = ClassificationTask(EXAMPLES, EXAMPLES * 3, _CharTok(), 3, "matthews", eval_batch_size=2)
    preds = task.predict(model, task.val)
    assert model.training  # restored
    model.eval()
    one_by_one = [model(**{k: v for k, v in task.collate([e]).items() if k != "labels"}).argmax(-1).item()
                  for e in task.val]
    assert preds.tolist() == one_by_one  # sorting by length and padding change nothing
    scores = task.evaluate(model, task.val)
    assert set(scores) == {"matthews", "accuracy"} and 0.0 <= scores["accuracy"] <= 1.0


def test_roberta_pairs_equal_hf_tokenizer(tmp_path, shared_data):
    src = shared_data / "tokenizers" / "roberta"
    (tmp_path / "vocab.json").symlink_to(src / "vocab.json")
    (tmp_path / "merges.txt").symlink_to(src / "merges_from_gguf.txt")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "RobertaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}))
    encode = load_tokenizer(tmp_path).encode_pair
    oracle = transformers.RobertaTokenizerFast(vocab=str(src / "vocab.json"), merges=str(src / "merges_from_gguf.txt"))
    assert oracle("Hello world")["input_ids"] == [0, 31414, 232, 2]  # the oracle really read the files
    pairs = [(e.text_a, e.text_b) for e in read_glue("rte", glue_file(shared_data / "glue", "rte"))[:40]]
    for max_len in (128, 30):
        for a, b in pairs + [(pairs[0][0], None)]:
            ref = oracle(a, b, truncation=True, max_length=max_len)
            assert encode(a, b, max_len) == (ref["input_ids"], [0] * len(ref["input_ids"])), (a, b, max_len)


def test_demo_data_is_balanced_distinct_and_seeded():
    train, val = demo_splits(400, 100, seed=3)
    assert len(train) == 400 and len(val) == 100
    texts = [e.text_a for e in train + val]
    assert len(set(texts)) == 500  # no sentence in both splits
    assert 0.4 < sum(e.label for e in train) / 400 < 0.6
    assert demo_splits(400, 100, seed=3) == (train, val) and demo_splits(400, 100, seed=4)[0] != train
    # the same adjective appears with both labels (negation and contrast frames), so no word decides it
    great = {e.label for e in train + val if " great" in e.text_a}
    assert great == {0, 1}


def test_task_builders(tmp_path, minilm_dir):
    from data.classification import build_demo_task, build_glue_task
    tok = load_tokenizer(minilm_dir)  # WordPiece, chosen from the folder's files
    demo = build_demo_task(tok, 20, 10, seed=0)
    assert len(demo.train) == 20 and demo.train[0]["input_ids"][0] == tok.cls_id
    (tmp_path / "STS-B").mkdir()
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    row = "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA man plays.\tA man is playing.\t4.200\n"
    for split in ("train", "dev"):
        (tmp_path / "STS-B" / f"{split}.tsv").write_text(header + row * 3)
    glue = build_glue_task(tok, "stsb", tmp_path)
    assert (glue.num_labels, glue.metric, len(glue.train), len(glue.val)) == (1, "pearson", 3, 3)
    assert glue.train[0]["label"] == 4.2 and 1 in glue.train[0]["token_type_ids"]
