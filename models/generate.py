"""Batched generation with a preallocated KV cache: greedy decoding and beam search.

Both decoders reproduce HF transformers' `generate(do_sample=False, num_beams=k)` token for token (the
beam search follows its vectorised implementation: log-softmax scores, top (1 + n_eos) * k candidates over
k * vocab, finished hypotheses scored sum_logprobs / n_new_tokens ** length_penalty, the same stopping
heuristic and final choice), so the paper's evaluation numbers are reproducible without the HF stack.

Notation: B prompts, k beams, P padded prompt length, N = max_new_tokens, V vocab, K candidates per prompt.

Prompts are LEFT-padded into one (B, P) batch; a row's positions count its real tokens only. The cache has
P + N slots: one prefill forward over the B prompts fills slots [0, P) (for beam search its rows are then
copied to B * k, so the prompts are not run k times), then each step writes one token per row at slot
P + t. Only the last position goes through lm_head, so no (B, P, V) logits tensor is ever built.

Decode steps have static shapes (the default): the step's inputs sit in fixed buffers, the new keys/values
go to a slot held in a device tensor, and attention covers the cache's first S slots, S rounded up to a
bucket of _BUCKET slots (causality masks the unwritten ones), so one CUDA graph per bucket replays every
step on CUDA (captured on first use; on CPU the same step runs eagerly). The token bookkeeping between
steps is a few tensor ops with no host sync; whether every row (greedy) or the search (beam) has finished
is read on the host only every _CHECK_EVERY steps, so the GPU never waits for Python. Beam search keeps two
caches and, before each step, gathers the survivors' generated slots from one into the other (one read
and one write of those slots; the prompt slots, shared by a prompt's beams, never move).
"""
import torch

from models.kv_cache import KVCache

_NEG = -1.0e9  # HF's "impossible" score; kept identical so ties and sums round the same way
_BUCKET = 64  # static steps attend over a multiple of this many cache slots (one CUDA graph per multiple)
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


def _prefill(model, input_ids, pad_mask, max_new_tokens: int, static: bool, copies: int = 1):
    """Run the prompts once, then give every row `copies` cache rows (beam search's k beams).

    Returns the cache (B * copies rows, P + N slots, rounded up to a bucket when static), the last
    position's fp32 logits (B * copies, V), the mask buffer (B * copies, cache slots) or None when no prompt
    is padded (then the decoder's unmasked fast paths apply), and each row's next position (B * copies,).
    """
    B, P = input_ids.shape
    slots = P + max_new_tokens
    if static:
        slots = -(-slots // _BUCKET) * _BUCKET
    cache = KVCache.for_model(model, B, slots)
    padded = not bool(pad_mask.all())
    positions = (pad_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P); pad slots get 0, they are never attended
    hidden = model.forward_hidden(input_ids, positions=positions, pad_mask=pad_mask if padded else None,
                                  kv_cache=cache, cache_start=0)[:, -1]  # (B, dim)
    logits = model.lm_head(hidden).float()  # (B, V)
    mask = None
    if padded:
        mask = torch.ones(B, slots, dtype=torch.bool, device=input_ids.device)
        mask[:, :P] = pad_mask
    next_pos = pad_mask.sum(-1)  # (B,)
    if copies > 1:
        rows = torch.arange(B, device=input_ids.device).repeat_interleave(copies)  # (B * copies,)
        cache.reorder(rows)
        logits, next_pos = logits[rows], next_pos[rows]
        mask = None if mask is None else mask[rows]
    return cache, logits, mask, next_pos


class _DecodeStep:
    """One token per row through the model at one cache slot: fp32 logits (R, V) of that token.

    Static: the token, position and slot are copied into fixed device buffers and the model attends over
    the cache's first S slots (the bucket holding the slot), so the step's shapes and addresses are the same
    for every slot of a bucket; with `graph` each bucket's step is captured once as a CUDA graph and then
    replayed. The returned logits are then the graph's output buffer: read them before the next call.
    Dynamic: the decoder's int cache_start path, attention over exactly slots [0, slot].
    """

    def __init__(self, model, cache: KVCache, mask, static: bool, graph: bool):
        self.model, self.cache, self.mask, self.static, self.graph = model, cache, mask, static, graph
        R, dev = cache.batch, cache.k.device
        self.tok = torch.zeros(R, 1, dtype=torch.long, device=dev)  # (R, 1)
        self.pos = torch.zeros(R, 1, dtype=torch.long, device=dev)  # (R, 1)
        self.slot = torch.zeros((), dtype=torch.long, device=dev)
        self.graphs = {}  # S: (CUDAGraph, its logits buffer)

    def __call__(self, tok: torch.Tensor, pos: torch.Tensor, slot: int) -> torch.Tensor:
        if not self.static:
            mask = None if self.mask is None else self.mask[:, :slot + 1]
            h = self.model.forward_hidden(tok[:, None], positions=pos[:, None], pad_mask=mask,
                                          kv_cache=self.cache, cache_start=slot)
            return self.model.lm_head(h[:, -1]).float()
        self.tok.copy_(tok[:, None])
        self.pos.copy_(pos[:, None])
        self.slot.fill_(slot)
        S = min(self.cache.max_len, (slot // _BUCKET + 1) * _BUCKET)
        if not self.graph:
            return self._forward(S)
        if S not in self.graphs:
            self.graphs[S] = self._capture(S)
        graph, logits = self.graphs[S]
        with torch.cuda.device(self.tok.device):
            graph.replay()
        return logits

    def _forward(self, S: int) -> torch.Tensor:
        mask = None if self.mask is None else self.mask[:, :S]  # a view: the same address every step
        h = self.model.forward_hidden(self.tok, positions=self.pos, pad_mask=mask, kv_cache=self.cache,
                                      cache_start=self.slot, cache_slots=S)  # (R, 1, dim)
        return self.model.lm_head(h[:, -1]).float()  # (R, V)

    def _capture(self, S: int):
        """Warm up on a side stream (lazy library init must not happen during capture), then capture.
        The warm-up writes the same keys/values at the same slot as the replay that follows, so it is
        harmless."""
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
    (noticed within _CHECK_EVERY steps; the extra steps only add pad)."""
    B, P = input_ids.shape
    cache, logits, mask, next_pos = _prefill(model, input_ids, pad_mask, max_new_tokens, static)
    step = _DecodeStep(model, cache, mask, static, graph)
    out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=input_ids.device)
    unfinished = torch.ones(B, dtype=torch.bool, device=input_ids.device)
    for t in range(max_new_tokens):
        tok = torch.where(unfinished, logits.argmax(-1), pad_id)  # (B,)
        out[:, t] = tok
        if eos is not None:
            unfinished &= ~torch.isin(tok, eos)
        if t == max_new_tokens - 1:
            break
        if eos is not None and t % _CHECK_EVERY == _CHECK_EVERY - 1 and not unfinished.any().item():
            break
        logits = step(tok, next_pos + t, P + t)
    return out[:, :t + 1]


def _beam_search(model, input_ids, pad_mask, N: int, k: int, eos, length_penalty: float,
                 early_stopping, static: bool, graph: bool) -> torch.Tensor:
    """(B, N) best hypothesis per prompt, HF's vectorised beam search on the model's device.

    Running state, per prompt: k live beams (their tokens, summed log-probs) and the k best finished
    hypotheses (tokens, length-penalised score, whether the slot holds a real hypothesis). HF stops at the
    first step where the search cannot go on; here `active` turns False on the device at that step and
    freezes the finished set, which is the output, so steps run until the host next looks are harmless.
    """
    B, P = input_ids.shape
    dev = input_ids.device
    n_eos = 0 if eos is None else eos.numel()
    K = max(2, 1 + n_eos) * k  # enough candidates that k of them are always still running
    is_top_k = torch.arange(K, device=dev) < k  # (K,)
    rows = torch.arange(B, device=dev)[:, None] * k  # (B, 1) first cache row of each prompt

    cache, logits, mask, next_pos = _prefill(model, input_ids, pad_mask, N, static, copies=k)
    # two caches, roles swapped each step: the survivors' histories are gathered from one into the other
    caches = (cache, cache.clone())
    steps = [_DecodeStep(model, c, mask, static, graph) for c in caches]
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
        caches[(t + 1) % 2].copy_rows_from(caches[t % 2], (parent + rows).flatten(), P, P + t)
        logits = steps[(t + 1) % 2](run_seqs[:, :, t].flatten(), next_pos + t, P + t)
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
