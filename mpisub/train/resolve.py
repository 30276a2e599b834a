"""Settling a run's config, once: the config as given, the number of ranks K and the data's shape
go in; the frozen config the run stores and why its plan is what it is come out (`settle`).

Auto values are filled here (masks.subnets = 0, masks.keep = 0, output.eval_every = 0,
train.plan = "auto"; train.rounds from train.budget; model.init_from becomes its run file's
absolute path) and the keys are checked against each other and against the data.
"""
import copy
import math
import os

from mpisub._util.errors import UserError
from mpisub.config import Config, compute_per_round
from mpisub.io.run_folder import FILENAME
from mpisub.nn.losses import LOSSES
from mpisub.nn.masks import KINDS
from mpisub.parallel import resources

DATA_SUFFIXES = (".h5", ".hdf5", ".npz", ".csv")
# the share of the training time that evaluating the full network may take by default, and how
# much more an evaluation costs than its products' flops say (it also redraws W_init's rows for
# the diagnostics, reduces over the ranks and runs Python; measured on the benchmark's small cases)
EVAL_SHARE = 0.05
EVAL_OVERHEAD = 3.0


def settle(given: Config, ranks: int, shape: tuple | None = None, resuming: bool = False,
           node: "resources.Node | None" = None) -> tuple[Config, str]:
    """(the run's config, why its plan) for `ranks` ranks and data of `shape` = (n, d, c) (None: the
    data section's own, e.g. before a file is read); `node`: a rank's memory and cores, which
    train.plan = "auto" weighs. Raises a UserError naming the keys that do not fit together."""
    cfg = copy.deepcopy(given)
    _check_data_keys(cfg)
    if cfg.model.init_from:   # the run file, by its absolute path: the run then reads the same file from anywhere
        path = cfg.model.init_from
        cfg.model.init_from = os.path.abspath(path if path.lower().endswith((".h5", ".hdf5")) else
                                              os.path.join(path, FILENAME))
    _fill_masks(cfg, ranks, resuming)
    if shape is not None:
        _fit_data(cfg, *shape)
    if cfg.train.budget > 0:
        cfg.train.rounds = max(1, math.ceil(cfg.train.budget / compute_per_round(cfg) - 1e-9))
    if cfg.train.plateau_window:   # the authors' rule reads the loss every round
        if cfg.output.eval_every not in (0, 1):
            raise UserError(f"train.plateau_window = {cfg.train.plateau_window} needs the full loss every round, "
                            f"but output.eval_every = {cfg.output.eval_every}; leave it at 0 or set 1")
        cfg.output.eval_every = 1
    if shape is not None and cfg.output.eval_every == 0:
        cfg.output.eval_every = auto_eval_every(cfg)
    cfg.train.plan, why = resources.choose_plan(cfg, ranks, node, resuming)
    return cfg.freeze(), why


def _check_data_keys(cfg: Config) -> None:
    d = cfg.data
    if d.source != "synthetic" and not d.source.lower().endswith(DATA_SUFFIXES):
        raise UserError(f"data.source = {d.source!r} is neither 'synthetic' nor a data file; give a path "
                        f"ending in {', '.join(DATA_SUFFIXES)}")
    if d.source == "synthetic" and (d.holdout or d.test_source):
        raise UserError("data.holdout and data.test_source are for a data file; the synthetic source draws its "
                        "test points from the same teacher: set data.test_n")
    if d.source != "synthetic" and d.test_n:
        raise UserError("data.test_n is for the synthetic source; for a data file set data.holdout (a fraction) "
                        "or data.test_source (a second file)")
    if d.holdout and d.test_source:
        raise UserError("data.holdout and data.test_source both give a test set; set one of them")
    if d.test_source and not d.test_source.lower().endswith(DATA_SUFFIXES):
        raise UserError(f"data.test_source = {d.test_source!r} is not a data file; give a path ending in "
                        f"{', '.join(DATA_SUFFIXES)}")
    if LOSSES[cfg.train.loss].classification and d.task != "classification":
        raise UserError(f"train.loss = {cfg.train.loss!r} needs class targets: set data.task = 'classification' "
                        f"(or use train.loss = 'squared')")


def _fill_masks(cfg: Config, ranks: int, resuming: bool) -> None:
    m, kind = cfg.masks, KINDS[cfg.masks.kind]
    if m.subnets == 0:
        m.subnets = kind.auto_subnets(ranks)
    p = m.subnets
    if kind.problem(p):
        raise UserError(kind.problem(p))
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
    own = kind.keep(p)
    if m.keep == 0.0:
        m.keep = own
    elif not kind.keep_settable and not math.isclose(m.keep, own):
        raise UserError(f"masks.keep = {m.keep} does not apply to masks.kind = {m.kind!r} (its keep is "
                        f"{own:g}); remove masks.keep or use masks.kind = 'bernoulli'")


def _fit_data(cfg: Config, n: int, d: int, outputs: int) -> None:
    """The data's shape in the config (a data file decides n, d and outputs, and the stored config
    then says what was trained), checked against the keys that depend on it."""
    cfg.data.n, cfg.data.d, cfg.data.outputs = n, d, outputs
    if cfg.train.batch_size > n:
        raise UserError(f"train.batch_size = {cfg.train.batch_size} exceeds the {n} samples of the data; "
                        f"use at most {n}, or 0 for full batch")


# the fewest evaluations of the full network a run gets by default: a curve, not two points
MIN_EVALS = 20


def auto_eval_every(cfg: Config) -> int:
    """Rounds between evaluations: at least MIN_EVALS a run, and as many more as cost about
    EVAL_SHARE of the training (docs/design.md, "Evaluation cadence"). An evaluation is two
    products of the whole network over the n samples (its outputs, and the activation patterns for
    the lazy-regime diagnostics), 4 n d m flops; a round is p subnetworks x tau steps x two products
    of b x d x (keep m), 4 p keep tau b d m flops (b = n at full batch). So evaluating every
    ceil(EVAL_OVERHEAD n / (EVAL_SHARE p keep tau b)) rounds costs at most EVAL_SHARE."""
    return min(cost_eval_every(cfg), max(1, cfg.train.rounds // MIN_EVALS))


def cost_eval_every(cfg: Config) -> int:
    """The 5% rule alone: what a run long enough for MIN_EVALS evaluations at it gets (the
    benchmark measures that cadence's share; a shorter run evaluates more often and pays more)."""
    b = cfg.train.batch_size or cfg.data.n
    per_round = cfg.masks.subnets * cfg.masks.keep * cfg.train.local_steps * b
    return max(1, math.ceil(EVAL_OVERHEAD * cfg.data.n / (EVAL_SHARE * per_round) - 1e-9))
