"""GLUE SST-2, CoLA, MRPC, QNLI, RTE and STS-B from the files GLUE distributes (and HF's JSONL dumps).

Formats read (columns are found by header name, so either GLUE's or a renamed header works):
    SST-2  sentence<TAB>label (header `sentence`, or `text` as in ../shared/data/glue), label 0/1
    CoLA   NO header: source<TAB>label<TAB>original judgement<TAB>sentence, label 0/1
    MRPC   Quality<TAB>#1 ID<TAB>#2 ID<TAB>#1 String<TAB>#2 String, label (Quality) 0/1; may start with a BOM
    QNLI   index<TAB>question<TAB>sentence<TAB>label, label entailment / not_entailment
    RTE    index<TAB>sentence1<TAB>sentence2<TAB>label (entailment / not_entailment), or the JSONL
           {"idx", "sentence1", "sentence2", "label"} with HF's integer label
    STS-B  10 columns, sentence1, sentence2 and score (a float in 0-5)
Lines are split on tabs only: no CSV quoting, because MRPC and STS-B hold unbalanced quotes.
Label ids follow HF's `glue` dataset (entailment 0, not_entailment 1). A row with the wrong number of
fields or a bad label is an error naming the file and line.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from data.text_files import read_text


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None
    label: int | float


@dataclass(frozen=True)
class GlueTask:
    folder: str  # the task's folder in GLUE's layout
    text_columns: tuple[str, ...]  # header names (or column numbers for a headerless file)
    label_column: str | int
    metric: str  # a key of data.metrics.METRICS
    num_labels: int  # 1: regression
    label_names: tuple[str, ...] = ()  # string labels in id order; empty: the label is a number
    header_aliases: tuple[tuple[str, str], ...] = ()  # (name in some file, our name)
    headerless_fields: int = 0  # > 0: the file has no header and this many fields per line


ENTAILMENT = ("entailment", "not_entailment")
GLUE_TASKS = {
    "sst2": GlueTask("SST-2", ("sentence",), "label", "accuracy", 2, header_aliases=(("text", "sentence"),)),
    "cola": GlueTask("CoLA", (3,), 1, "matthews", 2, headerless_fields=4),
    "mrpc": GlueTask("MRPC", ("#1 String", "#2 String"), "Quality", "accuracy", 2),
    "qnli": GlueTask("QNLI", ("question", "sentence"), "label", "accuracy", 2, ENTAILMENT),
    "rte": GlueTask("RTE", ("sentence1", "sentence2"), "label", "accuracy", 2, ENTAILMENT),
    "stsb": GlueTask("STS-B", ("sentence1", "sentence2"), "score", "pearson", 1),
}


def glue_task(name: str) -> GlueTask:
    if name not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; choices: {sorted(GLUE_TASKS)}")
    return GLUE_TASKS[name]


def _label(task: GlueTask, raw, where: str) -> int | float:
    try:
        if task.num_labels == 1:
            return float(raw)
        if task.label_names and raw in task.label_names:
            return task.label_names.index(raw)
        value = int(raw)
    except (TypeError, ValueError):
        value = None
    if value is None or not 0 <= value < task.num_labels:
        names = f" or one of {list(task.label_names)}" if task.label_names else ""
        raise ValueError(f"{where}: label {raw!r} is not an integer in [0, {task.num_labels}){names}")
    return value


def _read_tsv(task: GlueTask, file: Path) -> list[Example]:
    lines = read_text(file, "GLUE TSV", encoding="utf-8-sig").split("\n")
    lines = [line.removesuffix("\r") for line in lines]
    if lines and lines[-1] == "":
        lines.pop()
    if task.headerless_fields:
        n_fields, start = task.headerless_fields, 0
        text_idx, label_idx = list(task.text_columns), task.label_column
    else:
        if not lines:
            raise ValueError(f"{file}: empty file, expected a header line")
        aliases = dict(task.header_aliases)
        header = [aliases.get(h, h) for h in lines[0].split("\t")]
        missing = [c for c in (*task.text_columns, task.label_column) if c not in header]
        if missing:
            raise ValueError(f"{file}:1: header {lines[0].split(chr(9))} lacks column(s) {missing}")
        n_fields, start = len(header), 1
        text_idx, label_idx = [header.index(c) for c in task.text_columns], header.index(task.label_column)
    examples = []
    for i, line in enumerate(lines[start:], start=start + 1):
        fields = line.split("\t")
        if len(fields) != n_fields:
            raise ValueError(f"{file}:{i}: {len(fields)} tab-separated fields, expected {n_fields}")
        texts = [fields[j] for j in text_idx]
        examples.append(Example(texts[0], texts[1] if len(texts) > 1 else None,
                                _label(task, fields[label_idx], f"{file}:{i}")))
    return examples


def _read_jsonl(task: GlueTask, file: Path) -> list[Example]:
    examples = []
    for i, line in enumerate(read_text(file, "GLUE JSONL").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            texts = [row[c] for c in task.text_columns]
            raw = row[task.label_column]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{file}:{i}: not a JSON record with {[*task.text_columns, task.label_column]} ({e})")
        examples.append(Example(texts[0], texts[1] if len(texts) > 1 else None, _label(task, raw, f"{file}:{i}")))
    return examples


def read_glue(name: str, file) -> list[Example]:
    """All labelled examples of one GLUE file (.tsv, or .jsonl for HF dumps)."""
    task, file = glue_task(name), Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: GLUE {name} file not found")
    examples = _read_jsonl(task, file) if file.suffix == ".jsonl" else _read_tsv(task, file)
    if not examples:
        raise ValueError(f"{file}: no GLUE {name} examples in the file (it is empty or holds only a header)")
    return examples


def glue_file(root, name: str, split: str = "dev") -> Path:
    """<root>/<task folder>/<split>.tsv, else the JSONL dump of HF's split (validation for dev)."""
    folder = Path(root) / glue_task(name).folder
    hf_split = "validation" if split == "dev" else split
    for candidate in (f"{split}.tsv", f"{hf_split}.jsonl", f"{hf_split}_from_parquet.jsonl"):
        if (folder / candidate).is_file():
            return folder / candidate
    raise FileNotFoundError(f"{folder}: no {split}.tsv or {hf_split}[_from_parquet].jsonl for GLUE {name}")
