"""The round loop: docs/design.md's algorithm (section 2), step for step.

    for round k:
        M_k = masks of this round (p x m), the same on every rank          (masks.RoundMasks)
        for each subnet l:                                                 (1. local steps)
            W_l = W_k[active rows of l];  tau gradient steps on L_l;  W_l -> W^l_{k,tau}
        w_{k+1,r} = mean of w^l_{k,tau,r} over the subnets l holding r,   (2. aggregate)
            in subnet order; a neuron held by none keeps w_{k,r}
        record the subnetworks' losses (free: from their last local step); every eval_every rounds,
        evaluate the full network's loss L(W_{k+1})                        (3. record)

Steps 1 and 2 are the plan's (plans.py: which rank steps which rows, and how they meet); rank k
owns the neurons layout.lo:layout.hi for the whole run (its rows of W live nowhere else).
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from mpisub import config
from mpisub._util.errors import UserError
from mpisub.nn import masks
from mpisub.nn.theory import running_plateau
from mpisub.parallel.layout import Layout
from mpisub.parallel.plans import PLANS
from mpisub.train import init
from mpisub.train.checkpoints import Checkpoints
from mpisub.train.due import Due
from mpisub.train.evaluate import Evaluator, check_start, lambda0_of

if TYPE_CHECKING:  # types only: never imported at run time
    from collections.abc import Callable, Iterator
    from typing import Any

    from mpisub.config import Config
    from mpisub.io.data import Sets
    from mpisub.io.loggers import Loggers
    from mpisub.nn.masks import RoundMasks
    from mpisub.parallel.communicator import Communicator
    from mpisub.parallel.plans import RoundStats

# a loss this many times the initial one means the steps are too large: stop rather than burn the
# allocation on overflowing weights
DIVERGED = 1e3


@dataclass
class Start:
    """A checkpoint to continue from, as a rank uses it: rounds done, the loss at W_init, this
    rank's rows of W, and the histories (rank 0 rebuilds the run file's rows from them)."""
    round: int
    loss_init: float
    W: np.ndarray
    metrics: dict
    evals: dict
    shards: list = field(default_factory=list)   # the checkpoint's shards (none in format 4)


def run(cfg: Config, comm: Communicator, sets: Sets, log: Loggers, start: Start | None = None,
        stop_requested: Callable[[], bool] = lambda: False, workers: int = 1,
        say: Callable[[str], None] = print) -> dict:
    """Train with a settled config on `sets` (data.Sets: X, Y and held-out data). Every rank calls
    this; `log` (loggers.Loggers) holds rank 0's run file and TensorBoard, nothing elsewhere.
    `stop_requested`: polled once a round; when it is true on any rank, every rank stops after the
    round together. `workers`: threads that train this rank's subnetworks side by side. `say`:
    rank 0's printer. Returns the final weights (this rank's rows) and the histories."""
    layout = Layout.of(cfg, comm)
    a = init.output_weights(cfg)
    W = init.initial_rows(cfg, layout.lo, layout.hi)       # this rank's rows of W_init: all it ever holds
    checkpoints = Checkpoints(cfg, comm, layout, log)
    _log_start(cfg, comm, sets, log, a, W, checkpoints, say)
    with side_by_side(workers) as each:
        evaluate = Evaluator(cfg, layout, comm, sets, a[layout.lo:layout.hi].astype(W.dtype), each, workers)
        plan = PLANS[cfg.train.plan](cfg, layout, comm, sets, a, each)
        rounds = Recorder(cfg, comm, log, checkpoints, stop_requested, say)
        if start is not None:
            W = rounds.restore(start, layout)
        first = rounds.begin(W, evaluate, start)
        for k in range(first, cfg.train.rounds):
            t_start = time.perf_counter()
            M = masks.RoundMasks.of(cfg, layout, k)          # M_k: active neurons per subnetwork, N_r of the owned
            # 1. tau local steps of every subnetwork from W_k, on its active rows only, and
            # 2. the mean per neuron over the subnetworks that hold it, on its owner (a neuron none
            #    holds keeps its row, or is zeroed, as the authors' code does: masks.uncovered)
            stats = plan.round(W, M, lambda l, k=k: masks.minibatches(  # type: ignore[misc]  # one of PLANS
                cfg.data.n, cfg.train.batch_size, cfg.train.local_steps, cfg.train.seed, k, l))
            if cfg.masks.uncovered == "zero":
                W[M.counts == 0] = 0.0
            # 3. the subnetworks' losses, and every eval_every rounds the full network's
            if rounds.end(k, W, stats, evaluate, t_start, M):
                break                                   # at its plateau (train.plateau_window)
    if comm.from_root(log.failed):  # the last round's writes: no Allreduce follows to carry the flag
        raise log.failure(cfg.train.rounds, cfg.output.dir)
    return rounds.result(W)


def _log_start(cfg, comm, sets, log, a, W, checkpoints, say) -> None:
    """The run file's start: the data, a, W_init (every rank writes its rows' shard), lambda_0."""
    source = "" if cfg.data.source == "synthetic" else os.path.abspath(cfg.data.source)
    log.log_start({"X": sets.X, "Y": sets.Y, "a": a, "shape": (cfg.model.width, cfg.data.d), "dtype": W.dtype,
                   "source": source, "inputs": sets.inputs})
    checkpoints.write_init(W)
    if sets.X.shape[0] <= cfg.theory.max_n:
        lambda0, H, lambda_max = lambda0_of(cfg, comm, sets.X, say)
        log.log_theory(lambda0, H, lambda_max)


class Recorder:
    """What the loop records: each round's row and evaluation, kept (the checkpoint's histories) and
    logged; a checkpoint and a progress line when due; the stop and divergence checks."""

    def __init__(self, cfg: Config, comm: Communicator, log: Loggers, checkpoints: Checkpoints,
                 stop_requested: Callable[[], bool], say: Callable[[str], None]):
        self.cfg, self.comm, self.log, self.stop_requested, self.say = cfg, comm, log, stop_requested, say
        self.checkpoints = checkpoints
        self.due = Due(cfg)
        self.metrics: dict[str, list] = {}
        self.evals: dict[str, list] = {}
        self.loss_init: float | None = None
        self.plateau: list[float] | None = None    # train.plateau_window: [the best running mean so far, the misses]

    def restore(self, start: Start, layout: Layout) -> np.ndarray:
        """A checkpoint's state: W and round are all there is (masks and minibatches are functions
        of (seed, round, subnet), so the rounds ahead are those an unbroken run takes). Rank 0
        rebuilds the run file's rows (the checkpoint written before round 1 has none) and points
        its W at the checkpoint's shards (a checkpoint without shards, format 4, is written anew)."""
        self.metrics = {name: list(values) for name, values in start.metrics.items()}
        self.evals = {name: list(values) for name, values in start.evals.items()}
        self.loss_init = start.loss_init
        if self.comm.rank == 0:
            for i in range(start.round):
                M = masks.RoundMasks.of(self.cfg, layout, i).matrix() if self.cfg.output.record_masks else None
                self.log.log_round({name: values[i] for name, values in self.metrics.items()}, M)
            for i in range(len(self.evals.get("round", []))):
                self.log.log_eval({name: values[i] for name, values in self.evals.items()})
        W = start.W.astype(self.cfg.model.dtype)
        if start.shards:
            self.log.log_weights(start.shards, start.round)
        else:
            self.checkpoints.start(W, self.state(start.round), wait=True)
        self.log.last_checkpoint = start.round
        return W

    def begin(self, W: np.ndarray, evaluate: Evaluator, start: Start | None) -> int:
        """The loss at the starting weights; its Allreduce also carries any rank's stop request (a
        signal during start-up) and a failed write on rank 0, so every rank acts on them together.
        Returns the first round to train."""
        first = start.round if start else 0
        scores, (stops, failed) = evaluate(W, (float(self.stop_requested()), self.log.failed), first)
        if start is None:
            self.loss_init = scores["loss"]
            check_start(scores["loss"], evaluate.sets, self.cfg)
            self._keep(self.evals, {"round": 0, **scores})
            self.log.log_eval({"round": 0, **scores})
        if failed:
            raise self.log.failure(first, self.cfg.output.dir)
        if stops:
            raise Interrupted(first, checkpointed=start is not None)
        how = "(initial weights)" if start is None else "(resumed from the checkpoint)"
        self.say(f"round {first:>{self.due.digits}}/{self.cfg.train.rounds}  loss {scores['loss']:.4e}  {how}")
        self.comm.take_counters()
        self.log.log_loss_init(self.loss_init)  # type: ignore[arg-type]  # set above
        if start is None:  # --resume works from the first second on
            self.checkpoints.start(W, self.state(0), wait=True)
        self.log.publish()
        self.due.begin(first)
        self.t_mark = time.perf_counter()   # seconds_wall: from one round's row to the next, store writes included
        return first

    def end(self, k: int, W: np.ndarray, stats: RoundStats, evaluate: Evaluator, t_start: float,
            M: RoundMasks) -> bool:
        """After round k's steps 1 and 2: its losses, any rank's stop request and a failed write in
        one Allreduce (with the full network's outputs when this round is evaluated), then its row.
        True when the run ends here, at its plateau (every rank sees the same losses)."""
        t, comm_before = time.perf_counter(), self.comm.seconds
        flags = (stats.sub_loss_sum, float(self.stop_requested()), self.log.failed, self.checkpoints.busy,
                 self.due.clock(self.comm.rank))
        scores = None
        if self.due.evaluate(k + 1):
            scores, (sub_loss_sum, stops, failed, writing, timed) = evaluate(W, flags, k + 1)
        else:
            sub_loss_sum, stops, failed, writing, timed = self.comm.sums(flags)
        seconds_loss = time.perf_counter() - t - (self.comm.seconds - comm_before)   # its collectives count as comm
        seconds_comm, bytes_comm, bytes_recv = self.comm.take_counters()
        if failed:
            raise self.log.failure(k, self.cfg.output.dir)
        self.checkpoints.poll(writing)
        p = self.cfg.masks.subnets
        diverged = functools.partial(check_diverged, scores and scores["loss"], sub_loss_sum / p,  # type: ignore[arg-type]
                                     self.loss_init, k + 1, self.cfg, evaluate.sets.X)  # type: ignore[arg-type]
        try:
            diverged(self.log.last_checkpoint)
        except UserError:
            self.checkpoints.finish()   # the checkpoint in flight is of a round within the bounds: it lands first
            diverged(self.log.last_checkpoint)
        now = time.perf_counter()
        if scores is not None:
            self._keep(self.evals, {"round": k + 1, **scores})
            self.log.log_eval({"round": k + 1, **scores})
        row = {"round": k + 1, "sub_loss": sub_loss_sum / p,
               "seconds_compute": now - t_start - seconds_comm, "seconds_comm": seconds_comm,
               "seconds_wall": now - self.t_mark, "bytes_comm": bytes_comm, "seconds_local": stats.seconds_local,
               "seconds_loss": seconds_loss, "bytes_recv": bytes_recv,
               "compute": (k + 1) * config.compute_per_round(self.cfg)}
        self.t_mark = now
        self._keep(self.metrics, row)
        plateau = scores is not None and self.at_plateau()
        self._due(row, scores, M, W, stops > 0, plateau, timed > 0)
        return plateau

    def at_plateau(self) -> bool:
        """train.plateau_window: the authors' rule (theory.running_plateau) at this round, the loss
        evaluated every round; the best running mean and the misses so far are kept (after a
        resume, found again from the history)."""
        tr, losses = self.cfg.train, self.evals["loss"]
        if not tr.plateau_window:
            return False
        if self.plateau is None:
            history = running_plateau(losses[:-1], tr.plateau_window, tr.plateau_floor, tr.plateau_patience)
            self.plateau = list(history[1:])
        mean = float(np.mean(losses[max(0, len(losses) - tr.plateau_window):]))
        if mean < self.plateau[0]:
            self.plateau[0] = mean
        else:
            self.plateau[1] += 1
        return self.plateau[1] >= tr.plateau_patience or self.plateau[0] < tr.plateau_floor

    def _due(self, row: dict, scores, M, W, stop: bool, last: bool = False, timed: bool = False) -> None:
        """The round's row into the logs; a checkpoint and a progress line when due (both at the
        `last` round of a run that stops at its plateau); at a stop, Interrupted once its
        checkpoint is known to be on disk. A checkpoint trains on while its shards are written,
        but not the run's last one or a stop's."""
        done, due = row["round"], self.due
        self.log.log_round(row, M.matrix() if self.cfg.output.record_masks else None)
        if due.checkpoint(done, stop or last, timed):
            self.checkpoints.start(W, self.state(done), wait=stop or last or done == due.rounds)
            due.checkpointed()
        if due.log(done, stop or last):
            self.say(due.line(row, scores) + (f"  (at its plateau: train.plateau_window = "
                                              f"{self.cfg.train.plateau_window})" if last else ""))
        if stop and done < due.rounds:
            if self.comm.from_root(self.log.failed):  # the stop's checkpoint must have reached the disk
                raise self.log.failure(done, self.cfg.output.dir)
            raise Interrupted(done)

    def state(self, rounds_done: int) -> dict:
        """A checkpoint's state after `rounds_done` rounds: copies of the histories as they are now."""
        return {"round": rounds_done, "loss_init": self.loss_init,
                "metrics": {k: list(v) for k, v in self.metrics.items()},
                "evals": {k: list(v) for k, v in self.evals.items()}}

    @staticmethod
    def _keep(history: dict, row: dict) -> None:
        for name, value in row.items():
            history.setdefault(name, []).append(value)

    def result(self, W: np.ndarray) -> dict:
        return {"W": W, "loss_init": self.loss_init, "metrics": {k: np.array(v) for k, v in self.metrics.items()},
                "eval": {k: np.array(v) for k, v in self.evals.items()}}


def check_diverged(loss: float | None, sub_loss: float, loss_init: float, done: int, cfg: Config, X: np.ndarray,
                   last_checkpoint: int | None) -> None:
    """The steps are too large when the full network's loss (at an evaluation) passes DIVERGED x its
    initial loss, or the subnetworks' loss (every round) DIVERGED x that / keep (a subnetwork's
    surrogate has 1/keep times the variance at the start), or either is not finite. Every round is
    checked before its checkpoint is written, so every checkpoint on disk has only losses within
    these bounds: the last one is named as the one kept."""
    bounds = (("the loss", loss, DIVERGED * loss_init),
              ("the subnetworks' loss", sub_loss, DIVERGED * loss_init / cfg.masks.keep))
    bad = [(what, value) for what, value, bound in bounds
           if value is not None and not (math.isfinite(value) and value <= bound)]
    if not bad:
        return
    what, value = bad[0]
    big_x = float(np.max(np.linalg.norm(X, axis=1)))
    large_x = (f"; the inputs are large (largest ||x|| = {big_x:.3g}), which shrinks the stable step: "
               f"consider data.normalize = 'unit'") if big_x > 10 else ""
    scaled = f", a step of {config.step_size(cfg):g} with train.lr_scaling = 'keep'" \
        if cfg.train.lr_scaling == "keep" else ""
    kept = "" if last_checkpoint is None else \
        f" (the last checkpoint, round {last_checkpoint}, whose losses were all finite and within the bounds, is kept)"
    bound = f"{DIVERGED:g}x the initial loss" + (" / keep" if what != "the loss" else "")
    raise UserError(f"{what} became {value:.4g} in round {done} (initial loss {loss_init:.4g}; bound {bound}): "
                    f"training diverged; lower train.lr (now {cfg.train.lr:g}{scaled}): a subnetwork's step is "
                    f"about 1/keep times stronger, so small masks.keep needs a small lr{large_x}{kept}")


class Interrupted(Exception):
    """A rank was asked to stop (SIGTERM/SIGUSR1): the round finished and a checkpoint was written,
    or (checkpointed False) the stop came before the run's first checkpoint."""

    def __init__(self, rounds_done: int, checkpointed: bool = True):
        super().__init__(f"stopped after round {rounds_done}" if checkpointed else
                         "stopped before training; nothing to resume, start again")
        self.rounds_done, self.checkpointed = rounds_done, checkpointed


@contextlib.contextmanager
def side_by_side(workers: int) -> Iterator[Callable[..., Iterator[Any]]]:
    """A map that runs a rank's subnetworks on `workers` threads (the kernels release the GIL), or
    the plain map for one."""
    if workers == 1:
        yield map
        return
    with ThreadPoolExecutor(workers) as pool:
        yield pool.map
