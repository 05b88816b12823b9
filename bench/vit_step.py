"""ViT training-step throughput and peak memory: our ViT beside HF transformers + peft, in one run.

    python bench/vit_step.py                                     # DINOv2-B/14 and CLIP-L/14, batch 128
    python bench/vit_step.py --shapes dinov2-b14 --methods giva lora --no-ac
    python bench/vit_step.py --smoke                             # tiny shapes on CPU: proves the script runs

The paper's image setting on both sides: fp32 weights with bf16 autocast on CUDA ("bf16-mixed"; fp32 and no
autocast on CPU), 224x224 images, batch 128, a fresh 100-way `classifier` trained fully (modules_to_save),
targets q, k, v, fc1, fc2 under each model's own names, SDPA attention, torch AdamW over the trainable
tensors (fused on CUDA). One step = forward, cross-entropy, backward, AdamW step, zero_grad. Random weights
from the publishers' config.json files (tests/model_configs/). Ours: GiVA r=32, LoRA r=32 (alpha 1), VeRA
r=256, RandLoRA r=10 (alpha 10), full; each printed beside HF's Dinov2ForImageClassification /
CLIPForImageClassification + peft LoRA r=32 (the same method where peft has it), eager and, with --compile,
torch.compile'd too; the speed-up is against the faster of the two. GiVA's bases come from a
random gradient (the step's speed does not depend on them). Each configuration: warm-up steps, then the
median of the timed steps, peak allocated memory. Writes bench/results/vit_step.json, the table last.
"""
import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import common as C
from train_step import make_step  # the same step: forward, loss, backward, AdamW, zero_grad

CONFIGS = C.REPO / "tests" / "model_configs"
NUM_LABELS = 100


@dataclass(frozen=True)
class Shape:
    name: str
    config: dict     # config.json
    hf_class: str    # the transformers classification model
    targets: tuple
    batch: int
    image: int


def _load(name):
    return json.loads((CONFIGS / f"{name}.json").read_text())


DINO_TARGETS, CLIP_TARGETS = ("query", "key", "value", "fc1", "fc2"), ("q_proj", "k_proj", "v_proj", "fc1", "fc2")
_TINY_DINO = {"model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 28, "patch_size": 7}
_TINY_CLIP = {"model_type": "clip", "text_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                                    "num_attention_heads": 2},
              "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "image_size": 28, "patch_size": 7}}
SHAPES = {"dinov2-b14": Shape("dinov2-b14", _load("dinov2-base"), "Dinov2ForImageClassification", DINO_TARGETS, 128, 224),
          "clip-l14": Shape("clip-l14", _load("clip-vit-large-patch14"), "CLIPForImageClassification", CLIP_TARGETS,
                            128, 224)}
SMOKE_SHAPES = {"dinov2-b14": Shape("dinov2-tiny", _TINY_DINO, "Dinov2ForImageClassification", DINO_TARGETS, 2, 28),
                "clip-l14": Shape("clip-tiny", _TINY_CLIP, "CLIPForImageClassification", CLIP_TARGETS, 2, 28)}
RANKS = {"giva": 32, "lora": 32, "vera": 256, "randlora": 10, "full": 0}
ALPHAS = {"lora": 1.0, "randlora": 10.0}  # the paper's image runs (methods.md 7.3)
OUR_METHODS = list(RANKS)
HF_PEER = {"giva": "lora", "lora": "lora", "vera": "vera", "randlora": "randlora", "full": "full"}


def batch(shape: Shape, device) -> dict:
    gen = torch.Generator().manual_seed(0)
    return {"pixel_values": torch.randn(shape.batch, 3, shape.image, shape.image, generator=gen).to(device),
            "labels": torch.randint(0, NUM_LABELS, (shape.batch,), generator=gen).to(device)}


def measure(step, device, images: int, warmup: int, iters: int) -> dict:
    C.reset_peak(device)
    try:
        seconds = C.median(C.time_calls(step, device, warmup, iters))
        peak, loss = C.peak_gib(device), float(step.loss)
    except RuntimeError as err:
        if not C.is_oom(err):
            raise
        return {"error": "out of memory"}
    finally:
        C.free_memory(device)
    return {"images_per_s": images / seconds, "step_ms": seconds * 1e3, "peak_gib": peak, "loss": loss}


def run_ours(shape: Shape, method: str, ac_modes, device, args) -> dict:
    """Our ViT from config.json (the production loader on the meta device), random weights in place, the
    method through giva's public API."""
    import giva
    from models import load_model

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(shape.config))
        model = load_model(tmp, device="meta", num_labels=NUM_LABELS).to_empty(device=device)
    with torch.no_grad():  # ones for scales (norms, layer scale), zeros for biases, normal(0, 0.02) for the rest
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    r = RANKS[method]
    cfg = giva.AdapterConfig(method=method, r=max(r, 1), targets=list(shape.targets), alpha=ALPHAS.get(method, 1.0),
                             modules_to_save=["classifier"])
    grads = None
    if giva.needs_gradient(cfg):
        gen = torch.Generator(device=device).manual_seed(0)
        grads = {n: torch.randn(lin.weight.shape, generator=gen, device=device)
                 for n, lin in giva.find_targets(model, cfg.targets).items()}
    giva.apply_adapters(model, cfg, giva.compute_bases(model, cfg, grads))
    model.train()
    params = giva.adapter_parameters(model)
    if args.compile:
        model.compile_blocks()
    data = batch(shape, device)

    def loss_fn():
        total, count = model.loss(data)
        return total / count

    step = make_step(loss_fn, params, device)
    out = {}
    for ac in ac_modes:
        model.set_activation_checkpointing(ac)
        out[ac] = measure(step, device, shape.batch, args.warmup, args.iters)
        out[ac]["trainable"] = sum(p.numel() for p in params)
    return out


def hf_targets(model, targets) -> list[str]:
    """The HF model's names of our targets: transformers 5 renames DINOv2's query/key/value to q_proj/k_proj/
    v_proj in the module tree (its checkpoints keep the old names), so peft must be given the new ones."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    renamed = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}
    return [t if t in names else renamed.get(t, t) for t in targets]


def run_hf(shape: Shape, method: str, ac_modes, device, args, compiled: bool) -> dict:
    import transformers
    from peft import LoraConfig, RandLoraConfig, VeraConfig, get_peft_model

    fields = {k: v for k, v in shape.config.items() if k not in ("model_type", "architectures")}
    config = transformers.AutoConfig.for_model(shape.config["model_type"], **fields, num_labels=NUM_LABELS)
    with torch.device(device):
        model = getattr(transformers, shape.hf_class)._from_config(config, attn_implementation="sdpa")
    r, targets, keep = RANKS[method], hf_targets(model, shape.targets), ["classifier"]
    peft_config = {"lora": lambda: LoraConfig(r=r, lora_alpha=ALPHAS["lora"], lora_dropout=0.0, target_modules=targets,
                                              modules_to_save=keep),
                   "vera": lambda: VeraConfig(r=r, vera_dropout=0.0, target_modules=targets, modules_to_save=keep),
                   "randlora": lambda: RandLoraConfig(r=r, randlora_alpha=ALPHAS["randlora"], randlora_dropout=0.0,
                                                      target_modules=targets, modules_to_save=keep),
                   "full": lambda: None}[method]()
    model = (get_peft_model(model, peft_config) if peft_config else model.requires_grad_(True)).train()
    params = [p for p in model.parameters() if p.requires_grad]
    data = batch(shape, device)
    forward = torch.compile(model) if compiled else model
    step = make_step(lambda: forward(**data).loss, params, device)
    out = {}
    for ac in ac_modes:
        C.hf_set_checkpointing(model, ac)
        out[ac] = measure(step, device, shape.batch, args.warmup, args.iters)
        out[ac]["trainable"] = sum(p.numel() for p in params)
    return out


def guarded(fn, ac_modes, device) -> dict:
    try:
        result = fn()
    except RuntimeError as err:
        if not C.is_oom(err):
            raise
        result = {ac: {"error": "out of memory"} for ac in ac_modes}
    C.free_memory(device)
    return result


def key(method: str, ac: bool) -> str:
    return (f"{method}_r{RANKS[method]}" if RANKS[method] else method) + ("_ac" if ac else "")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--methods", nargs="+", default=OUR_METHODS, choices=OUR_METHODS)
    p.add_argument("--no-ac", action="store_true", help="skip the activation-checkpointing measurements")
    p.add_argument("--no-hf", action="store_true", help="skip the HF transformers + peft peer")
    p.add_argument("--compile", action="store_true",
                   help="ours with ViT.compile_blocks() (torch.compile), and HF torch.compile'd beside HF eager")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--smoke", action="store_true", help="tiny shapes, 1 warm-up and 1 timed step (CPU check)")
    p.add_argument("--out", type=Path, help="results JSON (default bench/results/vit_step[_smoke].json)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when there is one)")
    args = p.parse_args()
    if args.smoke:
        args.warmup, args.iters = 1, 1
    device = C.pick_device(args.device)
    torch.manual_seed(0)
    shapes = [(SMOKE_SHAPES if args.smoke else SHAPES)[name] for name in args.shapes]
    ac_modes = [False] if args.no_ac else [False, True]
    out = args.out or C.default_out("vit_step", args.smoke)
    results = {}

    def save():
        C.write_json(out, {"machine": C.machine_info(device), "precision": "fp32 weights, bf16 autocast on CUDA",
                           "batch": {s.name: [s.batch, s.image] for s in shapes}, "compile_blocks": args.compile,
                           "results": results})

    start = time.perf_counter()
    for shape in shapes:
        hf = {}
        if not args.no_hf:
            for method in sorted({HF_PEER[m] for m in args.methods}):
                for compiled in [False, True] if args.compile else [False]:
                    hf[method, compiled] = guarded(lambda: run_hf(shape, method, ac_modes, device, args, compiled),
                                                   ac_modes, device)
                    print(f"[{time.perf_counter() - start:.0f} s] {shape.name} hf {method}"
                          f"{' compiled' if compiled else ''}: {hf[method, compiled]}", flush=True)
        results[shape.name] = {}
        for method in args.methods:
            res = guarded(lambda: run_ours(shape, method, ac_modes, device, args), ac_modes, device)
            print(f"[{time.perf_counter() - start:.0f} s] {shape.name} ours {method}: {res}", flush=True)
            peer = HF_PEER[method]
            for ac, rec in res.items():
                for compiled in [False, True]:
                    if (peer, compiled) in hf:
                        rec["hf_compiled" if compiled else "hf"] = {"method": key(peer, False), **hf[peer, compiled][ac]}
                results[shape.name][key(method, ac)] = rec
            save()
    save()
    print(f"wrote {out}\n")
    rows = []
    for shape_name, recs in results.items():
        for k, rec in recs.items():
            h, hc = rec.get("hf", {}), rec.get("hf_compiled", {})
            best = max((x for x in (h, hc) if "images_per_s" in x), key=lambda x: x["images_per_s"], default={})
            ratio = rec["images_per_s"] / best["images_per_s"] if "images_per_s" in rec and best else None
            rows.append([shape_name, k, C.fmt(rec.get("images_per_s"), ",.1f"), C.fmt(rec.get("peak_gib"), ".1f"),
                         C.fmt(rec.get("trainable")), h.get("method", "-"), C.fmt(h.get("images_per_s"), ",.1f"),
                         C.fmt(h.get("peak_gib"), ".1f"), C.fmt(hc.get("images_per_s"), ",.1f"),
                         C.fmt(hc.get("peak_gib"), ".1f"), C.fmt(ratio, ".2f"),
                         rec.get("error") or h.get("error") or hc.get("error") or ""])
    C.print_table(["shape", "ours", "img/s", "GiB", "trainable", "HF peer", "HF eager img/s", "HF eager GiB",
                   "HF compiled img/s", "HF compiled GiB", "vs strongest HF", "note"], rows)


if __name__ == "__main__":
    main()
