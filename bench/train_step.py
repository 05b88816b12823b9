"""Training-step throughput and peak memory: our framework beside HF transformers + peft, in one run.

    python bench/train_step.py                                   # both shapes, every method, AC off and on
    python bench/train_step.py --shapes qwen2-0.5b --methods giva lora --no-ac
    python bench/train_step.py --compile --no-hf                # ours with torch.compile'd blocks
    python bench/train_step.py --smoke                           # tiny shapes on CPU: proves the script runs
    torchrun --nproc_per_node N -- bench/train_step.py --fsdp --no-ac --shapes olmo2-7b --methods giva full
                                                                 # ours sharded by FSDP2 over N GPUs (no HF peer)

Same GPU, same random-weight models (bf16 weights, bf16 autocast, SDPA), same targets (q,k,v,up,down), same
token batch, same optimizer (torch AdamW over the trainable tensors, fused on CUDA). One step = forward, loss,
backward, AdamW step, zero_grad. Our loss goes through `forward_hidden` and the chunked cross-entropy of
data/tasks.py (the trainer's path); HF's is `model(input_ids, labels=input_ids).loss`, measured eager, under
`torch.compile` (the whole model, loss included), with liger-kernel's fused kernels (where it is installed)
and with both; every ratio is to the fastest of those, the eager one beside it. Each configuration:
warm-up steps, then the median of the timed steps (CUDA events), peak allocated memory since just before the
warm-up, MFU against the bf16 matmul rate measured at the start of the run (FLOPs per token in bench/common.py).
Every model is built once and measured without, then with, activation checkpointing; it is freed before the
next one. A configuration that runs out of memory is recorded as such and the run goes on.

Our methods are built through giva's public API; GiVA's bases come from the SVD of a random matrix instead
of a probe gradient (the bases' values do not change the step's speed; bench/probe.py times the probe),
OSoRA's from the SVD of W0 as in training. Writes bench/results/train_step.json and prints the
table last. With --fsdp (under torchrun) the model is built whole on each GPU, then sharded by
distributed.shard as train.parallel=fsdp does; every rank steps on its own batch, tokens/s counts all of them
and the peak memory is rank 0's.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import common as C  # first: it puts the repository root on sys.path (a checkout without `pip install -e .`)

import distributed
import giva.methods

# Ranks: GiVA r=64 and LoRA r=32 everywhere; VeRA and OSoRA as the paper ran them (512 on OLMo-2-7B,
# 1024 on Qwen2-0.5B); RandLoRA as the paper's commonsense runs (100 on OLMo-2-7B, 10 on Qwen2-0.5B).
RANKS = {
    "olmo2-7b": {"giva": 64, "lora": 32, "vera": 512, "osora": 512, "randlora": 100, "full": 0},
    "qwen2-0.5b": {"giva": 64, "lora": 32, "vera": 1024, "osora": 1024, "randlora": 10, "full": 0},
    "olmo2-tiny": {"giva": 8, "lora": 4, "vera": 32, "osora": 16, "randlora": 8, "full": 0},
    "qwen2-tiny": {"giva": 8, "lora": 4, "vera": 32, "osora": 16, "randlora": 8, "full": 0},
}
OUR_METHODS = ["giva", "lora", "vera", "osora", "randlora", "full"]
# The HF run each of ours is printed beside: the same method where peft has it, else peft LoRA r=32 (the
# paper's stack and the issue's baseline).
HF_PEER = {"giva": "lora", "osora": "lora", "lora": "lora", "vera": "vera", "randlora": "randlora", "full": "full"}
LOSS_CHUNK = 256  # sequence positions per chunk of our chunked cross-entropy (experiment.py's default)


def measure(step, device, tokens: int, warmup: int, iters: int) -> dict:
    """tokens/s of the median step and the peak memory; an out-of-memory record instead if a step runs out
    (the model stays, so the next setting, e.g. with activation checkpointing, can still be measured)."""
    C.reset_peak(device)
    try:
        seconds = C.median(C.time_calls(step, device, warmup, iters))
        peak, loss = C.peak_gib(device), float(step.loss)
    except RuntimeError as err:
        if not C.is_oom(err):
            raise
        return {"error": "out of memory"}
    finally:
        C.free_memory(device)  # also drops what a failed step left behind
    # the last step's loss: near ln(vocab) for random weights on both sides, NaN if a set-up went wrong
    return {"tokens_per_s": tokens / seconds, "step_ms": seconds * 1e3, "peak_gib": peak, "loss": loss}


def make_step(loss_fn, params, device):
    opt = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")

    def step():
        with C.autocast(device):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step.loss = loss.detach()  # read once, after the timing

    return step


# ---------------------------------------------------------------- ours

def build_ours(shape, method, r, device, workdir):
    """Our model with `method` on the targets through giva's public API, and the tensors AdamW must hold.
    A method that needs the probe's gradient gets a random one per target instead (the step's speed does not
    depend on the bases' values, and the probe has its own benchmark, bench/probe.py)."""
    import giva

    model = C.our_random_model(shape, device, C.weights_dtype(device), workdir)
    cfg = giva.AdapterConfig(method=method, r=max(r, 1), targets=C.TARGETS, alpha=2.0 * max(r, 1))
    grads = None
    if giva.needs_gradient(cfg):
        gen = torch.Generator(device=device).manual_seed(0)
        grads = {n: torch.randn(lin.weight.shape, generator=gen, device=device)
                 for n, lin in giva.find_targets(model, cfg.targets).items()}
    giva.apply_adapters(model, cfg, giva.compute_bases(model, cfg, grads))
    return model.train(), giva.adapter_parameters(model)


def run_ours(shape, method, r, ac_modes, device, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model, params = build_ours(shape, method, r, device, Path(tmp))
    if args.fsdp:
        distributed.shard(model, device)
        params = giva.adapter_parameters(model)  # now FSDP's sharded tensors
    if args.compile:
        model.compile_blocks()  # compiled in the warm-up steps (again after the checkpointing switch)
    ids = C.random_tokens(shape.batch, shape.seq, shape.config["vocab_size"], device,
                          seed=distributed.rank())  # (B, T), each rank its own
    model.loss_chunk = LOSS_CHUNK

    def loss_fn():
        total, count = model.loss({"input_ids": ids, "labels": ids})  # forward_hidden + chunked cross-entropy
        return total / count

    step = make_step(loss_fn, params, device)
    out = {}
    for ac in ac_modes:
        missing = C.set_our_checkpointing(model, ac)
        tokens = ids.numel() * distributed.world()
        out[ac] = {"error": missing} if missing else measure(step, device, tokens, args.warmup, args.iters)
        out[ac]["trainable"] = sum(p.numel() for p in params)
    return out


# ---------------------------------------------------------------- HF transformers + peft

def run_hf(shape, method, r, ac_modes, device, args, variant="eager") -> dict:
    """HF transformers + peft, as set up by `variant` (bench/common.HF_VARIANTS): eager, the whole model
    (loss included) under torch.compile, liger-kernel's fused kernels, or both."""
    model = C.hf_model(shape, device, C.weights_dtype(device), training=True)
    if "liger" in variant:
        C.hf_apply_liger(model)
    model = C.hf_peft(model, method, r)
    params = [p for p in model.parameters() if p.requires_grad]
    forward = torch.compile(model) if "compile" in variant else model
    ids = C.random_tokens(shape.batch, shape.seq, shape.config["vocab_size"], device)  # (B, T)
    step = make_step(lambda: forward(input_ids=ids, labels=ids).loss, params, device)
    out = {}
    for ac in ac_modes:
        C.hf_set_checkpointing(model, ac)  # compiled anew in the warm-up steps after the switch
        out[ac] = measure(step, device, ids.numel(), args.warmup, args.iters)
        out[ac]["trainable"] = sum(p.numel() for p in params)
    return out


def strongest(variants: dict, ac) -> dict:
    """The fastest HF set-up measured at this AC setting (an error record when none ran)."""
    ran = {v: res[ac] for v, res in variants.items() if "tokens_per_s" in res[ac]}
    if not ran:
        return next(iter(variants.values()))[ac] if variants else {"error": "not measured"}
    best = max(ran, key=lambda v: ran[v]["tokens_per_s"])
    return {"variant": best, **ran[best]}


def guarded(fn, ac_modes, device) -> dict:
    """fn()'s per-AC results, or an 'out of memory' record for each AC mode; memory freed afterwards."""
    try:
        result = fn()
    except RuntimeError as err:
        if not C.is_oom(err):
            raise
        result = {ac: {"error": "out of memory"} for ac in ac_modes}
    C.free_memory(device)
    return result


def brief(res: dict) -> str:
    return "; ".join(f"ac={ac}: " + (rec.get("error") or f"{rec['tokens_per_s']:,.0f} tok/s, "
                                      f"{C.fmt(rec['peak_gib'], '.1f')} GiB") for ac, rec in res.items())


def with_mfu(rec: dict, shape, method: str, rate: float) -> dict:
    if "tokens_per_s" in rec:
        flops = C.flops_per_token(shape.config, full_ft=not giva.methods.METHODS[method].wraps_targets)
        rec["mfu"] = rec["tokens_per_s"] * flops / (rate * 1e12)
    return rec


def issue_targets(results: dict) -> list[dict]:
    """Issue 16's targets (ratios within this run, to the strongest HF set-up measured), each with the value;
    those whose configurations were not measured are left out."""
    checks = []

    def tok(shape, key, hf=False):
        rec = results.get(shape, {}).get(key, {})
        rec = rec.get("hf", {}) if hf else rec
        return rec.get("tokens_per_s"), rec.get("peak_gib"), rec.get("variant", "")

    for shape in ("olmo2-7b", "qwen2-0.5b"):
        for ac in ("", "_ac"):
            (g, g_mem, _), (h, h_mem, v) = tok(shape, "giva_r64" + ac), tok(shape, "giva_r64" + ac, hf=True)
            if g and h:
                checks.append({"target": f"{shape} giva_r64{ac} >= 1.25x HF lora_r32{ac} ({v}) tokens/s",
                               "value": g / h, "met": g / h >= 1.25})
            if g_mem is not None and h_mem is not None:
                checks.append({"target": f"{shape} giva_r64{ac} peak GiB <= HF ({v}) {h_mem:.1f}",
                               "value": g_mem, "met": g_mem <= h_mem})
    for shape, peer, limit in [("qwen2-0.5b", "lora_r32", 1.05), ("olmo2-7b", "lora_r32", 1.05),
                               ("qwen2-0.5b", "vera_r1024", 0.6)]:
        (g, _, _), (o, _, _) = tok(shape, "giva_r64"), tok(shape, peer)
        if g and o:
            checks.append({"target": f"{shape} our giva_r64 step time <= {limit}x our {peer}",
                           "value": o / g, "met": o / g <= limit})
    return checks


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=list(C.SHAPES), help="model shapes (default: all)")
    p.add_argument("--methods", nargs="+", default=OUR_METHODS, choices=OUR_METHODS)
    p.add_argument("--no-ac", action="store_true", help="skip the activation-checkpointing measurements")
    p.add_argument("--no-hf", action="store_true", help="skip the HF transformers + peft peer")
    p.add_argument("--hf", nargs="+", choices=C.HF_VARIANTS,
                   help="HF set-ups to measure (default: all, --smoke: eager; liger ones only where liger-kernel "
                        "is installed); every ratio is to the fastest of them, the eager one beside it")
    p.add_argument("--compile", action="store_true", help="ours with Decoder.compile_blocks() (torch.compile)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--smoke", action="store_true", help="tiny shapes, 1 warm-up and 1 timed step (CPU check)")
    p.add_argument("--out", type=Path, help="results JSON (default bench/results/train_step[_smoke].json)")
    p.add_argument("--fsdp", action="store_true", help="ours sharded by FSDP2 (run under torchrun); no HF peer")
    p.add_argument("--device", help="cuda or cpu (default: cuda when there is one); --smoke on cuda is a quick "
                                     "check of the GPU path")
    args = p.parse_args()
    if args.smoke:
        args.warmup, args.iters = 1, 1
    device = C.pick_device(args.device)
    if args.fsdp:
        device, args.no_hf = distributed.setup(device), True
        if not distributed.joined():
            p.error("--fsdp: launch it with torchrun --nproc_per_node N -- bench/train_step.py --fsdp ...")
        if not distributed.is_main():
            sys.stdout = open(os.devnull, "w")  # rank 0 reports
    torch.manual_seed(0)  # HF's own init draws from the global RNG: the same weights on every run
    shapes = C.shapes_for(args.shapes, args.smoke)
    ac_modes = [False] if args.no_ac else [False, True]
    variants = C.hf_available_variants(args.hf or (["eager"] if args.smoke else C.HF_VARIANTS))
    rate = C.matmul_tflops(device, 256 if args.smoke else 8192, C.weights_dtype(device))
    print(f"matmul rate ({C.weights_dtype(device)}): {rate:.1f} TFLOP/s", flush=True)

    out = args.out or C.default_out(f"train_step_fsdp{distributed.world()}" if args.fsdp else "train_step", args.smoke)
    results = {}

    def save():  # after every configuration, so a run cut short keeps what it measured
        if not distributed.is_main():
            return
        C.write_json(out, {
            "machine": C.machine_info(device), "bf16_matmul_tflops": rate,
            "flops_per_token": "6N full fine-tuning, 4N adapters (N = projection + lm_head parameters)",
            "batch": {s.name: [s.batch, s.seq] for s in shapes}, "compile_blocks": args.compile,
            "fsdp_processes": distributed.world() if args.fsdp else 0,
            "results": results,
            "issue_targets": issue_targets(results),
        })

    start = time.perf_counter()
    for shape in shapes:
        ranks = RANKS[shape.name]
        hf = {}  # peer method -> variant -> ac -> record
        if not args.no_hf:
            for method in sorted({HF_PEER[m] for m in args.methods}):
                hf[method] = {}
                for variant in variants:
                    res = guarded(lambda: run_hf(shape, method, ranks[method], ac_modes, device, args, variant),
                                  ac_modes, device)
                    hf[method][variant] = {ac: with_mfu(rec, shape, method, rate) for ac, rec in res.items()}
                    print(f"[{time.perf_counter() - start:.0f} s] {shape.name} hf {method} {variant}: {brief(res)}",
                          flush=True)
        results[shape.name] = {}
        for method in args.methods:
            res = guarded(lambda: run_ours(shape, method, ranks[method], ac_modes, device, args), ac_modes, device)
            print(f"[{time.perf_counter() - start:.0f} s] {shape.name} ours {method}: {brief(res)}", flush=True)
            peer = HF_PEER[method]
            for ac, rec in res.items():
                rec = with_mfu(rec, shape, method, rate)
                if peer in hf:
                    name = f"{peer}_r{ranks[peer]}" if ranks[peer] else peer
                    rec["hf"] = {"method": name, **strongest(hf[peer], ac)}
                    rec["hf_all"] = {v: r[ac] for v, r in hf[peer].items()}
                key = (f"{method}_r{ranks[method]}" if ranks[method] else method) + ("_ac" if ac else "")
                results[shape.name][key] = rec
            save()

    print(f"wrote {out}")
    for check in issue_targets(results):
        print(f"{'MET ' if check['met'] else 'MISS'}  {check['target']}: {check['value']:.2f}")
    print()
    rows = []
    for shape_name, recs in results.items():
        for key, rec in recs.items():
            h, eager = rec.get("hf", {}), rec.get("hf_all", {}).get("eager", {})
            def ratio(peer):
                return rec["tokens_per_s"] / peer["tokens_per_s"] if "tokens_per_s" in rec and "tokens_per_s" in peer else None
            rows.append([shape_name, key, C.fmt(rec.get("tokens_per_s")), C.fmt(rec.get("peak_gib"), ".1f"),
                         C.fmt(rec.get("mfu"), ".1%"), f"{h.get('method', '-')} {h.get('variant', '')}".strip(),
                         C.fmt(h.get("tokens_per_s")), C.fmt(h.get("peak_gib"), ".1f"), C.fmt(ratio(h), ".2f"),
                         C.fmt(eager.get("tokens_per_s")), C.fmt(eager.get("peak_gib"), ".1f"), C.fmt(ratio(eager), ".2f"),
                         rec.get("error") or h.get("error") or ""])
    C.print_table(["shape", "ours", "tok/s", "GiB", "MFU", "strongest HF", "tok/s", "GiB", "x strongest",
                   "HF eager tok/s", "GiB", "x eager", "note"], rows)


if __name__ == "__main__":
    try:
        main()
    finally:
        distributed.shutdown()
