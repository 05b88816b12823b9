"""Fine-tune a pretrained model with GiVA (or a baseline) from one YAML experiment file.

    python train.py configs/olmo2_metamath.yaml                         # the paper's MetaMathQA run
    python train.py configs/olmo2_metamath.yaml --set adapter.method=vera --set adapter.r=512
    python train.py configs/olmo2_metamath.yaml --set model.path=DIR --dry-run   # parameter table only
    python train.py configs/tiny_math.yaml                              # CPU smoke run, under a minute
    python train.py configs/tiny_math.yaml --resume                     # continue a killed run
    python train.py configs/demo.yaml                                   # MiniLM + GiVA, a classification task
    python train.py configs/mistral_alpaca.yaml --sweep train.lr=1e-3,4e-3,1e-2   # one run per value, the
                                                                        # lowest dev loss chosen (`sweep`)

Order: config -> load -> probe (only for a method that needs the gradient: GiVA) -> bases (GiVA: the SVD of
each gradient; OSoRA: of W0) -> inject -> AdamW over the adapter's trainable tensors -> run directory.
Nothing here names a method: giva/ answers for each (giva/methods.py).

The run directory out_dir/name/ holds (every file written atomically):
    config.yaml            the resolved config
    probe.json             which training examples the probe used (only when a probe ran)
    adapter.safetensors    the adapter right after injection: frozen bases (stored once) + initial trainables
    best.safetensors       the trained tensors at the best validation loss or task metric (no bases), the
                           modules of adapter.modules_to_save (a classification head) included
    last.safetensors       the trained tensors at the end (no bases)
    state.pt               resumable state: trained tensors, optimizer, step (= data position and schedule), RNG
    metrics.jsonl          one JSON line per logged step and per validation
    tensorboard/           (train.tensorboard: true) the same values as TensorBoard scalars
    summary.json           training time excluding validation, parameters, best validation loss, ...

Under torchrun (distributed.py) the ranks divide every optimizer batch's micro-batches and rank 0 writes the run
directory; with train.parallel=fsdp the model is also sharded by FSDP2, each rank holding 1/N of it.

--resume reloads the bases and state.pt and continues; the data order is a pure function of
(train.seed, epoch), so a resumed run reaches exactly the vectors of an uninterrupted one (bitwise on CPU).
"""
import argparse
import contextlib
import dataclasses
import fcntl
import importlib.util
import json
import math
import os
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

import distributed
import giva
from data.safetensors_io import atomic_file
from data.tasks import build_task
from experiment import ConfigError, RunError, cli, ensure_inputs, load_experiment, runtime
from models import load_model
from data.packaged_checkpoint import resolve_checkpoint_path

REPO = Path(__file__).resolve().parent  # configs/ lives here


class RunLocked(RunError):
    pass


class TrainingDiverged(RunError):
    pass


# ---- setup ----

def dry_run(exp):
    """Build on the meta device from config.json alone, inject, print the table and a JSON line last.
    A task head (adapter.modules_to_save) is sized by the data, so it is left out here; the paper's counts
    leave it out too. A smoke config's random checkpoint is written first, as a real run would."""
    if exp.model.random_init is not None:
        ensure_inputs(exp)
    model = load_model(exp.model.path, device="meta")
    acfg = dataclasses.replace(exp.adapter, modules_to_save=[])
    giva.apply_adapters(model, acfg)
    print(giva.parameter_table(model))
    if exp.adapter.modules_to_save:
        print(f"(adapter.modules_to_save {exp.adapter.modules_to_save} is sized by the task's data: not built here)")
    counts = giva.count_parameters(model)
    print(json.dumps({"trainable_params": counts["trainable"], "total_params": counts["total"],
                      "trainable_percent": 100.0 * counts["trainable"] / counts["total"]}))


def speed_options(model, t):
    """Activation checkpointing, torch.compile and the LM loss's chunk, where the model kind offers them."""
    for flag, switch in (("activation_checkpointing", "set_activation_checkpointing"), ("compile", "compile_blocks")):
        if getattr(t, flag) and not hasattr(model, switch):
            raise ConfigError(f"train.{flag}: {type(model).__name__} has no {switch}()")
    if t.activation_checkpointing:
        model.set_activation_checkpointing(True)
    if t.compile:
        model.compile_blocks()
    if hasattr(model, "loss_chunk"):
        model.loss_chunk = t.loss_chunk


@contextlib.contextmanager
def phase(what: str):
    """Print `what`, then its time once done: loading a 7B model, its probe and its SVD bases take minutes.
    (Rank 0 prints for all under torchrun.)"""
    say = print if distributed.is_main() else lambda *a, **k: None
    say(f"{what} ...", flush=True)
    start = time.perf_counter()
    yield
    say(f"{what}: {time.perf_counter() - start:.1f} s", flush=True)


def probe_batches(exp, task):
    """The probe's micro-batches: random training examples drawn with probe.seed (recorded in probe.json)."""
    t = exp.train
    n_micro = exp.probe.micro_batches or t.batch_size // t.micro_batch_size
    gen = torch.Generator().manual_seed(exp.probe.seed)
    picks = torch.randperm(len(task.train), generator=gen)[:n_micro * t.micro_batch_size].tolist()
    chunks = [picks[i:i + t.micro_batch_size] for i in range(0, len(picks), t.micro_batch_size)]
    return picks, [task.collate([task.train[i] for i in c]) for c in chunks]


def probe_loss(autocast):
    """(mean token loss, n targets) per micro-batch: the probe then weights the micro-batches by their
    target counts, the same token normalisation as the training step. A batch comes with a weight of 1, or 0
    for a rank's filler forward (distributed.share_even)."""
    def loss_fn(model, batch_and_weight):
        batch, weight = batch_and_weight
        with autocast():
            loss_sum, n = model.loss(batch)
        return loss_sum / n.clamp(min=1), n.item() * weight
    return loss_fn


def bases_of_every_rank(model, acfg, grads, device) -> dict:
    """giva.compute_bases; under torchrun each rank computes its share of the targets' bases (the SVDs divided
    among the ranks) and every rank then gets them all. FSDP's sharded gradients are gathered whole one at a
    time (a collective: every rank takes part in each), and only the layer's owner keeps it."""
    if grads is not None and any(distributed.is_sharded(g) for g in grads.values()):
        owned = set(distributed.share(list(grads)))  # compute_bases's share below: the targets in the same order
        for name in list(grads):
            whole = grads.pop(name).full_tensor()
            if name in owned:
                grads[name] = whole
    if distributed.world() == 1:
        return giva.compute_bases(model, acfg, grads)
    mine = giva.compute_bases(model, acfg, grads, share=distributed.share)
    if grads is not None:
        grads.clear()  # the other ranks' layers: their bases come from their owners
    parts = distributed.gather_objects({n: {k: t.cpu() for k, t in b.items()} for n, b in mine.items()})
    return {n: {k: t.to(device) for k, t in b.items()} for part in parts for n, b in part.items()}


def to_device(batch, device):
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def lr_factor(step, total, warmup, schedule):
    """HF's schedulers, stepped per optimizer step: optimizer step `step` (from 0) uses lr * lr_factor."""
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


# ---- the run directory ----

_LOCKS: dict[Path, int] = {}  # run directory -> the open file whose flock this process holds


def lock_run_dir(run: Path) -> None:
    """Hold an exclusive lock on `run` for this process's life, so two train.py never write one run directory
    (a second one, fresh or --resume, is refused). The kernel drops a flock with its process, so a killed run
    leaves no stale lock. Under the lock, temporary files of atomic writes a kill interrupted are removed."""
    run = run.resolve()
    if run in _LOCKS:  # this process holds it already (a sweep, or tests calling main again)
        return
    run.mkdir(parents=True, exist_ok=True)
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunLocked(f"{run} is in use by another train.py (it holds {run / '.lock'}): wait for it to finish "
                        f"or set another train.name") from None
    _LOCKS[run] = fd
    for orphan in run.glob(".*.tmp"):  # atomic_file's temporaries: never a finished file
        orphan.unlink()


def prepare_run_dir(exp, resume: bool) -> tuple[Path, bool]:
    """(run directory, whether there is a state to resume from). A run that stopped before its first
    checkpoint has nothing to resume, so it starts again from the beginning, with or without --resume."""
    run = exp.run_dir()
    lock_run_dir(run)
    resolved = exp.to_dict()
    if resume and (run / "config.yaml").is_file():
        saved = yaml.safe_load((run / "config.yaml").read_text())
        diff = _config_diff(saved, resolved, ignore={("train", "max_steps_this_invocation")})
        if diff:
            raise ConfigError(f"{run}/config.yaml differs from this config at {', '.join(diff)}: "
                              f"resume with the same config (or start a new train.name)")
        if (run / "state.pt").is_file():
            return run, True
    elif (run / "state.pt").exists():
        raise FileExistsError(f"{run} already holds a run: pass --resume, delete it, or set another train.name")
    with atomic_file(run / "config.yaml", "w") as f:
        yaml.safe_dump(resolved, f, sort_keys=False)
    return run, False


def _config_diff(a, b, ignore):
    return [f"{s}.{k}" for s in b for k in b[s] if (s, k) not in ignore and a.get(s, {}).get(k) != b[s][k]]


def _rng_states() -> tuple:
    cuda = [torch.cuda.get_rng_state(torch.cuda.current_device())] if torch.cuda.is_available() else []
    return torch.get_rng_state(), cuda


def save_state(run, model, optimizer, progress):
    """state.pt, by rank 0, with every rank's RNG states and whole tensors (every rank calls this: the states
    are gathered, and so are FSDP's shards of the trained tensors and of their optimizer state)."""
    rng = distributed.gather_objects(_rng_states())
    vectors = distributed.gather_full(dict(zip(model.adapter_trainable, giva.adapter_parameters(model))))
    optim = optimizer.state_dict()
    optim["state"] = {i: distributed.gather_full(s) for i, s in optim["state"].items()}
    if not distributed.is_main():
        return
    state = {"vectors": vectors, "optimizer": optim, "processes": len(rng), "rng": rng, **progress}
    with atomic_file(run / "state.pt") as f:
        torch.save(state, f)


def load_state(run, model, optimizer) -> dict:
    state = torch.load(run / "state.pt", map_location="cpu", weights_only=True)
    params = dict(zip(model.adapter_trainable, giva.adapter_parameters(model)))
    if set(params) != set(state["vectors"]):
        raise ValueError(f"{run}/state.pt: its trained tensors do not match the model's adapter tensors")
    with torch.no_grad():
        for name, value in state.pop("vectors").items():
            params[name].copy_(distributed.place_like(value, params[name]))
    optim, order = state.pop("optimizer"), list(params.values())  # the optimizer's state is keyed by param index
    for i, s in optim["state"].items():
        s.update({k: distributed.place_like(v, order[i]) for k, v in s.items() if k != "step"})
    optimizer.load_state_dict(optim)
    if state.pop("processes") != distributed.world():
        raise ConfigError(f"{run}/state.pt was written by a run of {len(state['rng'])} process(es): resume it with "
                          f"as many (torchrun --nproc_per_node {len(state['rng'])}), not {distributed.world()}")
    rng_cpu, rng_cuda = state.pop("rng")[distributed.rank()]
    torch.set_rng_state(rng_cpu)
    if rng_cuda:
        torch.cuda.set_rng_state(rng_cuda[0], torch.cuda.current_device())
    return state


class Metrics:
    """metrics.jsonl, cut back on resume to the lines the checkpoint had seen; with `tensorboard` (a folder)
    every value also as a TensorBoard scalar at its step, events past the resumed step purged."""

    def __init__(self, path: Path, keep_lines: int | None, tensorboard: Path | None = None, step: int = 0,
                 writes: bool = True):
        self.path, self.writes = path, writes  # writes=False: another rank's, which only counts lines
        lines = path.read_text().splitlines(keepends=True)[:keep_lines] if keep_lines is not None else []
        if writes:
            with atomic_file(path, "w") as f:
                f.writelines(lines)
        self.lines = len(lines)
        self.board = None
        if tensorboard is not None and writes:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package (checked in main)
            self.board = SummaryWriter(str(tensorboard), purge_step=step + 1 if keep_lines is not None else None)

    def write(self, record: dict):
        self.lines += 1
        if not self.writes:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.board is not None:
            for key, value in record.items():
                if key != "step":
                    self.board.add_scalar(key, value, record["step"])
            self.board.flush()

    def close(self):
        if self.board is not None:
            self.board.close()


# ---- the loop ----

def by_length(task, examples, indices):
    """`indices` ordered by example length when the task can tell (stable, so deterministic)."""
    return sorted(indices, key=lambda i: task.length(examples[i])) if hasattr(task, "length") else list(indices)


def batch_tokens(batch) -> int:
    """The real tokens of a micro-batch (its examples, for a batch of images)."""
    if "pad_mask" in batch:
        return int(batch["pad_mask"].sum())
    return batch["input_ids"].numel() if "input_ids" in batch else len(batch["labels"])


def micro_batches(task, examples, indices, t) -> list[list[int]]:
    """`indices` by length, cut into micro-batches of at most t.micro_batch_size examples and, when
    t.micro_batch_tokens > 0 and the task can tell lengths, at most that many padded tokens (examples x the
    longest; one example always fits): short examples then run many to a batch, long ones few."""
    order = by_length(task, examples, indices)
    budget = t.micro_batch_tokens if hasattr(task, "length") else 0
    groups, group = [], []
    for i in order:  # ascending lengths: the newest example is the group's longest
        if group and (len(group) == t.micro_batch_size
                      or budget and (len(group) + 1) * task.length(examples[i]) > budget):
            groups.append(group)
            group = []
        group.append(i)
    return groups + [group] if group else groups


def optimizer_step(model, task, picks, optimizer, params, lr, t, device, autocast):
    """One AdamW step over the examples `picks`, in micro-batches with gradient accumulation.

    Each micro-batch backpropagates its SUM of token losses; the accumulated gradients are divided by the
    number of target tokens of the whole optimizer batch, so every token weighs the same whatever the
    micro-batch it fell in (the token-normalised loss). That is also why the examples can be grouped by
    length into micro-batches: less padding, the same gradient. No host sync: the loss stays on the device.
    Under torchrun each rank runs every world()-th micro-batch (and fillers of zero weight, so that every rank
    runs as many) and the gradients, loss and target count are summed across ranks before the division: the
    same step as one process, up to the order of the sums. FSDP has summed the sharded tensors' gradients.
    Returns (sum of token losses, number of targets) as device tensors and the real tokens this rank saw.
    """
    step_loss = torch.zeros((), device=device)
    step_n = torch.zeros((), device=device, dtype=torch.long)
    tokens = 0
    for group, weight in distributed.share_even(micro_batches(task, task.train, picks, t)):
        cpu_batch = task.collate([task.train[i] for i in group])
        tokens += batch_tokens(cpu_batch) * weight
        with autocast():
            loss_sum, n = model.loss(to_device(cpu_batch, device))
        (loss_sum * weight).backward()
        step_loss += loss_sum.detach().float() * weight
        step_n += n * weight
    if distributed.world() > 1:
        replicated = [p for p in params if not distributed.is_sharded(p)]
        for p in replicated:
            if p.grad is None:  # this rank ran no micro-batch that reached it
                p.grad = torch.zeros_like(p)
        distributed.sum_([p.grad for p in replicated] + [step_loss, step_n])
    for p in params:
        if p.grad is not None:
            p.grad.div_(step_n.clamp(min=1))
    if t.grad_clip:
        torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss, step_n, tokens


@torch.no_grad()
def validation_loss(model, task, device, autocast, t) -> float:
    model.eval()
    total, count = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)
    for group, weight in distributed.share_even(micro_batches(task, task.val, range(len(task.val)), t)):
        batch = to_device(task.collate([task.val[i] for i in group]), device)
        with autocast():
            loss_sum, n = model.loss(batch)
        total += loss_sum.float() * weight
        count += n * weight
    distributed.sum_([total, count])
    model.train()
    return (total / count.clamp(min=1)).item()


# ---- the learning-rate sweep ----

# A run's score in a sweep (lowest best): its task's per-example dev loss after training where the task
# reports one (data/tasks.py DevLossTask: Alpaca's MT-Bench dev set), else its best validation loss.
SWEEP_SCORES = ("val_example_loss_after", "best_val_loss")


def sweep(config, overrides, spec):
    """`--sweep section.key=v1,v2,...`: one run per value, each in out_dir/<name>_<key><value> and resumable
    (a finished run is read back, an unfinished one continued), then a table of their scores; the lowest wins.
    Writes out_dir/<name>_sweep.json."""
    key, sep, values = spec.partition("=")
    values = [v for v in values.split(",") if v]
    if not sep or "." not in key or not values:
        raise ConfigError(f"--sweep {spec!r}: expected section.key=value1,value2,...")
    base = load_experiment(config, overrides)
    rows = []
    for value in values:
        sets = [*overrides, f"{key}={value}", f"train.name={base.train.name}_{key.split('.')[-1]}{value}"]
        exp = load_experiment(config, sets)
        run = exp.run_dir()
        if (run / "summary.json").is_file():
            saved = yaml.safe_load((run / "config.yaml").read_text())
            diff = _config_diff(saved, exp.to_dict(), ignore={("train", "max_steps_this_invocation")})
            if diff:
                raise ConfigError(f"{run}/config.yaml differs from this sweep's config at {', '.join(diff)}")
        else:
            main([config, *(a for s in sets for a in ("--set", s)), "--resume"])
            if not (run / "summary.json").is_file():
                raise ConfigError(f"{run} stopped before its end (train.max_steps_this_invocation): "
                                  f"run the sweep again to continue it")
        summary = json.loads((run / "summary.json").read_text())
        score_key = next((k for k in SWEEP_SCORES if k in summary), None)
        if score_key is None:
            raise ValueError(f"{run}/summary.json has none of {', '.join(SWEEP_SCORES)}")
        rows.append({key: value, "run": str(run), "score": summary[score_key], "score_key": score_key})
    best = min(rows, key=lambda r: r["score"])
    print(f"\n| {key} | score | run |\n|---|---|---|")
    for r in rows:
        print(f"| {r[key]} | {r['score']:.4f} ({r['score_key']}) | {r['run']}{' <- lowest' if r is best else ''} |")
    result = {"sweep": key, "rows": rows, "best": best}
    with atomic_file(Path(base.train.out_dir) / f"{base.train.name}_sweep.json", "w") as f:
        json.dump(result, f, indent=1)
    return result


def main(argv=None):
    configs = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=(
        "configs: " + ", ".join(configs) + ". Every key and its default: python train.py CONFIG --print-config; "
        "experiment.py documents them."))
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (parsed as YAML); repeatable")
    parser.add_argument("--dry-run", action="store_true", help="build on the meta device and print parameter counts")
    parser.add_argument("--resume", action="store_true", help="continue the run in out_dir/name from state.pt")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (every key, defaults and --set applied) and exit")
    parser.add_argument("--sweep", metavar="SECTION.KEY=V1,V2,...",
                        help="one run per value (resumable), then the table of their dev losses; the lowest wins")
    args = parser.parse_args(argv)
    if args.sweep:
        if args.dry_run:
            parser.error("--sweep trains one run per value: leave out --dry-run")
        return sweep(args.config, args.set, args.sweep)

    # 1. Config.
    exp = load_experiment(args.config, args.set)
    acfg, t = exp.adapter, exp.train
    if args.print_config:
        return print(yaml.safe_dump(exp.to_dict(), sort_keys=False), end="")
    if args.dry_run:
        return dry_run(exp)
    if t.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("train.tensorboard=true needs the tensorboard package: pip install -e \".[tensorboard]\"")
    device, dtype, autocast = runtime(exp.model, exp.train)
    device = distributed.setup(device)  # under torchrun: this rank's device, the process group joined
    run, resuming = distributed.on_main(lambda: prepare_run_dir(exp, args.resume))  # one process writes the run

    # 2. Load the data (with the checkpoint's tokenizer for a text task) and the checkpoint (its kind and
    #    family come from its config.json).
    with distributed.main_first():  # rank 0 writes any random checkpoint and data cache, the others read them
        ensure_inputs(exp)
        path = resolve_checkpoint_path(exp.model.path)
        with phase(f"data: {exp.data.task}"):
            task = build_task(exp, path)
    if t.select_by == "val_metric" and not getattr(task, "metric", None):
        raise ConfigError(f"train.select_by=val_metric: task {exp.data.task!r} has no metric; use val_loss")
    # Under FSDP (train.parallel=fsdp under torchrun) the model is loaded on the CPU, adapted there and then
    # sharded onto the devices: each holds 1/N of it.
    fsdp = t.parallel == "fsdp" and distributed.joined()

    def load():
        torch.manual_seed(t.seed)  # a fresh classification head draws its initial weights here, the same each time
        return load_model(path, dtype, "cpu" if fsdp else device, num_labels=getattr(task, "num_labels", None)).train()

    with phase(f"model: {path} ({dtype}, {'cpu, to be sharded' if fsdp else device})"):
        model = load()

    if resuming:  # the bases and initial tensors come back from the adapter file instead of 3-5
        giva.load_adapter(model, run / "adapter.safetensors")
    else:
        # 3. Probe: the first-step gradient of every target, only for a method whose bases need it. Under FSDP
        #    on a sharded copy of its own (its target weights require grad while the sharding is set up).
        grads, probed = None, model
        if giva.needs_gradient(acfg):
            if fsdp:
                with phase("probe model: loaded and sharded"):
                    probed = distributed.shard(load(), device)
            indices, batches = probe_batches(exp, task)
            with phase(f"probe: first-step gradients over {len(batches)} micro-batches"):
                grads = giva.estimate_gradients(probed, [(to_device(b, device), w) for b, w in
                                                         distributed.share_even(batches)],
                                                probe_loss(autocast), targets=acfg.targets,
                                                exclude=acfg.modules_to_save, offload_to_cpu=exp.probe.offload_to_cpu,
                                                sum_across=distributed.sum_ if distributed.world() > 1 else None)
            if distributed.is_main():
                with atomic_file(run / "probe.json", "w") as f:
                    json.dump({"example_indices": indices, "seed": exp.probe.seed, "micro_batches": len(batches)}, f)
        # 4. Bases: GiVA's seeded SVD of each gradient (freed as it goes), OSoRA's SVD of W0; none for the rest.
        with phase(f"bases: {acfg.method}"):
            bases = bases_of_every_rank(probed, acfg, grads, device)
        # 5. Inject: wrap every target, freeze everything but the adapter (and adapter.modules_to_save).
        giva.apply_adapters(model, acfg, bases)
        del grads, bases, probed
        giva.save_adapter(model, run / "adapter.safetensors", include_bases=True, gather=distributed.gather_full)
    if distributed.is_main():
        print(giva.parameter_table(model))
    if fsdp:
        with phase(f"FSDP: sharded over {distributed.world()} process(es)"):
            distributed.shard(model, device)
    speed_options(model, t)

    # 6. AdamW over the adapter's trainable tensors, each once (a fully trained head included), and nothing else.
    params = giva.adapter_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay)
    giva.check_optimizer(optimizer, model)
    counts = giva.count_parameters(model)

    steps_per_epoch = math.ceil(len(task.train) / t.batch_size)
    total_steps = steps_per_epoch * t.epochs if not t.max_steps else min(t.max_steps, steps_per_epoch * t.epochs)
    warmup = t.warmup_steps or math.ceil(t.warmup_ratio * total_steps)
    val_steps = {round(steps_per_epoch * (e + k / t.val_per_epoch))
                 for e in range(t.epochs) for k in range(1, t.val_per_epoch + 1)}
    val_steps = {min(s, total_steps) for s in val_steps if s > 0} | {total_steps}

    progress = {"step": 0, "best_score": math.inf, "best_val_loss": math.inf, "best_step": 0, "train_time_s": 0.0,
                "tokens": 0, "metrics_lines": 0}
    torch.manual_seed(t.seed + distributed.rank())  # dropout's RNG, seeded here so that nothing in setup shifts it
    if resuming:
        progress.update(load_state(run, model, optimizer))
    metrics = Metrics(run / "metrics.jsonl", progress["metrics_lines"] if resuming else None,
                      run / "tensorboard" if t.tensorboard else None, progress["step"], writes=distributed.is_main())
    if hasattr(task, "evaluate") and not resuming:
        with autocast():
            before = {f"val_{k}_before": v for k, v in task.evaluate(model, task.val).items()}
        metrics.write({"step": 0, **before})
        progress.update(before)

    stop_at = total_steps if not t.max_steps_this_invocation else min(
        total_steps, progress["step"] + t.max_steps_this_invocation)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar = tqdm(total=total_steps, initial=progress["step"], desc=t.name, dynamic_ncols=True,
               disable=not distributed.is_main())
    window_loss = torch.zeros((), device=device)
    window_n = torch.zeros((), device=device, dtype=torch.long)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    window_tokens, window_start = 0, time.perf_counter()
    shown = {}  # the progress bar's values: the last logged step's and the last validation's
    perm, perm_epoch = None, -1

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def kept():
        if (run / "state.pt").is_file():
            return f"The last good checkpoint (step {progress['step_saved']}) is kept in {run}"
        return f"No checkpoint was written before it (nothing to resume in {run}): lower train.lr or check the data"

    def check_finite():
        bad = first_bad.item()
        if bad >= 0:
            raise TrainingDiverged(f"non-finite training loss at optimizer step {bad + 1}; stopped. {kept()}")

    progress.setdefault("step_saved", progress["step"])
    while progress["step"] < stop_at:
        step = progress["step"]
        epoch, j = divmod(step, steps_per_epoch)
        if epoch != perm_epoch:  # the data order is a pure function of (seed, epoch): resumable anywhere
            perm = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(t.seed * 1000 + epoch))
            perm_epoch = epoch
            if hasattr(task, "set_epoch"):  # so is the augmentation of a task that has one
                task.set_epoch(epoch)
        picks = perm[j * t.batch_size:(j + 1) * t.batch_size].tolist()
        lr = t.lr * lr_factor(step, total_steps, warmup, t.schedule)
        step_loss, step_n, tokens = optimizer_step(model, task, picks, optimizer, params, lr, t, device, autocast)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(step_loss), step, first_bad)
        window_loss += step_loss
        window_n += step_n
        window_tokens += tokens
        progress["step"] = step = step + 1
        bar.update(1)

        if step % t.log_every == 0 or step in val_steps or step == stop_at:
            sync()
            now = time.perf_counter()
            progress["train_time_s"] += now - window_start
            window_tokens = sum(distributed.gather_objects(window_tokens))  # every rank's
            progress["tokens"] += window_tokens
            check_finite()
            record = {"step": step, "epoch": step / steps_per_epoch, "lr": lr,
                      "loss": (window_loss / window_n.clamp(min=1)).item(),
                      "tokens_per_s": window_tokens / max(now - window_start, 1e-9)}
            if device.type == "cuda":
                record["gpu_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            metrics.write(record)
            shown.update({k: v for k, v in record.items() if k not in ("step", "epoch")})
            bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})
            window_loss.zero_(), window_n.zero_()
            window_tokens = 0

            if step in val_steps:
                val = validation_loss(model, task, device, autocast, t)
                if not math.isfinite(val):
                    raise TrainingDiverged(f"non-finite validation loss at step {step}; stopped. {kept()}")
                record = {"step": step, "val_loss": val}
                score = val  # lower is better
                if t.select_by == "val_metric":
                    with autocast():
                        record.update({f"val_{k}": v for k, v in task.evaluate(model, task.val).items()})
                    score = -record[f"val_{task.metric}"]
                metrics.write(record)
                shown.update({k: v for k, v in record.items() if k != "step"})  # the latest validation, in the bar
                bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})
                if score < progress["best_score"]:
                    progress.update(best_score=score, best_step=step, **{f"best_{k}": v for k, v in record.items()
                                                                          if k.startswith("val_")})
                    giva.save_adapter(model, run / "best.safetensors", include_bases=False,
                                      gather=distributed.gather_full)
            if step in val_steps or step == stop_at:
                progress.update(metrics_lines=metrics.lines, step_saved=step)
                save_state(run, model, optimizer, progress)
            window_start = time.perf_counter()
    bar.close()
    metrics.close()
    if progress["step"] < total_steps:
        print(f"stopped after step {progress['step']} of {total_steps} (train.max_steps_this_invocation); "
              f"continue with --resume")
        return progress

    # 7. The end of the run.
    giva.save_adapter(model, run / "last.safetensors", include_bases=False, gather=distributed.gather_full)
    summary = {"name": t.name, "steps": total_steps, "trainable_params": counts["trainable"],
               "total_params": counts["total"],
               **{k: v for k, v in progress.items() if k.startswith("best_val_")}, "best_step": progress["best_step"],
               "train_time_s": progress["train_time_s"], "train_tokens": progress["tokens"],
               "tokens_per_s": progress["tokens"] / max(progress["train_time_s"], 1e-9)}
    if device.type == "cuda":
        summary["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if hasattr(task, "evaluate"):
        with autocast():
            after = {f"val_{k}_after": v for k, v in task.evaluate(model, task.val).items()}
        metrics.write({"step": total_steps, **after})
        summary.update({k: v for k, v in progress.items() if k.endswith("_before")}, **after)
    if not distributed.is_main():
        return summary
    with atomic_file(run / "summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary))
    changes = [f"{k[:-7]} {summary[k]:.4g} -> {summary[k[:-7] + '_after']:.4g}" for k in summary
               if k.endswith("_before") and isinstance(summary[k], float) and k[:-7] + "_after" in summary]
    print(f"saved in {run}: best val loss {summary['best_val_loss']:.4f} at step {summary['best_step']}"
          + "".join(f"; {c}" for c in changes), flush=True)
    return summary


if __name__ == "__main__":
    try:
        cli(main)
    finally:
        distributed.shutdown()
