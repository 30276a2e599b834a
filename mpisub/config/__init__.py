"""The run's configuration: plain values in six sections, presets, and the declarative rules every
value is checked against (after scikit-learn's parameter constraints).

Order of precedence: defaults < --preset < --config FILE < --set section.key=value (`build`).
Every check here runs identically on every rank, so a bad value stops all ranks the same way
before any collective. Values that depend on the number of ranks or the data (masks.subnets = 0,
masks.keep = 0, output.eval_every = 0, train.plan = "auto") are settled once, by resolve.settle,
and the settled config is what a run stores.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mpisub._util.errors import UserError
from mpisub.config.constraints import ANY, COUNT, POSITIVE, SEED, Anything, Interval, Options
from mpisub.config.parse import line_of, load_toml, parse_assignment, suggest_key, tomllib  # noqa: F401 (tomllib: tests)
from mpisub.nn.losses import LOSSES
from mpisub.nn.masks import KINDS

if TYPE_CHECKING:  # types only: never imported at run time
    from typing import Any


class _Section:
    """A config section; once its Config is settled (Config.freeze), no value changes."""
    _frozen = False

    def __setattr__(self, name, value):
        if self._frozen:
            raise AttributeError(f"the run's config is settled: {name} cannot change (Config.replace makes a new one)")
        super().__setattr__(name, value)


@dataclass
class DataConfig(_Section):
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
class ModelConfig(_Section):
    width: int = 4096           # m, hidden neurons
    init_scale: float = 1.0     # kappa: w_r ~ N(0, kappa^2 I) (ntk); standard: w_r ~ N(0, init_scale^2 I / m)
    parametrization: str = "ntk"  # ntk: f = sum a relu(w x) / sqrt(m) (the paper's) | standard: / sqrt(c) (its code's)
    dtype: str = "float64"
    init_from: str = ""         # "" = W and a drawn from train.seed; a finished run (folder or run.h5): its W and a


@dataclass
class MasksConfig(_Section):
    kind: str = "partition"     # masks.KINDS: bernoulli | categorical | partition | full
    subnets: int = 0            # p; 0 = the kind's own (one per rank; 1 for full)
    keep: float = 0.0           # xi; 0 = the kind's own (0.5 for bernoulli, 1/p for categorical/partition, 1 for full)
    uncovered: str = "keep"     # a neuron no subnetwork holds: keep its weights (the analysis) | zero (authors' code)


@dataclass
class TrainConfig(_Section):
    rounds: int = 60
    local_steps: int = 5        # tau
    lr: float = 4.0             # the loss carries 1/(2n), so the stable step grows with n
    seed: int = 0
    batch_size: int = 0         # 0 = full batch (the paper); >0 = minibatch SGD local steps
    memory_limit_mb: int = 0    # refuse a run whose estimated memory per rank exceeds this (0 = what the node has)
    plan: str = "auto"          # rows | outputs | auto (the one whose collectives the cost model says are faster)
    lr_scaling: str = "none"    # none | keep: the step is lr x masks.keep (the paper's lr = c keep)
    loss: str = "squared"       # losses.LOSSES: squared (the paper's) | cross_entropy (softmax; classification)
    watchdog_seconds: float = 60.0  # a collective waits this long (or 10 x the slowest wait) before the watchdog looks
    budget: float = 0.0         # > 0: train this many full-gradient equivalents (sets rounds; compute_per_round)
    plateau_window: int = 0     # > 0: stop once the running mean of this many losses stops improving (authors' rule)
    plateau_floor: float = 0.0  # with plateau_window: also stop once that running mean is below this
    plateau_patience: int = 1   # with plateau_window: stop at this many rounds (in all) without a new best


@dataclass
class OutputConfig(_Section):
    dir: str = ""               # "" = runs/<timestamp>
    log_every: int = 0          # 0 = about 20 progress lines per run
    checkpoint_every: int = 10  # rounds between checkpoints (and one at the end, or on SIGTERM/SIGUSR1)
    checkpoint_seconds: float = 0.0  # > 0: also one once this many seconds have passed since the last
    eval_every: int = 0         # rounds between evaluations of the full network (0 = about 5% of the time)
    record_masks: bool = False
    overwrite: bool = False
    tensorboard: bool = False   # also write the per-round metrics as TensorBoard events (rank 0)


@dataclass
class TheoryConfig(_Section):
    max_n: int = 4096           # compute the NTK Gram matrix's lambda_0 when n <= max_n (0 = never)
    store_H_max_n: int = 1024   # also store H itself (n x n) when n <= this
    gram_max_n: int = 0         # at each evaluation, lambda_min of the finite-width H(W_k) when n <= this (0 = never)
    mismatch: bool = False      # at each evaluation, the subnetworks' outputs' spread around the full network's


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

    def flat(self) -> dict[str, object]:
        """{"section.key": value} for every key."""
        return flatten(self.to_dict())

    def freeze(self) -> Config:
        """This config, settled: setting a value raises from here on."""
        for section in dataclasses.fields(self):
            object.__setattr__(getattr(self, section.name), "_frozen", True)
        return self

    def replace(self, values: dict) -> Config:
        """A settled copy with {"section.key": value} changed (e.g. output.dir once rank 0 chose it)."""
        new = copy.deepcopy(self)
        for section in dataclasses.fields(new):
            object.__setattr__(getattr(new, section.name), "_frozen", False)
        for key, value in values.items():
            set_value(new, key, value)
        return new.freeze()

    def to_toml(self, resolved: Config | None = None, where: str = "") -> str:
        """This config as TOML. With `resolved` (this config settled for a run), a value that the
        run resolved to something else (an auto value: subnets = 0, keep = 0, plan = "auto") keeps
        its own value, so the file reproduces the run at any K, and says what it resolved to."""
        lines: list[str] = []
        theirs = resolved.to_dict() if resolved is not None else {}
        for section, values in self.to_dict().items():
            lines.append(f"\n[{section}]" if lines else f"[{section}]")
            for key, v in values.items():
                line = f"{key} = {_toml_value(v)}"
                other = theirs.get(section, {}).get(key, v)
                lines.append(line if other == v else f"{line}   # {where or 'resolved'}: {_toml_value(other)}")
        return "\n".join(lines)


def flatten(sections: dict) -> dict[str, object]:
    """{"section": {"key": value}} (a config's dict, or its JSON in a run file) as {"section.key": value}."""
    return {f"{s}.{k}": v for s, values in sections.items() for k, v in values.items()}


PRESETS = {
    # IST: a random balanced partition of the neurons, one part per subnetwork, tau local steps.
    "ist": {"masks.kind": "partition", "masks.subnets": 0, "train.local_steps": 5},
    "gd": {"masks.kind": "full", "masks.subnets": 1, "train.local_steps": 1},
    "dropout": {"masks.kind": "bernoulli", "masks.subnets": 1, "masks.keep": 0.5, "train.local_steps": 1},
    "multisample": {"masks.kind": "bernoulli", "masks.subnets": 4, "masks.keep": 0.5, "train.local_steps": 1},
}


# one rule per key (RULES names every key): the type of a key is the type of its default; a rule
# says which values of that type a key takes (constraints.py)
RULES: dict[str, Interval | Options | Anything] = {
    "data.source": ANY,                      # resolve.settle: "synthetic" or a data file's suffix
    "data.n": POSITIVE,
    "data.d": POSITIVE,
    "data.outputs": POSITIVE,
    "data.x_name": ANY,
    "data.y_name": ANY,
    "data.target": ANY,
    "data.normalize": Options(("none", "standardize", "unit")),
    "data.noise": Interval(0.0),
    "data.seed": SEED,
    "data.task": Options(("regression", "classification")),
    "data.test_source": ANY,
    "data.holdout": Interval(0.0, 0.9),
    "data.test_n": COUNT,
    "model.width": Interval(1, 2**31 - 1),  # neuron counts travel as C ints
    "model.init_scale": Interval(0.0, open_low=True),
    "model.dtype": Options(("float64", "float32")),
    "model.parametrization": Options(("ntk", "standard")),
    "model.init_from": ANY,                  # resolve.settle: absolute; parent.check_init: the run's W and a
    "masks.kind": Options(tuple(KINDS)),
    "masks.subnets": COUNT,                  # 0: the kind's own
    "masks.keep": Interval(0.0, 1.0),
    "masks.uncovered": Options(("keep", "zero")),
    "train.rounds": POSITIVE,
    "train.local_steps": POSITIVE,
    "train.lr": Interval(0.0, open_low=True),
    "train.seed": SEED,
    "train.batch_size": COUNT,               # 0: full batch
    "train.memory_limit_mb": COUNT,          # 0: what the node has
    "train.plan": Options(("auto", "rows", "outputs")),
    "train.lr_scaling": Options(("none", "keep")),
    "train.loss": Options(tuple(LOSSES)),
    "train.watchdog_seconds": Interval(1.0),
    "train.budget": Interval(0.0),             # 0: train.rounds decides
    "train.plateau_window": Interval(0, 10**6),  # 0: train all rounds
    "train.plateau_floor": Interval(0.0),
    "train.plateau_patience": POSITIVE,
    "output.dir": ANY,
    "output.log_every": COUNT,               # 0: about 20 lines a run
    "output.checkpoint_every": POSITIVE,
    "output.checkpoint_seconds": Interval(0.0),   # 0: by rounds only
    "output.eval_every": COUNT,              # 0: resolve.EVAL_SHARE of the training time
    "output.record_masks": ANY,
    "output.overwrite": ANY,
    "output.tensorboard": ANY,
    "theory.max_n": COUNT,
    "theory.store_H_max_n": COUNT,
    "theory.gram_max_n": COUNT,
    "theory.mismatch": ANY,
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


def set_value(cfg: Config, key: str, value: Any) -> None:
    """Set `section.key` on cfg after checking the name and type."""
    parts = key.split(".")
    if len(parts) != 2 or not hasattr(cfg, parts[0]) or not hasattr(getattr(cfg, parts[0]), parts[1]):
        known = list(cfg.flat())
        close = suggest_key(key, known)
        hint = f"did you mean {close!r}?" if close else f"known keys: {', '.join(known)}"
        raise UserError(f"unknown config key {key!r}; {hint}")
    section = getattr(cfg, parts[0])
    setattr(section, parts[1], _coerce(key, value, type(getattr(section, parts[1]))))


def build(preset: str | None = None, file: str | None = None, overrides: Sequence[str] = ()) -> Config:
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
                raise UserError(f"config file {file!r}{line_of(file, key)}: {e}") from None
            where[key] = f"config file {file!r}: "
    chosen = set(where)
    for key in apply_overrides(cfg, overrides):
        where.pop(key, None)
        chosen.add(key)
    check_ranges(cfg, where)
    _one_length(cfg, chosen)
    return cfg


def _one_length(cfg: Config, chosen: set) -> None:
    """train.budget decides train.rounds: setting both is refused."""
    if cfg.train.budget > 0 and "train.rounds" in chosen:
        raise UserError(f"train.rounds = {cfg.train.rounds} and train.budget = {cfg.train.budget:g} both say how long "
                        f"to train; set one of them (train.budget: full-gradient equivalents, for any scheme)")


# keys that change how a run goes, not what it computes or records (a sweep does not compare them)
HOW_KEYS = ("output.dir", "output.overwrite", "output.checkpoint_every", "output.checkpoint_seconds",
            "output.log_every", "output.tensorboard", "train.memory_limit_mb", "train.watchdog_seconds")
# a resumed run continues the stored config; these may change without changing its results
RESUME_KEYS = ("train.rounds", "output.checkpoint_every", "output.checkpoint_seconds", "output.log_every",
               "train.memory_limit_mb",
               "output.tensorboard", "output.eval_every", "train.watchdog_seconds", "train.budget")


def for_resume(stored: dict, overrides: Sequence[str] = (), given: dict | None = None, preset: str | None = None,
               file: str | None = None) -> Config:
    """The stored (settled) config of a run being resumed, with the resume keys the command line
    changes. The command line may be the run's own (a requeued job passes its options again): its
    preset, config file and `--set` build a config as given, which is compared with the run's as
    given (`given`; auto values stay auto); only RESUME_KEYS may differ. Without a preset or a
    config file, `--set` applies to the run's config as given."""
    first = from_dict(given or stored)
    if preset is not None or file is not None:
        now = build(preset, file, overrides)
    else:
        now = copy.deepcopy(first)
        apply_overrides(now, overrides)
        check_ranges(now)
    was, wants = first.flat(), now.flat()
    for key, value in wants.items():
        if key not in RESUME_KEYS + ("output.dir", "output.overwrite") and value != was[key]:
            raise UserError(f"{key} = {value!r} here, but the run being resumed has {key} = {was[key]!r}, and its "
                            f"results depend on it: give the options it was started with (only "
                            f"{', '.join(RESUME_KEYS)} may change with --resume)")
    cfg = from_dict(stored)
    changed = {key for key in RESUME_KEYS if wants[key] != was[key]}
    for key in changed:
        set_value(cfg, key, wants[key])
    check_ranges(cfg)
    _one_length(cfg, changed)
    return cfg


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> list[str]:
    """Applies `--set` texts in order; returns the keys they set."""
    keys = []
    for text in overrides:
        key, value = parse_assignment(text)
        if isinstance(value, (int, float)) and isinstance(cfg.flat().get(key), str):
            value = text.split("=", 1)[1].strip()  # --set output.dir=2024 means the folder "2024"
        set_value(cfg, key, value)
        keys.append(key)
    return keys


def check_ranges(cfg: Config, where: dict[str, str] | None = None) -> None:
    """`where`: a prefix for the message of a key, naming the file its value came from."""
    values = cfg.flat()
    for key, rule in RULES.items():
        if not rule.holds(values[key]):
            hint = f"; {HINTS[key]}" if key in HINTS else ""
            raise UserError(f"{(where or {}).get(key, '')}{rule.problem(key, values[key])}{hint}")


def step_size(cfg: Config) -> float:
    """The step the local steps take: train.lr, times masks.keep with train.lr_scaling = "keep"
    (Liao & Kyrillidis scale the step with keep: a keep sweep at lr = c keep is one key)."""
    return cfg.train.lr * (cfg.masks.keep if cfg.train.lr_scaling == "keep" else 1.0)


def ntk_lr(cfg: Config) -> float:
    """The step (step_size) in the NTK form's units, where lambda_0's rates are stated: a
    standard run's lr x m / c."""
    return step_size(cfg) * (1.0 if cfg.model.parametrization == "ntk" else cfg.model.width / cfg.data.outputs)


def compute_per_round(cfg: Config) -> float:
    """A round's work in full-gradient equivalents (one gradient of the whole network over all n
    samples = 1): p subnetworks x tau local steps x keep of the neurons x b / n of the samples.
    GD's round is 1, IST's (p keep = 1) tau, dropout's keep. train.budget divides by it."""
    fraction = cfg.train.batch_size / cfg.data.n if cfg.train.batch_size else 1.0
    return cfg.masks.subnets * cfg.train.local_steps * cfg.masks.keep * fraction


def from_dict(d: dict) -> Config:
    """A Config from its to_dict() form (e.g. the JSON stored in a run file)."""
    cfg = Config()
    for section, values in d.items():
        for key, value in values.items():
            set_value(cfg, f"{section}.{key}", value)
    return cfg
