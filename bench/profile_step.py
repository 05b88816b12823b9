"""Where the time of one training step goes: torch.profiler tables for our GiVA step and HF + peft LoRA.

    python bench/profile_step.py                  # OLMo-2-7B shape, 4 x 1024 tokens, on the GPU
    python bench/profile_step.py --smoke          # tiny shape on CPU: proves the script runs

Prints tokens/s for each variant and the top CUDA kernels (self time) of one profiled step, so a gap
in bench/train_step.py can be explained kernel by kernel.
"""
import argparse
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import common as C
import train_step as TS


def profile_table(step, device, rows: int) -> str:
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
        C.synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def variant(name, shape, method, r, device, args, compile_blocks=False, show=False):
    with tempfile.TemporaryDirectory() as tmp:
        model, params = TS.build_ours(shape, method, r, device, Path(tmp))
    if compile_blocks:
        model.compile_blocks()
    from models.lm_loss import chunked_cross_entropy
    ids = C.random_tokens(shape.batch, shape.seq, shape.config["vocab_size"], device)

    def loss_fn():
        total, count = chunked_cross_entropy(model.forward_hidden(ids), model.lm_head, ids, TS.LOSS_CHUNK)
        return total / count

    step = TS.make_step(loss_fn, params, device)
    rec = TS.measure(step, device, ids.numel(), args.warmup, args.iters)
    print(f"{name}: {rec['tokens_per_s']:,.0f} tok/s, {C.fmt(rec['peak_gib'], '.1f')} GiB", flush=True)
    if show:
        print(profile_table(step, device, args.rows), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--rows", type=int, default=30)
    p.add_argument("--compile", action="store_true", help="also time blocks compiled with torch.compile")
    p.add_argument("--no-hf", action="store_true")
    p.add_argument("--shape", default="olmo2-7b", choices=list(C.SHAPES))
    p.add_argument("--compiled-only", action="store_true", help="profile only ours with compiled blocks")
    args = p.parse_args()
    device = torch.device("cpu") if args.smoke else C.pick_device()
    if args.smoke:
        args.warmup, args.iters = 1, 1
    shape = C.shapes_for([args.shape], args.smoke)[0]
    r = TS.RANKS[shape.name]
    if not args.compiled_only:
        variant("ours giva", shape, "giva", r["giva"], device, args, show=True)
        C.free_memory(device)
        variant("ours lora", shape, "lora", r["lora"], device, args)
        C.free_memory(device)
    if args.compile or args.compiled_only:
        variant("ours giva compiled blocks", shape, "giva", r["giva"], device, args, compile_blocks=True, show=True)
        C.free_memory(device)
    if not args.no_hf:
        model = C.hf_peft(C.hf_model(shape, device, C.weights_dtype(device), training=True), "lora", r["lora"])
        params = [q for q in model.parameters() if q.requires_grad]
        ids = C.random_tokens(shape.batch, shape.seq, shape.config["vocab_size"], device)
        step = TS.make_step(lambda: model(input_ids=ids, labels=ids).loss, params, device)
        rec = TS.measure(step, device, ids.numel(), args.warmup, args.iters)
        print(f"hf lora: {rec['tokens_per_s']:,.0f} tok/s, {C.fmt(rec['peak_gib'], '.1f')} GiB", flush=True)
        print(profile_table(step, device, args.rows), flush=True)


if __name__ == "__main__":
    main()
