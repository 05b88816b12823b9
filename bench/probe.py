"""GiVA's set-up cost: the first-step gradient probe and the SVD bases of every target, ours beside HF.

    python bench/probe.py                          # OLMo-2-7B shape, 32 x 1024 tokens in micro-batches of 4
    python bench/probe.py --micro-batch 2 --offload
    python bench/probe.py --smoke                  # tiny OLMo-2 shape on CPU: proves the script runs

Ours, as train.py runs it: giva.estimate_gradients over the micro-batches (fp32 accumulation through
post-accumulate-grad hooks, loss weighted by target tokens), then giva.compute_bases + apply_adapters (wrap every target and
take each gradient's seeded svd_lowrank, q=256, niter=4, freeing it as soon as its bases exist). HF's
equivalent: requires_grad on the 160 target weights only, a plain backward per micro-batch (bf16 .grad
accumulated by autograd), then torch.svd_lowrank(q=256, niter=4) of each gradient in fp32. Both sides: random
bf16 weights, bf16 autocast, one untimed micro-batch first (kernel selection), then one timed run; peak
allocated memory over the timed run.

Accuracy: for a few of our real probe gradients, svd_lowrank at the chosen q/niter (through giva_bases, with
its seed) against torch.linalg.svd: the largest principal angle and the projector distance
||P - P'||_F / sqrt(2r) (0 = same subspace, 1 = orthogonal) of A's row space (top-r right singular vectors)
and of B's column space for TopSV-B (top-r left) and SecSV-B (left vectors r+1..2r), and the relative error
of the top-2r singular values. The weights are random, so the gradients' spectra are those of a random
network: flatter than a pretrained model's, which makes this a hard case for svd_lowrank.

Writes bench/results/probe.json and prints the tables last.
"""
import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

import common as C

ACCURACY_LAYERS = ["layers.0.self_attn.q_proj", "layers.{mid}.mlp.up_proj", "layers.{last}.mlp.down_proj"]
LOSS_CHUNK = 256


def timed(fn, device):
    C.synchronize(device)
    start = time.perf_counter()
    out = fn()
    C.synchronize(device)
    return out, time.perf_counter() - start


def micro_batches(shape, n_tokens_batch: int, micro: int, device) -> list[torch.Tensor]:
    ids = C.random_tokens(n_tokens_batch, shape.seq, shape.config["vocab_size"], device)  # (batch, T)
    return list(ids.split(micro))  # each (micro, T)


# ---------------------------------------------------------------- ours

def run_ours(shape, args, device, r, workdir) -> tuple[dict, dict]:
    from models.lm_loss import chunked_cross_entropy
    from giva import AdapterConfig, apply_adapters, compute_bases, estimate_gradients

    model = C.our_random_model(shape, device, C.weights_dtype(device), workdir)
    missing = C.set_our_checkpointing(model, args.ac)
    if missing:
        raise SystemExit(f"--ac: {missing}")
    batches = micro_batches(shape, args.batch, args.micro_batch, device)

    def loss_fn(model, ids):
        with C.autocast(device):
            total, count = chunked_cross_entropy(model.forward_hidden(ids), model.lm_head, ids, LOSS_CHUNK)
        return total / count, count

    estimate_gradients(model, batches[:1], loss_fn, C.TARGETS, offload_to_cpu=args.offload)  # warm-up
    C.free_memory(device)
    grads, probe_s = timed(lambda: estimate_gradients(model, batches, loss_fn, C.TARGETS,
                                                      offload_to_cpu=args.offload), device)
    n_layers, n_targets = shape.config["num_hidden_layers"], len(grads)
    # CPU copies for the accuracy check, so they stay out of the peak memory measured
    kept = {name: grads[name].cpu() for name in
            (t.format(mid=n_layers // 2, last=n_layers - 1) for t in ACCURACY_LAYERS)}
    cfg = AdapterConfig(method="giva", r=r, targets=C.TARGETS, init="secsv", svd_q=args.q, svd_niter=args.niter)
    _, svd_s = timed(lambda: apply_adapters(model, cfg, compute_bases(model, cfg, grads)), device)
    return {"probe_s": probe_s, "svd_s": svd_s, "total_s": probe_s + svd_s, "n_targets": n_targets,
            "peak_gib": C.peak_gib(device)}, kept


# ---------------------------------------------------------------- HF transformers

def run_hf(shape, args, device) -> dict:
    model = C.hf_model(shape, device, C.weights_dtype(device), training=True)
    if args.ac:
        C.hf_set_checkpointing(model, True)
    model.requires_grad_(False)
    targets = [m.weight for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in C.TARGETS]
    for w in targets:
        w.requires_grad_(True)
    batches = micro_batches(shape, args.batch, args.micro_batch, device)

    def probe(batches):
        for ids in batches:
            with C.autocast(device):
                loss = model(input_ids=ids, labels=ids).loss
            (loss / len(batches)).backward()

    def svd():
        for w in targets:
            torch.svd_lowrank(w.grad.float(), q=args.q, niter=args.niter)
            w.grad = None

    probe(batches[:1])  # warm-up
    for w in targets:
        w.grad = None
    C.free_memory(device)
    _, probe_s = timed(lambda: probe(batches), device)
    _, svd_s = timed(svd, device)
    return {"probe_s": probe_s, "svd_s": svd_s, "total_s": probe_s + svd_s, "n_targets": len(targets),
            "peak_gib": C.peak_gib(device)}


# ---------------------------------------------------------------- svd_lowrank accuracy

def subspace_distance(X: torch.Tensor, Y: torch.Tensor) -> tuple[float, float]:
    """(largest principal angle in degrees, ||XX^T - YY^T||_F / sqrt(2r)) for orthonormal columns X, Y (d, r)."""
    cos = torch.linalg.svdvals(X.T @ Y).clamp(max=1.0)  # (r,)
    r = X.shape[1]
    proj = math.sqrt(max(2 * (r - float((cos**2).sum())), 0.0) / (2 * r))
    return math.degrees(math.acos(float(cos.min()))), proj


def accuracy(G: torch.Tensor, name: str, r: int, q: int, niter: int) -> dict:
    from giva.giva_linear import giva_bases
    from giva.numerics import exact_fp32, layer_seed

    m, n = G.shape
    with exact_fp32():
        U, S, Vh = torch.linalg.svd(G, full_matrices=False)  # (m, k), (k,), (k, n)
    seed = layer_seed(0, name)
    A, B_top = giva_bases(G, r, "topsv", seed=seed, q=q, niter=niter)  # (r, n), (m, r)
    _, B_sec = giva_bases(G, r, "secsv", seed=seed, q=q, niter=niter)  # (m, r)
    with exact_fp32():
        S_approx = torch.linalg.svdvals(B_top.T @ G @ A.T)  # (r,) the top-r singular values it captures
    out = {"shape": [m, n], "sigma_r_over_sigma_1": float(S[r - 1] / S[0]),
           "sigma_2r_over_sigma_r": float(S[2 * r - 1] / S[r - 1]),
           "top_r_sigma_rel_err": float(((S[:r] - S_approx) / S[:r]).abs().max())}
    for key, exact, approx in [("A", Vh[:r].T, A.T), ("B_topsv", U[:, :r], B_top), ("B_secsv", U[:, r:2 * r], B_sec)]:
        angle, proj = subspace_distance(exact, approx)
        out[key] = {"max_angle_deg": angle, "projector_dist": proj}
    return out


def issue_targets(ours: dict, shape_name: str, train_step_json: Path) -> list[dict]:
    """Probe + SVD under 10 s; peak at most 1.3x GiVA's training peak, taken from train_step.py's results
    when they exist (same machine: run train_step.py first)."""
    checks = [{"target": "probe + SVD < 10 s", "value": ours["total_s"], "met": ours["total_s"] < 10}]
    train_peak = None
    if train_step_json.is_file():
        rec = json.loads(train_step_json.read_text())["results"].get(shape_name, {}).get("giva_r64", {})
        train_peak = rec.get("peak_gib")
    if train_peak and ours["peak_gib"] is not None:
        ratio = ours["peak_gib"] / train_peak
        checks.append({"target": f"probe peak <= 1.3x GiVA r=64 training peak ({train_peak:.1f} GiB, "
                                 f"{train_step_json.name})", "value": ratio, "met": ratio <= 1.3})
    return checks


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32, help="sequences in the probe batch (x 1024 tokens)")
    p.add_argument("--micro-batch", type=int, default=4, help="sequences per forward/backward")
    p.add_argument("--offload", action="store_true", help="our fp32 accumulators on the CPU")
    p.add_argument("--ac", action="store_true", help="activation checkpointing on both sides")
    p.add_argument("--q", type=int, default=256)
    p.add_argument("--niter", type=int, default=4)
    p.add_argument("--no-hf", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny OLMo-2 shape on CPU")
    p.add_argument("--out", type=Path)
    p.add_argument("--device", help="cuda or cpu (default: cuda when there is one); --smoke on cuda is a quick "
                                     "check of the GPU path")
    args = p.parse_args()
    r = 64
    if args.smoke:
        args.batch, args.micro_batch, args.q, r = 4, 2, 16, 4
    device = C.pick_device(args.device)
    torch.manual_seed(0)  # HF's own init draws from the global RNG: the same weights on every run
    (shape,) = C.shapes_for(["olmo2-7b"], args.smoke)
    with tempfile.TemporaryDirectory() as tmp:
        ours, kept = run_ours(shape, args, device, r, Path(tmp))
    C.free_memory(device)
    print(f"ours: {ours}", flush=True)
    acc = {name: accuracy(G.to(device), name, r, args.q, args.niter) for name, G in kept.items()}
    del kept
    C.free_memory(device)
    hf = None if args.no_hf else run_hf(shape, args, device)
    C.free_memory(device)
    print(f"hf: {hf}", flush=True)

    tokens = args.batch * shape.seq
    for rec in (ours, hf):
        if rec:
            rec["tokens_per_s"] = tokens / rec["total_s"]
    targets = issue_targets(ours, shape.name, C.default_out("train_step", args.smoke))
    out = args.out or C.default_out("probe", args.smoke)
    C.write_json(out, {
        "machine": C.machine_info(device),
        "setting": {"shape": shape.name, "batch": [args.batch, shape.seq], "micro_batch": args.micro_batch,
                    "offload": args.offload, "activation_checkpointing": args.ac, "r": r, "q": args.q,
                    "niter": args.niter},
        "results": {shape.name: {"probe_svd": {**ours, "hf": hf}}}, "svd_lowrank_accuracy": acc,
        "issue_targets": targets,
    })
    print(f"wrote {out}")
    for check in targets:
        print(f"{'MET ' if check['met'] else 'MISS'}  {check['target']}: {check['value']:.2f}")
    print()
    rows = [[side, C.fmt(rec["probe_s"], ".2f"), C.fmt(rec["svd_s"], ".2f"), C.fmt(rec["total_s"], ".2f"),
             C.fmt(rec["peak_gib"], ".1f")] for side, rec in (("ours", ours), ("hf", hf)) if rec]
    C.print_table(["side", "probe s", "SVD s", "total s", "peak GiB"], rows)
    print()
    rows = [[name, f"{a['sigma_2r_over_sigma_r']:.3f}", f"{a['top_r_sigma_rel_err']:.1e}"]
            + [f"{a[k]['max_angle_deg']:.2f} / {a[k]['projector_dist']:.1e}" for k in ("A", "B_topsv", "B_secsv")]
            for name, a in acc.items()]
    C.print_table(["gradient", "s_2r/s_r", "top-r s rel err", "A: angle deg / proj", "B topsv", "B secsv"], rows)


if __name__ == "__main__":
    main()
