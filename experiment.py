"""One experiment = one YAML file read into typed dataclasses, plus `--set section.key=value` overrides;
and what train.py and eval.py both derive from it: the device and precision, and generated inputs.

    exp = load_experiment("configs/olmo2_metamath.yaml", ["train.lr=3e-4", "adapter.targets=[q_proj, v_proj]"])
    device, dtype, autocast = runtime(exp.model, exp.train)

The file has six sections (model, data, adapter, probe, train, eval); every key is a field below with
its default, and the `adapter` section is giva.AdapterConfig itself. Values (from the file or from `--set`,
which is parsed as YAML) are checked against the field's type and, where a field has a fixed set of values,
against those choices. An unknown section or key, a value of the wrong type or outside the choices is a
ConfigError naming it, the closest valid key and the valid choices. Cross-field rules (e.g. batch_size a
multiple of micro_batch_size, a method's required fields) are checked after all overrides are applied.
"""
import contextlib
import difflib
import math
import os
import sys
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import yaml

from data.benchmarks import BENCHMARKS
from data.images import IMAGE_DATASETS
from data.synthetic_code_chat import ensure_alpaca_file, ensure_code_feedback_file
from data.synthetic_math import ensure_synthetic_files
from data.tasks import TASKS
from giva import AdapterConfig
from models import write_random_checkpoint


class ConfigError(ValueError):
    pass


def _choices(*values):
    return field(default=values[0], metadata={"choices": values})


@dataclass
class ModelSection:
    path: str = ""                 # publisher checkpoint dir (config.json, *.safetensors, tokenizer files),
                                   # or package:<module> for a checkpoint shipped in an installed package;
                                   # the kind of network (decoder, encoder) comes from its config.json
    dtype: str = _choices("auto", "float32", "bfloat16")  # auto: bfloat16 on CUDA, float32 on CPU
    # When set and `path` holds no config.json yet, models.write_random_checkpoint(path, **random_init)
    # writes a tiny random checkpoint there first (smoke configs and tests).
    random_init: typing.Optional[dict] = None


@dataclass
class DataSection:
    task: str = _choices(*TASKS)    # data/tasks.py maps each name to its builder
    path: str = ""                 # MetaMathQA JSON (a list of {type, query, original_question, response})
    n_train: int = 100_000
    n_val: int = 10_000
    max_tokens: int = 1024
    shuffle_seed: int = 42
    cache_dir: str = ".cache/tokenized"
    synthetic: int = 0             # > 0 and `path` missing: write that many synthetic problems there first
    # How the masked prompt tokens are counted (data/collate.py build_example): "official" tokenises the
    # prompt alone, which with OLMo-2's BPE masks the response's first token too (methods.md bug 18).
    label_boundary: str = _choices("official", "common_prefix")
    dataset: str = _choices("", *IMAGE_DATASETS)  # task images: which data set `path` holds ("" for text tasks)
    num_workers: int = 0           # task images: threads decoding and transforming a micro-batch (0: in-process)
    dev_path: str = ""             # task alpaca: the MT-Bench folder (question.jsonl, reference_answer/gpt-4.jsonl)
                                   # whose GPT-4 answers validate the run and pick the lr (train.py --sweep)


@dataclass
class ProbeSection:
    """The first-step gradient probe; it runs only for a method whose bases need it (GiVA)."""
    micro_batches: int = 0         # 0: one optimizer batch (batch_size / micro_batch_size), as the paper
    seed: int = 0                  # picks the probe's training examples (the SVD's seed is adapter.svd_seed)
    offload_to_cpu: bool = False   # keep the fp32 gradient accumulators on the CPU


@dataclass
class TrainSection:
    name: str = "run"              # the run directory is out_dir/name
    out_dir: str = "runs"
    seed: int = 0
    device: str = "auto"           # auto: cuda when available, else cpu; or e.g. "cuda:1"
    cpu_threads: int = 0           # > 0: torch.set_num_threads on a CPU run (tiny models run best on 1)
    autocast: bool = True          # bf16 autocast on CUDA; false runs the bf16 weights as they are, as the
                                   # official LLM runs did (then fp32 adapter tensors also compute in fp32)
    epochs: int = 1
    max_steps: int = 0             # > 0: stop after this many optimizer steps in total
    batch_size: int = 32           # examples per optimizer step
    micro_batch_size: int = 4      # examples per forward/backward; batch_size / micro_batch_size accumulate
    micro_batch_tokens: int = 0    # > 0: also at most this many padded tokens per micro-batch (examples are
                                   # grouped by length): set micro_batch_size high and short examples batch
                                   # many at a time; the token-normalised gradient is the same
    lr: float = 1e-2
    weight_decay: float = 0.0
    betas: typing.List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: float = 1.0         # max global gradient norm; 0 disables clipping
    schedule: str = _choices("cosine", "linear", "constant")
    warmup_ratio: float = 0.0      # fraction of all optimizer steps; set this or warmup_steps, not both
    warmup_steps: int = 0
    val_per_epoch: int = 10        # validation loss (and checkpoint) this many times per epoch
    select_by: str = _choices("val_loss", "val_metric")  # the best checkpoint: lowest loss, or highest
                                                         # task metric (tasks with evaluate(), e.g. GLUE)
    log_every: int = 10            # optimizer steps between metrics.jsonl lines (one host sync each)
    tensorboard: bool = False      # also every metrics.jsonl value as TensorBoard scalars in <run>/tensorboard
                                   # (pip install -e ".[tensorboard]"; tensorboard --logdir runs)
    loss_chunk: int = 256          # sequence positions per chunk of the chunked cross-entropy
    activation_checkpointing: bool = False  # recompute each block in the backward pass: less memory
    compile: bool = False          # torch.compile each block after the adapters are in place
    parallel: str = _choices("ddp", "fsdp")  # under torchrun: every rank holds the whole model (ddp), or 1/N
                                   # of every parameter through FSDP2 (fsdp: a model that does not fit one device)
    max_steps_this_invocation: int = 0  # > 0: save a resumable state and exit after this many steps


@dataclass
class EvalSection:
    task: str = _choices(*BENCHMARKS)  # data/benchmarks.py; path, decoding: the paper's GSM8K set-up
    path: str = "../shared/data/gsm8k/test.jsonl"
    max_new_tokens: int = 256
    batch_size: int = 32
    num_beams: int = 1
    limit: int = 0                 # > 0: only the first `limit` problems
    checkpoint: str = _choices("best", "last")
    compile: bool = False          # torch.compile the blocks for generation (Decoder.compile_blocks)


@dataclass
class Experiment:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    probe: ProbeSection = field(default_factory=ProbeSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def to_dict(self) -> dict:
        return asdict(self)

    def run_dir(self) -> Path:
        return Path(self.train.out_dir) / self.train.name


SECTIONS = {f.name: f.default_factory for f in fields(Experiment)}  # section name -> its dataclass


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


PATH_FIELDS = (("model", "path"), ("data", "path"), ("data", "cache_dir"), ("eval", "path"), ("train", "out_dir"))


def resolve_paths(exp: Experiment, base: Path) -> Experiment:
    """The one rule for paths: a relative path in a config (or a --set) is relative to the working directory
    `base` of the command that reads it, resolved once here, so the run's saved config.yaml holds absolute
    paths and eval.py finds the same files from any folder. `package:<module>` paths stay as they are."""
    for section, key in PATH_FIELDS:
        value = getattr(getattr(exp, section), key)
        if value and not str(value).startswith("package:") and not Path(value).is_absolute():
            setattr(getattr(exp, section), key, str((base / value).resolve()))
    return exp


def load_experiment(path, overrides=()) -> Experiment:
    """Read a YAML experiment file, apply `section.key=value` overrides, check every value, and resolve its
    relative paths against the working directory (resolve_paths)."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_StrictLoader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    return resolve_paths(experiment_from_dict(raw or {}, overrides, source=str(path)), Path.cwd())


def experiment_from_dict(raw: dict, overrides=(), source="config") -> Experiment:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections {sorted(SECTIONS)}")
    values = {name: {} for name in SECTIONS}  # section -> {key: checked value}, the dataclasses built at the end
    for section, entries in raw.items():
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping of keys to values")
        for key, value in entries.items():
            _assign(values, f"{section}.{key}", value, source)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({e})") from None
        _assign(values, key.strip(), value, f"--set {item!r}")
    try:
        exp = Experiment(**{name: SECTIONS[name](**v) for name, v in values.items()})
    except ValueError as e:  # a section's own check, e.g. AdapterConfig's method rules
        raise ConfigError(f"{source}: {e}") from None
    _check_rules(exp)
    return exp


def _closest(word, options):
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def _assign(values: dict, dotted: str, value, source: str):
    section, _, key = dotted.partition(".")
    if section not in SECTIONS:
        raise ConfigError(f"{source}: unknown section '{section}'{_closest(section, list(SECTIONS))} "
                          f"(sections: {', '.join(SECTIONS)})")
    cls = SECTIONS[section]
    by_name = {f.name: f for f in fields(cls)}
    if key not in by_name:
        valid = [f"{section}.{k}" for k in by_name]
        raise ConfigError(f"{source}: unknown key '{dotted}'{_closest(dotted, valid)} (valid keys: {', '.join(valid)})")
    f = by_name[key]
    hint = typing.get_type_hints(cls)[key]
    try:
        value = _coerce(value, hint)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: bad value for '{dotted}': {e}") from None
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{source}: bad value {value!r} for '{dotted}' (valid choices: {', '.join(map(str, choices))})")
    values[section][key] = value


def _coerce(value, hint):
    """Check `value` against a field type; YAML's '3e-4' (a string in YAML 1.1) is accepted as a float."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # Optional[X], X | None
        if value is None:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {value!r}")
        return [_coerce(v, args[0]) for v in value]
    if hint is dict:
        if not isinstance(value, dict):
            raise TypeError(f"expected a mapping, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool):
            raise TypeError(f"expected a number, got {value!r}")
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise TypeError(f"expected a number, got {value!r}") from None
        if not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported field type {hint}")


def _check_rules(exp: Experiment):
    t = exp.train
    positive = {"train.batch_size": t.batch_size, "train.micro_batch_size": t.micro_batch_size,
                "train.epochs": t.epochs, "train.val_per_epoch": t.val_per_epoch, "train.log_every": t.log_every,
                "train.loss_chunk": t.loss_chunk, "data.max_tokens": exp.data.max_tokens,
                "data.n_train": exp.data.n_train, "eval.batch_size": exp.eval.batch_size,
                "eval.num_beams": exp.eval.num_beams, "eval.max_new_tokens": exp.eval.max_new_tokens}
    positive.update({"train.lr": t.lr, "train.eps": t.eps})
    for key, value in positive.items():
        if not value > 0 or not math.isfinite(value):  # NaN fails every comparison
            raise ConfigError(f"bad value {value} for '{key}': must be a finite number > 0")
    non_negative = {"train.max_steps": t.max_steps, "train.warmup_steps": t.warmup_steps,
                    "train.max_steps_this_invocation": t.max_steps_this_invocation,
                    "train.micro_batch_tokens": t.micro_batch_tokens,
                    "train.cpu_threads": t.cpu_threads,
                    "train.weight_decay": t.weight_decay, "train.grad_clip": t.grad_clip,
                    "data.n_val": exp.data.n_val, "data.synthetic": exp.data.synthetic,
                    "data.num_workers": exp.data.num_workers,
                    "probe.micro_batches": exp.probe.micro_batches, "eval.limit": exp.eval.limit}
    for key, value in non_negative.items():
        if not value >= 0 or not math.isfinite(value):
            raise ConfigError(f"bad value {value} for '{key}': must be a finite number >= 0")
    if t.batch_size % t.micro_batch_size:
        raise ConfigError(f"train.batch_size={t.batch_size} is not a multiple of "
                          f"train.micro_batch_size={t.micro_batch_size}")
    if not 0.0 <= t.warmup_ratio < 1.0:
        raise ConfigError(f"bad value {t.warmup_ratio} for 'train.warmup_ratio': must be in [0, 1)")
    if t.warmup_ratio and t.warmup_steps:
        raise ConfigError("set train.warmup_ratio or train.warmup_steps, not both")
    if t.parallel == "fsdp" and exp.probe.offload_to_cpu:
        raise ConfigError("train.parallel=fsdp with probe.offload_to_cpu=true: the probe's accumulators are "
                          "sharded (1/N per process) already; leave offload_to_cpu false")
    if len(t.betas) != 2 or not all(0.0 <= b < 1.0 for b in t.betas):
        raise ConfigError(f"bad value {t.betas} for 'train.betas': expected two numbers in [0, 1)")
    if not t.name or "/" in t.name:
        raise ConfigError(f"bad value {t.name!r} for 'train.name': a non-empty folder name without '/'")
    if exp.data.n_val == 0:
        raise ConfigError("data.n_val must be > 0: validation picks the best checkpoint")


# ---- the command line of train.py and eval.py ----

class RunError(RuntimeError):
    """A run that cannot go on for a reason the user can act on (a locked run directory, a diverged loss)."""


# What the code raises on purpose about bad input: files, configs, data, runs. Real bugs raise other types.
USER_ERRORS = (ConfigError, RunError, ValueError, OSError, UnicodeDecodeError)


def cli(main):
    """Run main(); an error about the user's input becomes one line on stderr and exit status 1
    (GIVA_TRACEBACK=1 shows the traceback as well)."""
    try:
        main()
    except USER_ERRORS as e:
        if os.environ.get("GIVA_TRACEBACK"):
            raise
        sys.exit(f"error: {e}")


# ---- what train.py and eval.py derive from an experiment ----

def runtime(model: ModelSection, train: TrainSection):
    """(device, weight dtype, autocast context factory): the one place device and precision are decided,
    from an experiment's model and train sections (train.py and eval.py)."""
    name = train.device
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    on_cuda = device.type == "cuda"
    if not on_cuda and train.cpu_threads:
        torch.set_num_threads(train.cpu_threads)
    dtype = {"auto": torch.bfloat16 if on_cuda else torch.float32,
             "float32": torch.float32, "bfloat16": torch.bfloat16}[model.dtype]
    if on_cuda and train.autocast:
        return device, dtype, lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return device, dtype, contextlib.nullcontext


def ensure_inputs(exp: Experiment):
    """Write the tiny random checkpoint and synthetic data a smoke config asks for, on first use."""
    init = exp.model.random_init
    if init is not None and not (Path(exp.model.path) / "config.json").is_file():
        dtype = init.get("dtype", "float32")
        if dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"model.random_init.dtype={dtype!r}: valid choices are float32, bfloat16")
        write_random_checkpoint(exp.model.path, **{**init, "dtype": getattr(torch, dtype)})
    if exp.data.synthetic:
        if exp.data.task not in SYNTHETIC_DATA:
            raise ConfigError(f"data.synthetic: task {exp.data.task!r} has no synthetic data (tasks with some: "
                              f"{', '.join(SYNTHETIC_DATA)})")
        SYNTHETIC_DATA[exp.data.task](exp)


SYNTHETIC_DATA = {  # data.task -> writer of its synthetic files (data.synthetic > 0), each only where missing
    "metamath": lambda exp: ensure_synthetic_files(exp.data.path, exp.eval.path, exp.data.synthetic),
    "code_feedback": lambda exp: ensure_code_feedback_file(exp.data.path, exp.data.synthetic),
    "alpaca": lambda exp: ensure_alpaca_file(exp.data.path, exp.data.synthetic),
}

