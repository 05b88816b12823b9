"""Batched generation with a preallocated KV cache: greedy decoding and beam search.

Both decoders reproduce HF transformers' `generate(do_sample=False, num_beams=k)` token for token (the
beam search follows its vectorised implementation: log-softmax scores, top (1 + n_eos) * k candidates over
k * vocab, finished hypotheses scored sum_logprobs / n_new_tokens ** length_penalty, the same stopping
heuristic and final choice), so the paper's evaluation numbers are reproducible without the HF stack.

Notation: B prompts, k beams, P padded prompt length, N = max_new_tokens, V vocab, K candidates per prompt.

Prompts are LEFT-padded into one (B, P) batch; a row's positions count its real tokens only. One prefill
forward over the B prompts fills cache slots [0, P) (the prompts are run once, also for beam search, whose
k beams share their prompt's slots), then each step writes its new tokens after them. Only the last position
goes through lm_head, so no (B, P, V) logits tensor is ever built.

Decode steps have static shapes (the default): the step's inputs sit in fixed buffers, the new keys/values
go to slots held in a device tensor, and attention covers the cache's first S slots, S rounded up to a
bucket (the caller's mask hides the unwritten ones), so one CUDA graph per bucket replays every step on
CUDA (captured on first use; on CPU the same step runs eagerly). With `Decoder.compile_blocks()` the graphs
replay the compiled blocks. The token bookkeeping between steps is a few tensor ops with no host sync;
whether every row (greedy) or the search (beam) has finished is read on the host only every _CHECK_EVERY
steps, so the GPU never waits for Python. Beam search never copies cache rows: a beam's history is a set of
slots named by its ancestry (see _beam_search).
"""
import torch

from models.kv_cache import KVCache

_NEG = -1.0e9  # HF's "impossible" score; kept identical so ties and sums round the same way
_BUCKET = 64  # static steps attend over a multiple of this many slots per new token (one CUDA graph each)
_CHECK_EVERY = 16  # steps between host reads of "all finished"


def generate(model, prompts: list[list[int]], max_new_tokens: int, num_beams: int = 1,
             eos_id: int | list[int] | None = None, pad_id: int | None = None,
             length_penalty: float = 1.0, early_stopping: bool | str = False, static: bool = True,
             use_cuda_graph: bool = True) -> list[list[int]]:
    """New tokens for each prompt, ending with the EOS token if one was produced (nothing after it).

    `pad_id` only fills the left padding and the internal slots of finished rows (it never reaches the
    output); it defaults to the first EOS id, else 0. `length_penalty` and `early_stopping` (True, False
    or "never") apply to beam search only, with HF's meaning. `static=False` runs the dynamic-shape step
    (attention over exactly the slots written so far, never graphed), the reference for the static one;
    `use_cuda_graph` replays static steps as CUDA graphs on a CUDA device (no effect elsewhere).
    """
    vocab_size = model.cfg.vocab_size
    eos = _eos_ids(eos_id, vocab_size)
    _check_args(prompts, max_new_tokens, num_beams, early_stopping, vocab_size)
    if pad_id is None:
        pad_id = eos[0] if eos else 0
    device = model.lm_head.weight.device
    eos_t = torch.tensor(eos, dtype=torch.long, device=device) if eos else None
    with torch.inference_mode():
        input_ids, pad_mask = _left_pad(prompts, pad_id, device)
        graph = use_cuda_graph and static and device.type == "cuda"
        if num_beams == 1:
            tokens = _greedy(model, input_ids, pad_mask, max_new_tokens, eos_t, pad_id, static, graph)
        else:
            tokens = _beam_search(model, input_ids, pad_mask, max_new_tokens, num_beams, eos_t,
                                  length_penalty, early_stopping, static, graph)
        lengths = _lengths_through_eos(tokens, eos_t)
    return [row[:n] for row, n in zip(tokens.tolist(), lengths.tolist())]


def _eos_ids(eos_id, vocab_size: int) -> list[int]:
    eos = [] if eos_id is None else [eos_id] if isinstance(eos_id, int) else list(eos_id)
    for e in eos:
        if not isinstance(e, int) or not 0 <= e < vocab_size:
            raise ValueError(f"generate: eos_id {e!r} is not a token id in [0, {vocab_size})")
    return eos


def _check_args(prompts, max_new_tokens, num_beams, early_stopping, vocab_size: int) -> None:
    if not prompts:
        raise ValueError("generate: prompts is empty")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"generate: prompt {i} is empty")
        bad = [t for t in p if not isinstance(t, int) or not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"generate: prompt {i} has token {bad[0]!r} outside [0, {vocab_size})")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"generate: num_beams must be a positive int, got {num_beams!r}")
    if not (early_stopping is True or early_stopping is False or early_stopping == "never"):
        raise ValueError(f"generate: early_stopping must be True, False or 'never', got {early_stopping!r}")


def _left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P) token ids and (B, P) bool mask (True = real token), padded on the left."""
    P = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (P - len(p)) + p for p in prompts], dtype=torch.long, device=device)
    lens = torch.tensor([len(p) for p in prompts], device=device)
    mask = torch.arange(P, device=device)[None, :] >= (P - lens)[:, None]  # (B, P)
    return ids, mask


def _prefill(model, input_ids, pad_mask, slots: int):
    """Run the prompts once into a fresh cache of `slots` slots per row.

    Returns the cache, the last position's fp32 logits (B, V) and the prompt tokens' positions (B, P)
    (pad slots get 0; they are never attended).
    """
    cache = KVCache.for_model(model, input_ids.shape[0], slots)
    padded = not bool(pad_mask.all())
    positions = (pad_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P)
    hidden = model.forward_hidden(input_ids, positions=positions, pad_mask=pad_mask if padded else None,
                                  kv_cache=cache, cache_start=0)[:, -1]  # (B, dim)
    return cache, model.lm_head(hidden).float(), positions


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _window_mask(key_pos: torch.Tensor, query_pos: torch.Tensor, window: int | None):
    """(R, T, S) bool: the keys at positions key_pos (R, S) within the sliding window of queries at
    query_pos (R, T), or None without a window."""
    if window is None:
        return None
    return key_pos[:, None, :] > query_pos[:, :, None] - window


class _DecodeStep:
    """T new tokens per row through the model at cache slots [slot, slot + T): fp32 logits (R * T, V).

    The caller's `visible` (R, T, max_len) bool says which slots each new token attends to (models/decoder.py's
    attn_mask); greedy decoding feeds one token per row (T = 1), beam search a prompt's k beams as one row of
    T = k tokens. Static: tokens, positions, slot and mask are copied into fixed device buffers and the model
    attends over the cache's first S slots, S the end of the bucket of _BUCKET * T slots holding the new ones,
    so every step of a bucket has the same shapes and addresses; with `graph` each bucket's step is captured
    once as a CUDA graph and then replayed (the returned logits are then the graph's output buffer: read them
    before the next call). Dynamic: the decoder's int cache_start path, attention over exactly slots
    [0, slot + T).
    """

    def __init__(self, model, cache: KVCache, T: int, static: bool, graph: bool):
        self.model, self.cache, self.T, self.static, self.graph = model, cache, T, static, graph
        R, dev = cache.batch, cache.k.device
        self.tok = torch.zeros(R, T, dtype=torch.long, device=dev)
        self.pos = torch.zeros(R, T, dtype=torch.long, device=dev)
        self.slot = torch.zeros((), dtype=torch.long, device=dev)
        self.visible = torch.zeros(R, T, cache.max_len, dtype=torch.bool, device=dev)
        self.graphs = {}  # S: (CUDAGraph, its logits buffer)

    def __call__(self, tok: torch.Tensor, pos: torch.Tensor, slot: int, visible: torch.Tensor) -> torch.Tensor:
        if not self.static:
            h = self.model.forward_hidden(tok, positions=pos, kv_cache=self.cache, cache_start=slot,
                                          attn_mask=visible[:, :, :slot + self.T])  # (R, T, dim)
            return self.model.lm_head(h).float().flatten(0, 1)
        self.tok.copy_(tok)
        self.pos.copy_(pos)
        self.slot.fill_(slot)
        self.visible.copy_(visible)
        bucket = _BUCKET * self.T
        S = min(self.cache.max_len, _round_up(slot + self.T, bucket))
        if not self.graph:
            return self._forward(S)
        if S not in self.graphs:
            self.graphs[S] = self._capture(S)
        graph, logits = self.graphs[S]
        with torch.cuda.device(self.tok.device):
            graph.replay()
        return logits

    def _forward(self, S: int) -> torch.Tensor:
        h = self.model.forward_hidden(self.tok, positions=self.pos, kv_cache=self.cache, cache_start=self.slot,
                                      attn_mask=self.visible[:, :, :S])  # (R, T, dim); the mask is a view
        return self.model.lm_head(h).float().flatten(0, 1)  # (R * T, V)

    def _capture(self, S: int):
        """Warm up on a side stream (lazy library init and compilation must not happen during capture),
        then capture. The warm-up writes the same keys/values at the same slots as the replay that follows,
        so it is harmless."""
        with torch.cuda.device(self.tok.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._forward(S)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits = self._forward(S)
        return graph, logits


def _greedy(model, input_ids, pad_mask, max_new_tokens: int, eos, pad_id: int, static: bool,
            graph: bool) -> torch.Tensor:
    """(B, n) argmax tokens; a row that emitted EOS emits pad afterwards; stops when every row is done
    (noticed within _CHECK_EVERY steps; the extra steps only add pad).

    Row b's cache holds its prompt in slots [0, P) (left-padded) and its t-th new token at slot P + t, so
    within a row slot distance is position distance and the window is a window over slots.
    """
    B, P = input_ids.shape
    dev = input_ids.device
    slots = P + max_new_tokens
    cache, logits, _ = _prefill(model, input_ids, pad_mask, _round_up(slots, _BUCKET) if static else slots)
    step = _DecodeStep(model, cache, 1, static, graph)
    written = torch.ones(B, cache.max_len, dtype=torch.bool, device=dev)  # (B, slots): real, once written
    written[:, :P] = pad_mask
    slot_idx = torch.arange(cache.max_len, device=dev)
    window = model.cfg.sliding_window
    next_pos = pad_mask.sum(-1)  # (B,)
    out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=dev)
    unfinished = torch.ones(B, dtype=torch.bool, device=dev)
    for t in range(max_new_tokens):
        tok = torch.where(unfinished, logits.argmax(-1), pad_id)  # (B,)
        out[:, t] = tok
        if eos is not None:
            unfinished &= ~torch.isin(tok, eos)
        if t == max_new_tokens - 1:
            break
        if eos is not None and t % _CHECK_EVERY == _CHECK_EVERY - 1 and not unfinished.any().item():
            break
        visible = written & (slot_idx <= P + t)  # (B, slots)
        if window is not None:
            visible &= slot_idx > P + t - window
        logits = step(tok[:, None], (next_pos + t)[:, None], P + t, visible[:, None])
    return out[:, :t + 1]


def _beam_search(model, input_ids, pad_mask, N: int, k: int, eos, length_penalty: float,
                 early_stopping, static: bool, graph: bool) -> torch.Tensor:
    """(B, N) best hypothesis per prompt, HF's vectorised beam search on the model's device.

    Running state, per prompt: k live beams (their tokens, summed log-probs) and the k best finished
    hypotheses (tokens, length-penalised score, whether the slot holds a real hypothesis). HF stops at the
    first step where the search cannot go on; here `active` turns False on the device at that step and
    freezes the finished set, which is the output, so steps run until the host next looks are harmless.

    Cache layout, one row per prompt (no per-beam copies, nothing moved when beams are reordered): the
    prompt in slots [0, P), then step u's k new tokens side by side in slots P + u * k + j (j the beam that
    produced it). `anc` (B, k, N) records, for each live beam, which j holds its token of each step u
    (-1 for steps not yet taken); a beam attends to the prompt and to the slots its ancestry names. Each
    step runs a prompt's k beams as one row of k new tokens at slots [P + t * k, P + t * k + k).
    """
    B, P = input_ids.shape
    dev = input_ids.device
    n_eos = 0 if eos is None else eos.numel()
    K = max(2, 1 + n_eos) * k  # enough candidates that k of them are always still running
    is_top_k = torch.arange(K, device=dev) < k  # (K,)

    slots = P + N * k
    cache, logits, positions = _prefill(model, input_ids, pad_mask, _round_up(slots, _BUCKET * k) if static else slots)
    logits = logits.repeat_interleave(k, 0)  # (B*k, V): every beam starts from the prompt
    step = _DecodeStep(model, cache, k, static, graph)
    next_pos = pad_mask.sum(-1)  # (B,)
    gen_pos = next_pos[:, None] + torch.arange(N, device=dev).repeat_interleave(k)  # (B, N*k)
    tail = cache.max_len - slots
    key_pos = torch.cat((positions, gen_pos, gen_pos.new_zeros(B, tail)), 1)  # (B, slots) position of each slot
    beam_ids = torch.arange(k, device=dev)
    anc = torch.full((B, k, N), -1, dtype=torch.long, device=dev)
    prompt_visible = pad_mask[:, None, :].expand(B, k, P)
    no_slots = torch.zeros(B, k, tail, dtype=torch.bool, device=dev)

    run_seqs = torch.zeros(B, k, N, dtype=torch.long, device=dev)
    run_scores = torch.full((B, k), _NEG, device=dev)
    run_scores[:, 0] = 0.0  # only beam 0 is live at first, so the k copies don't pick the same tokens
    fin_seqs = torch.zeros(B, k, N, dtype=torch.long, device=dev)
    fin_scores = torch.full((B, k), _NEG, device=dev)
    fin_real = torch.zeros(B, k, dtype=torch.bool, device=dev)
    can_improve = torch.ones(B, 1, dtype=torch.bool, device=dev)
    active = torch.ones((), dtype=torch.bool, device=dev)

    for t in range(N):
        logp = torch.log_softmax(logits, -1)  # (B*k, V)
        V = logp.shape[-1]
        logp = (logp.view(B, k, V) + run_scores[:, :, None]).view(B, k * V)
        cand_scores, cand_idx = logp.topk(K)  # (B, K)
        cand_beam, cand_tok = cand_idx // V, cand_idx % V
        cand_seqs = _gather(run_seqs, cand_beam)  # (B, K, N)
        cand_seqs[:, :, t] = cand_tok
        done = torch.isin(cand_tok, eos) if eos is not None else torch.zeros_like(cand_tok, dtype=torch.bool)
        if t == N - 1:
            done = torch.ones_like(done)  # max_new_tokens reached: every candidate ends here

        # the k best candidates that did not just end keep running
        live_scores = cand_scores + done.float() * _NEG
        keep = live_scores.topk(k).indices  # (B, k)
        run_seqs, run_scores = _gather(cand_seqs, keep), _gather(live_scores, keep)
        parent = _gather(cand_beam, keep)  # (B, k) beam each survivor extends

        # ended candidates among the top k enter the finished set if they beat its worst member
        new_scores = cand_scores / ((t + 1) ** length_penalty)
        full = fin_real.all(-1, keepdim=True) & (early_stopping is True)
        new_scores = new_scores + full.float() * _NEG
        new_scores = new_scores + (~can_improve).float() * _NEG
        just_ended = done & is_top_k
        new_scores = new_scores + (~just_ended) * _NEG
        best = torch.cat((fin_scores, new_scores), 1).topk(k).indices  # (B, k)
        fin_seqs = torch.where(active, _gather(torch.cat((fin_seqs, cand_seqs), 1), best), fin_seqs)
        fin_scores = torch.where(active, _gather(torch.cat((fin_scores, new_scores), 1), best), fin_scores)
        fin_real = torch.where(active, _gather(torch.cat((fin_real, just_ended), 1), best), fin_real)

        # can a running beam still beat the worst finished hypothesis? (HF's early-stopping heuristic)
        hyp_len = N if (early_stopping == "never" and length_penalty > 0.0) else t + 1
        best_running = run_scores[:, :1] / (hyp_len ** length_penalty)  # (B, 1)
        worst_finished = torch.where(fin_real, fin_scores.min(1, keepdim=True).values, _NEG)  # (B, k)
        can_improve = can_improve & (best_running > worst_finished).any(-1, keepdim=True)
        active &= can_improve.any() & ~(fin_real.all() & (early_stopping is True)) & ~done.all()
        if t == N - 1 or (t % _CHECK_EVERY == _CHECK_EVERY - 1 and not active.item()):
            break

        # survivor j inherits its parent's ancestry and writes its new token to slot P + t * k + j
        anc = _gather(anc, parent)
        anc[:, :, t] = beam_ids
        generated_visible = (anc[:, :, :, None] == beam_ids).flatten(2)  # (B, k, N*k)
        visible = torch.cat((prompt_visible, generated_visible, no_slots), 2)  # (B, k, slots)
        query_pos = (next_pos + t)[:, None].expand(B, k)  # (B, k)
        in_window = _window_mask(key_pos, query_pos, model.cfg.sliding_window)
        if in_window is not None:
            visible &= in_window
        logits = step(run_seqs[:, :, t], query_pos, P + t * k, visible)
    return fin_seqs[:, 0]


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, index[b, j], ...] for x of shape (B, M, ...) and index (B, J)."""
    index = index.view(*index.shape, *([1] * (x.dim() - 2)))
    return torch.take_along_dim(x, index, dim=1)


def _lengths_through_eos(tokens: torch.Tensor, eos) -> torch.Tensor:
    """(B,) number of tokens up to and including each row's first EOS (all of them when none)."""
    n = tokens.shape[1]
    if eos is None:
        return torch.full((tokens.shape[0],), n, dtype=torch.long)
    is_eos = torch.isin(tokens, eos)  # (B, n)
    return torch.where(is_eos.any(-1), is_eos.int().argmax(-1) + 1, n)
