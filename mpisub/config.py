"""The run's configuration: plain values in five sections, presets, TOML loading, validation.

Order of precedence: defaults < --preset < --config FILE < --set section.key=value.
Every check here runs identically on every rank, so a bad value stops all ranks the same way
before any collective. Values that depend on the number of ranks (masks.subnets = 0, masks.keep
= 0, output.dir = "") are resolved by `resolve`, and the resolved config is what a run stores.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import sys
from dataclasses import dataclass, field

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import UserError, cause


@dataclass
class DataConfig:
    source: str = "synthetic"   # built-in (unit-sphere inputs, random teacher), or a .h5/.npz/.csv path
    n: int = 512                # samples      } for a file: taken from the file
    d: int = 16                 # input dimension
    outputs: int = 1            # c, outputs per sample
    x_name: str = "X"           # .h5/.npz: names of the input and target arrays
    y_name: str = "Y"
    target: str = ""            # .csv: target column names, comma-separated ("" = the last column)
    normalize: str = "none"     # none | standardize (columns: mean 0, std 1) | unit (rows: norm 1)
    noise: float = 0.0          # std of Gaussian noise added to the teacher's targets
    seed: int = 0
    task: str = "regression"    # regression | classification (integer labels in Y become one-hot targets)
    test_source: str = ""       # held-out data: a second file in the same format ("" = none)
    holdout: float = 0.0        # or: this fraction of a data file held out (a seeded split)
    test_n: int = 0             # or, for the synthetic source: this many test points from the same teacher


@dataclass
class ModelConfig:
    width: int = 4096           # m, hidden neurons
    init_scale: float = 1.0     # kappa: w_r ~ N(0, kappa^2 I)
    dtype: str = "float64"


@dataclass
class MasksConfig:
    kind: str = "partition"     # bernoulli | categorical | partition | full
    subnets: int = 0            # p; 0 = one per rank (1 for full)
    keep: float = 0.0           # xi; 0 = 0.5 for bernoulli, 1/p for categorical/partition, 1 for full


@dataclass
class TrainConfig:
    rounds: int = 60
    local_steps: int = 5        # tau
    lr: float = 4.0             # the loss carries 1/(2n), so the stable step grows with n
    seed: int = 0
    batch_size: int = 0         # 0 = full batch (the paper); >0 = minibatch SGD local steps
    memory_limit_mb: int = 0    # refuse a run whose estimated memory per rank exceeds this (0 = what the node has)
    plan: str = "auto"          # rows | outputs | auto (the one with fewer bytes per rank per round)
    lr_scaling: str = "none"    # none | keep: the step is lr x masks.keep (the paper's lr = c keep)
    loss: str = "squared"       # squared (the paper's) | cross_entropy (softmax; for classification)


@dataclass
class OutputConfig:
    dir: str = ""               # "" = runs/<timestamp>
    log_every: int = 0          # 0 = about 20 progress lines per run
    checkpoint_every: int = 10  # rounds between checkpoints (and one at the end, or on SIGTERM/SIGUSR1)
    eval_every: int = 0         # rounds between evaluations of the full network (0 = about 5% of the time)
    record_masks: bool = False
    overwrite: bool = False
    tensorboard: bool = False   # also write the per-round metrics as TensorBoard events (rank 0)


@dataclass
class TheoryConfig:
    max_n: int = 4096           # compute the NTK Gram matrix's lambda_0 when n <= max_n (0 = never)
    store_H_max_n: int = 1024   # also store H itself (n x n) when n <= this
    gram_max_n: int = 0         # at each evaluation, lambda_min of the finite-width H(W_k) when n <= this (0 = never)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    masks: MasksConfig = field(default_factory=MasksConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    theory: TheoryConfig = field(default_factory=TheoryConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def to_toml(self, resolved: "Config | None" = None, where: str = "") -> str:
        """This config as TOML. With `resolved` (this config resolved for a run), a value that the
        run resolved to something else (an auto value: subnets = 0, keep = 0, plan = "auto") keeps
        its own value, so the file reproduces the run at any K, and says what it resolved to."""
        lines = []
        theirs = resolved.to_dict() if resolved is not None else {}
        for section, values in self.to_dict().items():
            lines.append(f"\n[{section}]" if lines else f"[{section}]")
            for key, v in values.items():
                line = f"{key} = {_toml_value(v)}"
                other = theirs.get(section, {}).get(key, v)
                lines.append(line if other == v else f"{line}   # {where or 'resolved'}: {_toml_value(other)}")
        return "\n".join(lines)


MASK_KINDS = ("bernoulli", "categorical", "partition", "full")
DTYPES = ("float64", "float32")
NORMALIZE = ("none", "standardize", "unit")

PRESETS = {
    # IST: a random balanced partition of the neurons, one part per subnetwork, tau local steps.
    "ist": {"masks.kind": "partition", "masks.subnets": 0, "train.local_steps": 5},
    "gd": {"masks.kind": "full", "masks.subnets": 1, "train.local_steps": 1},
    "dropout": {"masks.kind": "bernoulli", "masks.subnets": 1, "masks.keep": 0.5, "train.local_steps": 1},
    "multisample": {"masks.kind": "bernoulli", "masks.subnets": 4, "masks.keep": 0.5, "train.local_steps": 1},
}


# Declarative constraints, one per key: (low, high, low_open, high_open) for numbers, a tuple of
# choices for strings. The type of each key is the type of its default.
@dataclass(frozen=True)
class Interval:
    """A number in [low, high] (None: unbounded); `open_low` excludes low itself. NaN and inf are
    never in range (after scikit-learn's Interval)."""
    low: float | None
    high: float | None = None
    open_low: bool = False

    def holds(self, v) -> bool:
        return not (isinstance(v, float) and not math.isfinite(v)) and \
            (self.low is None or (v > self.low if self.open_low else v >= self.low)) and \
            (self.high is None or v <= self.high)

    def problem(self, key: str, v) -> str:
        span = f"{'(' if self.open_low else '['}{self.low}, {'inf' if self.high is None else self.high}]"
        return f"{key} = {v!r} is out of range: must be in {span}"


@dataclass(frozen=True)
class Options:
    """One of a few strings."""
    choices: tuple

    def holds(self, v) -> bool:
        return v in self.choices

    def problem(self, key: str, v) -> str:
        close = difflib.get_close_matches(str(v), self.choices, n=1, cutoff=0.6)
        return f"{key} = {v!r} is not one of {', '.join(self.choices)}" + \
            (f"; did you mean {close[0]!r}?" if close else "")


POSITIVE, COUNT, SEED = Interval(1), Interval(0), Interval(0, 2**63 - 1)
RULES = {
    "data.n": POSITIVE,
    "data.d": POSITIVE,
    "data.outputs": POSITIVE,
    "data.noise": Interval(0.0),
    "data.seed": SEED,
    "data.normalize": Options(NORMALIZE),
    "data.task": Options(("regression", "classification")),
    "data.holdout": Interval(0.0, 0.9),
    "data.test_n": COUNT,
    "model.width": Interval(1, 2**31 - 1),  # neuron counts travel as C ints
    "model.init_scale": Interval(0.0, open_low=True),
    "model.dtype": Options(DTYPES),
    "masks.kind": Options(MASK_KINDS),
    "masks.subnets": COUNT,                  # 0: one per rank
    "masks.keep": Interval(0.0, 1.0),
    "train.rounds": POSITIVE,
    "train.local_steps": POSITIVE,
    "train.lr": Interval(0.0, open_low=True),
    "train.seed": SEED,
    "train.batch_size": COUNT,               # 0: full batch
    "train.memory_limit_mb": COUNT,          # 0: what the node has
    "train.plan": Options(("auto", "rows", "outputs")),
    "train.lr_scaling": Options(("none", "keep")),
    "train.loss": Options(("squared", "cross_entropy")),
    "output.log_every": COUNT,               # 0: about 20 lines a run
    "output.checkpoint_every": POSITIVE,
    "output.eval_every": COUNT,              # 0: EVAL_SHARE of the training time
    "theory.max_n": COUNT,
    "theory.store_H_max_n": COUNT,
    "theory.gram_max_n": COUNT,
}

HINTS = {
    "masks.keep": "use a value in (0, 1], or 0 for the kind's own keep",
    "masks.subnets": "use 0 for one subnetwork per rank",
}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def _key_type(cfg: Config, key: str):
    section, name = key.split(".")
    return type(getattr(getattr(cfg, section), name))


def _coerce(key: str, value, typ):
    """The value as the key's type, or a UserError naming the key."""
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, str):
            return value
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    raise UserError(f"{key} must be {names[typ]}, got {value!r}")


# names users bring from other tools, and the key that means the same here
SYNONYMS = {"learning_rate": "train.lr", "step_size": "train.lr", "eta": "train.lr", "epochs": "train.rounds",
            "iterations": "train.rounds", "tau": "train.local_steps", "steps": "train.local_steps",
            "hidden": "model.width", "m": "model.width", "neurons": "model.width", "p": "masks.subnets",
            "workers": "masks.subnets", "dropout": "masks.keep", "xi": "masks.keep", "kappa": "model.init_scale"}


def suggest_key(key: str, known: list[str]) -> str | None:
    """The known key a mistyped one most likely means: a synonym, else the closest spelling of the
    whole key or of its name within a section."""
    name = key.split(".")[-1].lower()
    if name in SYNONYMS:
        return SYNONYMS[name]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    if close:
        return close[0]
    by_name = {k.split(".")[1]: k for k in known}
    close = difflib.get_close_matches(name, list(by_name), n=1, cutoff=0.75)
    return by_name[close[0]] if close else None


def set_value(cfg: Config, key: str, value) -> None:
    """Set `section.key` on cfg after checking the name and type."""
    parts = key.split(".")
    if len(parts) != 2 or not hasattr(cfg, parts[0]) or not hasattr(getattr(cfg, parts[0]), parts[1]):
        known = [f"{s}.{k}" for s, vals in cfg.to_dict().items() for k in vals]
        close = suggest_key(key, known)
        hint = f"did you mean {close!r}?" if close else f"known keys: {', '.join(known)}"
        raise UserError(f"unknown config key {key!r}; {hint}")
    setattr(getattr(cfg, parts[0]), parts[1], _coerce(key, value, _key_type(cfg, key)))


def _string_keys(cfg: Config) -> set[str]:
    return {f"{s}.{k}" for s, vals in cfg.to_dict().items() for k, v in vals.items() if isinstance(v, str)}


def parse_assignment(text: str) -> tuple[str, object]:
    """'train.lr=0.5' -> ('train.lr', 0.5). The value is read as TOML, else taken as a string."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected section.key=value, e.g. --set train.lr=0.5")
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def read_toml(path: str, what: str = "config file") -> dict:
    """A TOML file as parsed; every way it can fail is one UserError naming it as `what`."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} {path!r} not found; check the path") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path!r} is a folder; give the path of a TOML file") from None
    except OSError as e:
        raise UserError(f"{what} {path!r} cannot be read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{what} {path!r} is not valid TOML: {cause(e)}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path!r} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                        f"{e.start}); save it as UTF-8") from None
    except Exception as e:  # noqa: BLE001 (a user's file: whatever the parser raises is one line)
        raise UserError(f"{what} {path!r} cannot be read as TOML ({type(e).__name__}: {cause(e)}); "
                        f"check the file") from None
    return doc


def load_toml(path: str) -> dict[str, object]:
    """A config file as {section.key: value}."""
    doc = read_toml(path)
    flat = {}
    for section, values in doc.items():
        if not isinstance(values, dict):
            raise UserError(f"config file {path!r}: {section!r} must be a [section] table, e.g. [train]")
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return flat


def _line_of(file: str, key: str) -> str:
    """', line N' where `key` (section.name) is set in a TOML file, or '' where it cannot be told."""
    section, name = key.rsplit(".", 1) if "." in key else ("", key)
    current = ""
    try:
        with open(file, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                text = line.strip()
                if text.startswith("[") and text.endswith("]"):
                    current = text.strip("[] ")
                elif current == section and text.split("=", 1)[0].strip() == name:
                    return f", line {number}"
    except (OSError, UnicodeDecodeError):
        pass
    return ""


def build(preset: str | None = None, file: str | None = None, overrides: list[str] = ()) -> Config:
    """defaults < preset < file < overrides, each key type-checked as it is set. An error in a value
    that comes from the file names the file."""
    cfg = Config()
    if preset is not None:
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        for key, value in PRESETS[preset].items():
            set_value(cfg, key, value)
    where = {}
    if file is not None:
        for key, value in load_toml(file).items():
            try:
                set_value(cfg, key, value)
            except UserError as e:
                raise UserError(f"config file {file!r}{_line_of(file, key)}: {e}") from None
            where[key] = f"config file {file!r}: "
    for key in apply_overrides(cfg, overrides):
        where.pop(key, None)
    check_ranges(cfg, where)
    return cfg


# a resumed run continues the stored config; these may change without changing its results
RESUME_KEYS = ("train.rounds", "output.checkpoint_every", "output.log_every", "train.memory_limit_mb",
               "output.tensorboard", "output.eval_every")


def for_resume(stored: dict, overrides: list[str] = ()) -> Config:
    """The stored (resolved) config of a run being resumed. `--set` may change RESUME_KEYS; any
    other key it may only repeat (so a job script can pass the same options on every attempt)."""
    cfg = from_dict(stored)
    apply_overrides(cfg, overrides, allowed=RESUME_KEYS)
    check_ranges(cfg)
    return cfg


def apply_overrides(cfg: Config, overrides: list[str], allowed: tuple[str, ...] | None = None) -> list[str]:
    """Applies `--set` texts in order; returns the keys they set."""
    keys = []
    for text in overrides:
        key, value = parse_assignment(text)
        if isinstance(value, (int, float)) and key in _string_keys(cfg):
            value = text.split("=", 1)[1].strip()  # --set output.dir=2024 means the folder "2024"
        before = copy.deepcopy(cfg)
        set_value(cfg, key, value)
        if allowed is not None and key not in allowed and cfg != before:
            section, name = key.split(".")
            raise UserError(f"--set {key}={value!r}: the run being resumed has {key} = "
                            f"{getattr(getattr(before, section), name)!r}, and its results depend on it; "
                            f"only {', '.join(allowed)} may change with --resume")
        keys.append(key)
    return keys


def check_ranges(cfg: Config, where: dict[str, str] | None = None) -> None:
    """`where`: a prefix for the message of a key, naming the file its value came from."""
    values = {f"{s}.{k}": v for s, vals in cfg.to_dict().items() for k, v in vals.items()}
    for key, rule in RULES.items():
        if not rule.holds(values[key]):
            hint = f"; {HINTS[key]}" if key in HINTS else ""
            raise UserError(f"{(where or {}).get(key, '')}{rule.problem(key, values[key])}{hint}")


DATA_SUFFIXES = (".h5", ".hdf5", ".npz", ".csv")


def resolve(cfg: Config, ranks: int, resuming: bool = False) -> Config:
    """Fill in the values that depend on the number of ranks and check the keys against each other."""
    cfg = copy.deepcopy(cfg)
    source = cfg.data.source
    if source != "synthetic" and not source.lower().endswith(DATA_SUFFIXES):
        raise UserError(f"data.source = {source!r} is neither 'synthetic' nor a data file; give a path "
                        f"ending in {', '.join(DATA_SUFFIXES)}")
    d = cfg.data
    if source == "synthetic" and (d.holdout or d.test_source):
        raise UserError("data.holdout and data.test_source are for a data file; the synthetic source draws its "
                        "test points from the same teacher: set data.test_n")
    if source != "synthetic" and d.test_n:
        raise UserError("data.test_n is for the synthetic source; for a data file set data.holdout (a fraction) "
                        "or data.test_source (a second file)")
    if d.holdout and d.test_source:
        raise UserError("data.holdout and data.test_source both give a test set; set one of them")
    if d.test_source and not d.test_source.lower().endswith(DATA_SUFFIXES):
        raise UserError(f"data.test_source = {d.test_source!r} is not a data file; give a path ending in "
                        f"{', '.join(DATA_SUFFIXES)}")
    if cfg.train.loss == "cross_entropy" and d.task != "classification":
        raise UserError("train.loss = 'cross_entropy' needs class targets: set data.task = 'classification' "
                        "(or use train.loss = 'squared')")
    m = cfg.masks
    if m.subnets == 0:
        m.subnets = 1 if m.kind == "full" else ranks
    p = m.subnets
    if m.kind == "full" and p != 1:
        raise UserError(f"masks.kind = 'full' means one subnetwork, but masks.subnets = {p}; set masks.subnets = 1")
    if p % ranks and cfg.train.plan == "rows":
        fits = max(k for k in range(1, min(p, ranks) + 1) if p % k == 0)
        if resuming:
            raise UserError(f"--resume: the run has masks.subnets = {p} and train.plan = 'rows', where every rank "
                            f"holds whole subnetworks: resume it with a number of ranks that divides {p} "
                            f"(e.g. mpirun -n {fits})")
        raise UserError(f"masks.subnets = {p} is not a multiple of the {ranks} MPI ranks, which train.plan = 'rows' "
                        f"needs (every rank holds whole subnetworks); set train.plan = 'outputs' (or 'auto'), "
                        f"set masks.subnets to a multiple of {ranks}, or change mpirun -n")
    if cfg.model.width < p:
        raise UserError(f"model.width = {cfg.model.width} is smaller than masks.subnets = {p}; "
                        f"every subnetwork needs neurons: raise model.width")
    derived = {"bernoulli": 0.5, "categorical": 1.0 / p, "partition": 1.0 / p, "full": 1.0}[m.kind]
    if m.keep == 0.0:
        m.keep = derived
    elif m.kind != "bernoulli" and not math.isclose(m.keep, derived):
        raise UserError(f"masks.keep = {m.keep} does not apply to masks.kind = {m.kind!r} (its keep is "
                        f"{derived:g}); remove masks.keep or use masks.kind = 'bernoulli'")
    return cfg


# the share of the training time that evaluating the full network may take by default, and how
# much more an evaluation costs than its products' flops say (it also redraws W_init's rows for
# the diagnostics, reduces over the ranks and runs Python; measured on the benchmark's small cases)
EVAL_SHARE = 0.05
EVAL_OVERHEAD = 3.0


def auto_eval_every(cfg: Config) -> int:
    """Rounds between evaluations so that they cost about EVAL_SHARE of the training
    (docs/design.md, "Evaluation cadence"). An evaluation is two products of the whole network over
    the n samples (its outputs, and the activation patterns for the lazy-regime diagnostics),
    4 n d m flops; a round is p subnetworks x tau steps x two products of b x d x (keep m),
    4 p keep tau b d m flops (b = n at full batch). So evaluating every
    ceil(EVAL_OVERHEAD n / (EVAL_SHARE p keep tau b)) rounds costs at most EVAL_SHARE."""
    b = cfg.train.batch_size or cfg.data.n
    per_round = cfg.masks.subnets * cfg.masks.keep * cfg.train.local_steps * b
    if per_round <= 0:  # not resolved yet (subnets, keep 0: auto)
        return 1
    return max(1, math.ceil(EVAL_OVERHEAD * cfg.data.n / (EVAL_SHARE * per_round) - 1e-9))


def step_size(cfg: Config) -> float:
    """The step the local steps take: train.lr, times masks.keep with train.lr_scaling = "keep"
    (Liao & Kyrillidis scale the step with keep: a keep sweep at lr = c keep is one key)."""
    return cfg.train.lr * (cfg.masks.keep if cfg.train.lr_scaling == "keep" else 1.0)


def fit_data(cfg: Config, n: int, d: int, outputs: int) -> Config:
    """The loaded data's shape in the config (a data file decides n, d and outputs, and the stored
    config then says what was trained), checked against the keys that depend on it; the
    evaluation cadence, which depends on n, resolved."""
    cfg = copy.deepcopy(cfg)
    cfg.data.n, cfg.data.d, cfg.data.outputs = n, d, outputs
    if cfg.train.batch_size > n:
        raise UserError(f"train.batch_size = {cfg.train.batch_size} exceeds the {n} samples of the data; "
                        f"use at most {n}, or 0 for full batch")
    if cfg.output.eval_every == 0:
        cfg.output.eval_every = auto_eval_every(cfg)
    return cfg


def from_dict(d: dict) -> Config:
    """A Config from its to_dict() form (e.g. the JSON stored in a run file)."""
    cfg = Config()
    for section, values in d.items():
        for key, value in values.items():
            set_value(cfg, f"{section}.{key}", value)
    return cfg
