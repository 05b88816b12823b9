"""AdapterConfig: which method, which layers, and every knob of the methods in methods.md.

One flat dataclass for all methods; a field a method does not use is ignored by it. Every bad value
is a ValueError that names the field and the valid choices, raised at construction.
"""
from dataclasses import asdict, dataclass, field, fields

METHODS = ("giva", "vera", "osora", "randlora", "lora", "full")
GIVA_INITS = ("topsv", "secsv", "rand")  # the paper's TopSV-B, SecSV-B, Rand-B (code: VrUr, VrU2r, Vr)


@dataclass
class AdapterConfig:
    method: str
    r: int = 64
    targets: list[str] = field(default_factory=list)  # module-name suffixes, e.g. ["q_proj", "v_proj"]
    init: str = "secsv"  # GiVA: how B is chosen (A is always the top-r' right singular vectors of G)
    alpha: float | None = None  # LoRA, RandLoRA: scaling numerator (required by those two)
    use_rslora: bool = False  # LoRA: alpha / sqrt(r) instead of alpha / r
    randlora_sqrt_n: bool = False  # RandLoRA: the official repo's alpha / (r sqrt(N)) instead of peft's alpha / r
    d_initial: float = 0.1  # VeRA: initial value of lambda_d
    dropout: float = 0.0  # on the adapter branch only
    seed: int = 0  # GiVA: SVD / Rand-B seed; VeRA, RandLoRA: the shared bases' seed (peft's projection_prng_key)
    svd_q: int | None = None  # GiVA: svd_lowrank oversampled rank; None = min(4 r', m, n) as the official code
    svd_niter: int = 4  # GiVA: svd_lowrank power iterations

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"AdapterConfig.{name}={getattr(self, name)!r}: {why}")

        if self.method not in METHODS:
            bad("method", f"must be one of {', '.join(METHODS)}")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            bad("r", "must be a positive integer")
        if isinstance(self.targets, str) or not all(isinstance(t, str) and t for t in self.targets):
            bad("targets", "must be a list of non-empty module-name suffixes, e.g. ['q_proj', 'v_proj']")
        self.targets = list(self.targets)
        if self.method != "full" and not self.targets:
            bad("targets", f"method {self.method!r} needs at least one target module name")
        if self.init not in GIVA_INITS:
            bad("init", f"must be one of {', '.join(GIVA_INITS)}")
        if self.method in ("lora", "randlora") and self.alpha is None:
            bad("alpha", f"method {self.method!r} needs an explicit alpha (scaling = alpha / r)")
        if not 0.0 <= self.dropout < 1.0:
            bad("dropout", "must be in [0, 1)")
        if self.svd_q is not None and (not isinstance(self.svd_q, int) or self.svd_q < 1):
            bad("svd_q", "must be None or a positive integer")
        if not isinstance(self.svd_niter, int) or self.svd_niter < 0:
            bad("svd_niter", "must be a non-negative integer")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AdapterConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"AdapterConfig: unknown field(s) {unknown}; valid fields: {sorted(known)}")
        return cls(**d)
