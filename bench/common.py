"""Shared pieces of the GPU benchmarks: model shapes, the HF + peft peer, our model with random weights,
timing, peak memory, and the machine's measured bf16 matmul rate and copy bandwidth.

Every script runs the same code on CUDA (the real shapes) and on CPU with `--smoke` (tiny shapes of the same
families, a couple of steps), so the CPU test proves the GPU path runs. On CPU the timings mean nothing and peak
memory is reported as None.

FLOPs per token (for MFU), with N = parameters that take part in a matmul (every projection and lm_head; the
embedding lookup is not a matmul; attention's score/value products and the adapters' thin matmuls are left out,
so MFU is a slight underestimate):
    full fine-tuning          6N  (forward 2N, activation gradients 2N, weight gradients 2N)
    frozen base + adapter     4N  (forward 2N, activation gradients 2N; frozen weights get no gradient)
"""
from __future__ import annotations

import gc
import json
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the scripts run as `python bench/<script>.py` from the repository root
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results"
TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
GIB = 2**30


@dataclass(frozen=True)
class Shape:
    """A model shape as its publisher's config.json gives it, and the benchmark's batch for it."""
    name: str
    config: dict  # the config.json fields (model_type included)
    batch: int
    seq: int


# Transcribed from the publishers' config.json (allenai/OLMo-2-1124-7B, Qwen/Qwen2-0.5B).
OLMO2_7B = {
    "model_type": "olmo2", "architectures": ["Olmo2ForCausalLM"], "hidden_size": 4096,
    "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 32, "vocab_size": 100352, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
    "rope_theta": 500000, "rope_scaling": None, "attention_bias": False, "attention_dropout": 0.0,
    "hidden_act": "silu", "tie_word_embeddings": False, "initializer_range": 0.02,
    "bos_token_id": 100257, "eos_token_id": 100257, "pad_token_id": 100277,
}
QWEN2_05B = {
    "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896,
    "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
    "vocab_size": 151936, "max_position_embeddings": 131072, "max_window_layers": 24, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "sliding_window": 131072, "use_sliding_window": False, "attention_dropout": 0.0,
    "hidden_act": "silu", "tie_word_embeddings": True, "initializer_range": 0.02,
    "bos_token_id": 151643, "eos_token_id": 151643,
}
# The smoke shapes keep each family's flags and shrink its sizes.
_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "vocab_size": 256, "max_position_embeddings": 256, "bos_token_id": 1, "eos_token_id": 2}

SHAPES = {
    "olmo2-7b": Shape("olmo2-7b", OLMO2_7B, batch=4, seq=1024),
    "qwen2-0.5b": Shape("qwen2-0.5b", QWEN2_05B, batch=16, seq=512),
}
SMOKE_SHAPES = {
    "olmo2-7b": Shape("olmo2-tiny", {**OLMO2_7B, **_TINY, "num_key_value_heads": 4, "pad_token_id": 0},
                      batch=2, seq=16),
    "qwen2-0.5b": Shape("qwen2-tiny", {**QWEN2_05B, **_TINY, "num_key_value_heads": 2}, batch=2, seq=16),
}


def shapes_for(names: list[str], smoke: bool) -> list[Shape]:
    table = SMOKE_SHAPES if smoke else SHAPES
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown shape(s) {unknown}; choose from {sorted(table)}")
    return [table[n] for n in names]


def matmul_params(config: dict) -> int:
    """N for MFU: parameters of every projection plus lm_head (tied or not), from config.json fields."""
    d, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or d // config["num_attention_heads"]
    q = config["num_attention_heads"] * head_dim
    kv = config["num_key_value_heads"] * head_dim
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * inter
    return layers * per_layer + d * config["vocab_size"]


def flops_per_token(config: dict, full_ft: bool) -> int:
    return (6 if full_ft else 4) * matmul_params(config)


# ---------------------------------------------------------------- device, timing, memory, machine rates

def pick_device(name: str | None = None) -> torch.device:
    """`name` ("cuda", "cpu") if given, else CUDA when there is one."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def weights_dtype(device: torch.device) -> torch.dtype:
    """bf16 weights and bf16 autocast on CUDA (the measured setting); fp32 and no autocast on CPU, where
    bf16 kernels are slow and only the code path, not the speed, is being checked."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Seconds per call of `fn`, after `warmup` untimed calls. On CUDA each call sits between two events and
    the host synchronises once, at the end, so the timing adds no sync inside the measured region."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type != "cuda":
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return times
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) / 1e3 for start, end in events]


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def free_memory(device: torch.device, keep_compiled: bool = False) -> None:
    """Between configurations: drop what the previous one left (compiled graphs too unless keep_compiled,
    so each model compiles afresh instead of exhausting dynamo's recompile limit) and start a fresh peak
    count."""
    if not keep_compiled:
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """torch.cuda.max_memory_allocated since the last reset, in GiB; None on CPU (not measured there)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / GIB


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def matmul_tflops(device: torch.device, n: int, dtype=torch.bfloat16) -> float:
    """The machine's dense matmul rate: median over 10 products of two random n x n matrices."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = median(time_calls(lambda: a @ b, device, warmup=3, iters=10))
    return 2 * n**3 / seconds / 1e12


def copy_bandwidth_gbs(device: torch.device, nbytes: int) -> float:
    """Device memory bandwidth from a large copy, counting bytes read and written (GB/s, 1e9)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    seconds = median(time_calls(lambda: dst.copy_(src), device, warmup=3, iters=10))
    return 2 * nbytes / seconds / 1e9


def machine_info(device: torch.device) -> dict:
    info = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import peft
        import transformers
        info["transformers"], info["peft"] = transformers.__version__, peft.__version__
    except ImportError:
        pass
    return info


def random_tokens(batch: int, seq: int, vocab: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=gen).to(device)  # (B, T)


# ---------------------------------------------------------------- HF transformers + peft peer

def hf_model(shape: Shape, device: torch.device, dtype: torch.dtype, training: bool):
    """AutoModelForCausalLM.from_config: random weights (the model's own init, run on `device`), SDPA."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in shape.config.items() if k not in ("model_type", "architectures")}
    config = AutoConfig.for_model(shape.config["model_type"], **fields, use_cache=not training)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.train(training)


def hf_peft(model, method: str, r: int):
    """Wrap with peft on q,k,v,up,down, no dropout; 'full' (no peft config) trains every parameter of the bare model."""
    from peft import LoraConfig, RandLoraConfig, VeraConfig, get_peft_model

    configs = {
        "lora": lambda: LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=TARGETS),
        "vera": lambda: VeraConfig(r=r, vera_dropout=0.0, target_modules=TARGETS),
        "randlora": lambda: RandLoraConfig(r=r, randlora_dropout=0.0, target_modules=TARGETS),
        "full": lambda: None,
    }
    if method not in configs:
        raise ValueError(f"peft has no method {method!r} here; choose from {sorted(configs)}")
    config = configs[method]()
    return get_peft_model(model, config) if config is not None else model.requires_grad_(True)


HF_VARIANTS = ("eager", "compile", "liger", "liger+compile")  # in this order: liger patches classes globally


def hf_available_variants(wanted) -> list[str]:
    """The HF peer set-ups to measure, in HF_VARIANTS order; liger ones only where liger-kernel imports."""
    try:
        import liger_kernel.transformers  # noqa: F401
        has_liger = True
    except ImportError:
        has_liger = False
    return [v for v in HF_VARIANTS if v in wanted and (has_liger or "liger" not in v)]


def hf_apply_liger(model) -> None:
    """liger-kernel's fused RoPE, RMSNorm, SwiGLU and fused linear cross-entropy on this transformers model
    (liger patches the modeling module's classes, so every later model of the family gets them too)."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model)


def hf_set_checkpointing(model, enabled: bool) -> None:
    """HF's activation checkpointing (non-reentrant) on the transformers model under any peft wrapper, through
    `gradient_checkpointing_enable`, the name every transformers version has (5.2x deprecates it)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if enabled:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            base.gradient_checkpointing_disable()


# ---------------------------------------------------------------- results

def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)


def default_out(script: str, smoke: bool) -> Path:
    return RESULTS / f"{script}{'_smoke' if smoke else ''}.json"


def fmt(x, spec: str = ",.0f") -> str:
    return "-" if x is None else (x if isinstance(x, str) else format(x, spec))


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))


# ---------------------------------------------------------------- our framework

def our_random_model(shape: Shape, device: torch.device, dtype: torch.dtype, workdir: Path):
    """Our Decoder for `shape` with random weights: config.json -> models.load_config (the production path),
    built on the meta device, `to_empty` on `device` in `dtype`, then filled in place (normal std 0.02 for
    matrices, ones for norms, zeros for biases; no fp32 copy is ever made)."""
    from models import load_config
    from models.decoder import Decoder

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(shape.config))
    cfg = load_config(workdir)
    with torch.device("meta"):
        model = Decoder(cfg)
    model = model.to(dtype).to_empty(device=device)
    if cfg.tie_embeddings:  # to_empty gives each module its own new parameter: tie them again
        model.lm_head.weight = model.embed_tokens.weight
    model.materialize_buffers(device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02)
    return model


def set_our_checkpointing(model, enabled: bool) -> str | None:
    """Turn our Decoder's activation checkpointing on or off; the reason it cannot be, if it lacks the switch."""
    if not hasattr(model, "set_activation_checkpointing"):
        return "Decoder has no set_activation_checkpointing" if enabled else None
    model.set_activation_checkpointing(enabled)
    return None
