"""AdapterConfig: which method, which layers, and every knob of the methods in methods.md.

One flat dataclass for all methods, used directly as the `adapter:` section of an experiment file; a
field a method does not use is ignored by it. Each method checks the fields it needs (its class's
`check_config`), so this file names no method. Every bad value is a ValueError naming `adapter.<field>`.

Seeds: every random draw has its own field, so changing one method's basis never moves another's, and
none of them depends on which training examples the probe happened to use (probe.seed picks those).
"""
from dataclasses import asdict, dataclass, field, fields


@dataclass
class AdapterConfig:
    method: str = "giva"  # giva | vera | osora | randlora | lora | full  (giva/methods.py)
    r: int = 64
    targets: list[str] = field(default_factory=list)  # module-name suffixes, e.g. ["q_proj", "v_proj"]
    # Modules trained fully and stored in the adapter file, as peft's modules_to_save (a classification head):
    # matched by name suffix like targets, and excluded from targeting (so RoBERTa's classifier.dense is no target).
    modules_to_save: list[str] = field(default_factory=list)
    init: str = "secsv"  # GiVA: how B is chosen, topsv | secsv | rand (A is always the top-r' right singular vectors)
    alpha: float | None = None  # LoRA, RandLoRA: scaling numerator (required by those two)
    use_rslora: bool = False  # LoRA: alpha / sqrt(r) instead of alpha / r
    randlora_sqrt_n: bool = False  # RandLoRA: the official repo's alpha / (r sqrt(N)) instead of peft's alpha / r
    d_initial: float = 0.1  # VeRA: initial value of lambda_d (methods.md 7.3: 1.0 in the LLM runs)
    dropout: float = 0.0  # on the adapter branch only
    svd_seed: int = 0  # GiVA: seeds svd_lowrank and Rand-B's Gaussian, per layer
    svd_q: int | None = None  # GiVA: svd_lowrank oversampled rank; None = min(4 r', m, n) as the official code
    svd_niter: int = 4  # GiVA: svd_lowrank power iterations
    vera_seed: int = 0  # VeRA: the shared bases' generator seed (peft's projection_prng_key)
    randlora_seed: int = 0  # RandLoRA: the shared bases' generator seed (peft's projection_prng_key)
    lora_seed: int = 0  # LoRA: seeds each layer's Kaiming-uniform A

    def __post_init__(self):
        from giva.methods import METHODS  # the method classes import nothing from here

        if self.method not in METHODS:
            self.bad("method", f"must be one of {', '.join(METHODS)}")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            self.bad("r", "must be a positive integer")
        for name in ("targets", "modules_to_save"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(t, str) and t for t in value):
                self.bad(name, "must be a list of non-empty module-name suffixes, e.g. ['q_proj', 'v_proj']")
            setattr(self, name, list(value))
        if not 0.0 <= self.dropout < 1.0:
            self.bad("dropout", "must be in [0, 1)")
        if self.svd_q is not None and (not isinstance(self.svd_q, int) or self.svd_q < 1):
            self.bad("svd_q", "must be null or a positive integer")
        if not isinstance(self.svd_niter, int) or self.svd_niter < 0:
            self.bad("svd_niter", "must be a non-negative integer")
        METHODS[self.method].check_config(self)

    def bad(self, name: str, why: str):
        raise ValueError(f"adapter.{name}={getattr(self, name)!r}: {why}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AdapterConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"AdapterConfig: unknown field(s) {unknown}; valid fields: {sorted(known)}")
        return cls(**d)
