"""The instruments: the full network's evaluation (training and held-out loss, accuracies), the
lazy-regime diagnostics, and the data's NTK lambda_0 (docs/design.md, "Evaluation cadence").

Each rank evaluates its own rows; one Allreduce sums the ranks' parts of the outputs, with the
round's flags (FLAGS) and the diagnostics' sums riding along. The collectives are the `comm`
object's; this module knows no MPI.
"""
from __future__ import annotations

import math
import time
from itertools import repeat
from typing import TYPE_CHECKING

import numpy as np

from mpisub import config
from mpisub._util.errors import UserError
from mpisub.nn import kernels, masks, model, theory
from mpisub.nn.losses import LOSSES
from mpisub.train import init

if TYPE_CHECKING:  # types only: never imported at run time
    from collections.abc import Callable, Iterator
    from typing import Any

    from mpisub.config import Config
    from mpisub.io.data import Sets
    from mpisub.parallel.communicator import Communicator
    from mpisub.parallel.layout import Layout

# the numbers every round sums over the ranks, evaluated or not: the subnetworks' loss sum, any
# rank's stop request, rank 0's failed write, the ranks still writing a shard, rank 0's clock
# saying output.checkpoint_seconds have passed
FLAGS = 5
# the lazy-regime sums of an evaluation: ||W - W0||^2, ||W0||^2, flips (+ n^2 for H(W_k))
LAZY_SUMS = 3


def message_floats(n: int, c: int, n_test: int = 0, gram: bool = False) -> int:
    """float64 numbers in an evaluation's Allreduce: the outputs on the training and held-out
    data, the flags and the diagnostics' sums (a second Allreduce takes one maximum)."""
    return (n + n_test) * c + FLAGS + LAZY_SUMS + (n * n if gram else 0)


def rank_outputs(W_own: np.ndarray, a_own: np.ndarray, X: np.ndarray, scale: float, each: Callable[...,
                 Iterator[Any]] = map, parts: int = 1, pattern: np.ndarray | None = None) -> np.ndarray:
    """This rank's part of the network's outputs on X (n x c): its own block of neurons, in `parts`
    pieces mapped by `each` (e.g. over threads); the ranks' parts add up. With `pattern` (n x rows,
    bool), also the activation patterns of its rows."""
    k = len(W_own)
    cuts = [i * k // parts for i in range(parts + 1)]
    spans = list(zip(cuts, cuts[1:]))
    patterns = [np.empty((X.shape[0], e - b) if pattern is not None else (0, 0), dtype=np.bool_) for b, e in spans]
    pieces = list(each(kernels.output_and_pattern, [W_own[b:e] for b, e in spans], [a_own[b:e] for b, e in spans],
                       repeat(X), repeat(W_own.dtype.type(scale)), patterns))
    if pattern is not None:
        for (b, e), P in zip(spans, patterns):
            pattern[:, b:e] = P
    return sum(pieces, np.zeros((X.shape[0], a_own.shape[1]), dtype=W_own.dtype))  # in block order


def _accuracy(outputs: np.ndarray, Y: np.ndarray) -> float:
    return float(np.mean(np.argmax(outputs, axis=1) == np.argmax(Y, axis=1)))


class Evaluator:
    """The full network's scores at this rank's rows W_own, with the round's flags summed over the
    ranks in the same Allreduce: `evaluator(W_own, flags) -> (scores, flag sums)`."""

    def __init__(self, cfg: Config, layout: Layout, comm: Communicator, sets: Sets, a_own: np.ndarray,
                 each: Callable[..., Iterator[Any]] = map, parts: int = 1):
        self.cfg, self.layout = cfg, layout
        self.comm, self.sets, self.a_own, self.each, self.parts = comm, sets, a_own, each, parts
        self.m, self.code, self.scale = layout.width, LOSSES[cfg.train.loss].code, model.scale(cfg)
        self.classify = cfg.data.task == "classification"
        self.lazy = LazyRegime(cfg, sets.X, layout.lo, layout.hi, a_own)

    def _scores(self, outputs, Y) -> dict:
        nan = float("nan")
        if not len(Y):
            return {"loss": nan, "acc": nan}
        with np.errstate(over="ignore", invalid="ignore"):   # divergence is reported by the caller
            loss = kernels.residual(outputs.copy(), Y.astype(np.float64), self.code)
        return {"loss": loss, "acc": _accuracy(outputs, Y) if self.classify else nan}

    def __call__(self, W_own, flags, done: int = 0) -> tuple[dict, np.ndarray]:
        """`done`: the rounds done (theory.mismatch takes the masks of the round that trains next)."""
        X, Y, Xt, Yt = self.sets.X, self.sets.Y, self.sets.X_test, self.sets.Y_test
        pattern = np.empty((X.shape[0], len(W_own)), dtype=np.bool_)
        out = rank_outputs(W_own, self.a_own, X, self.scale, self.each, self.parts, pattern)
        out_t = rank_outputs(W_own, self.a_own, Xt, self.scale, self.each, self.parts) if len(Xt) else out[:0]
        subs = self._surrogates(W_own, done) if self.cfg.theory.mismatch else np.zeros(0)
        diag, dw_max = self.lazy.local(W_own, pattern)
        flags = np.asarray(flags, dtype=np.float64)
        buf = np.concatenate([out.astype(np.float64).ravel(), out_t.astype(np.float64).ravel(), subs.ravel(),
                              flags, diag])
        self.comm.sum(buf)
        f = buf[:out.size].reshape(Y.shape)
        train, test = self._scores(f, Y), self._scores(buf[out.size: out.size + out_t.size].reshape(Yt.shape), Yt)
        at = out.size + out_t.size
        sums = buf[at + subs.size:]
        scores = {"loss": train["loss"], "test_loss": test["loss"], "train_acc": train["acc"],
                  "test_acc": test["acc"], "mismatch": float("nan")}
        if subs.size:   # mean over subnetworks of ||f_l - f||^2 / 2n
            spread = buf[at:at + subs.size].reshape(subs.shape) - f
            scores["mismatch"] = float(np.mean(np.sum(spread ** 2, axis=(1, 2)))) / (2 * X.shape[0])
        scores.update(self.lazy.finish(sums[len(flags):], float(self.comm.maxima([dw_max])[0]), X.shape[0], self.m,
                                       self.comm.rank == 0))
        return scores, sums[:len(flags)]

    def _surrogates(self, W_own, done: int) -> np.ndarray:
        """This rank's part of every subnetwork's surrogate output f_l (p x n x c) at these weights,
        under the masks of round `done` (the round that trains from them)."""
        M = masks.RoundMasks.of(self.cfg, self.layout, done)
        X, c = self.sets.X, self.a_own.shape[1]
        part = model.scale(self.cfg, self.cfg.masks.keep)
        out = np.zeros((self.cfg.masks.subnets, X.shape[0], c))
        for l, rows in enumerate(M.owned_rows()):
            if len(rows):
                out[l] = kernels.partial_output(W_own[rows], self.a_own[rows], X, W_own.dtype.type(part))
        return out


class LazyRegime:
    """The lazy-regime diagnostics of an evaluation (Du et al. 2019, section 5; docs/design.md):
    how far the weights moved from W_init, the fraction of activation patterns 1{<w_r, x_i> > 0}
    that differ from W_init's, and (n <= theory.gram_max_n) lambda_min of the finite-width Gram
    matrix H(W)_ij = (1/m) <x_i, x_j> sum_r 1{<w_r, x_i> > 0} 1{<w_r, x_j> > 0}. Each rank measures
    its own rows: W_init's rows are drawn again from their streams, INIT_CHUNK rows at a time
    (keeping them, or drawing them at once, would cost a copy of the rank's W), its activation
    patterns are kept as bits (n x rows / 8 bytes)."""

    def __init__(self, cfg: Config, X: np.ndarray, lo: int, hi: int, a_own: np.ndarray):
        self.cfg, self.lo, self.hi = cfg, lo, hi
        pattern = np.empty((X.shape[0], hi - lo), dtype=np.bool_)
        self.w0_sq = 0.0
        for j, e, W0 in self._init_chunks():
            with np.errstate(all="ignore"):  # weights too large for the dtype are reported by check_start
                self.w0_sq += float(np.einsum("ij,ij->", W0, W0, dtype=np.float64))
                P = np.empty((X.shape[0], e - j), dtype=np.bool_)
                kernels.output_and_pattern(W0, a_own[j:e], X, W0.dtype.type(1.0), P)
            pattern[:, j:e] = P
        self.pattern0 = np.packbits(pattern, axis=1)
        self.gram = 0 < X.shape[0] <= cfg.theory.gram_max_n
        self.XX = (X.astype(np.float64) @ X.T.astype(np.float64)) if self.gram else None

    def _init_chunks(self):
        """(first, end, W_init's rows) of this rank's rows, INIT_CHUNK (a multiple of 8) at a time."""
        for j in range(0, self.hi - self.lo, model.INIT_CHUNK):
            e = min(j + model.INIT_CHUNK, self.hi - self.lo)
            yield j, e, init.initial_rows(self.cfg, self.lo + j, self.lo + e)

    def local(self, W_own: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, float]:
        """This rank's sums (||W - W0||^2, ||W0||^2, flips, and the n x n sum over its rows for H)
        and its largest ||w_r - w_r(0)||, from its rows and their activation patterns `active`."""
        flips: Any       # a numpy integer once counted
        moved, flips, dw_max = 0.0, 0, 0.0
        for j, e, W0 in self._init_chunks():
            with np.errstate(all="ignore"):  # non-finite weights are reported as divergence
                diff = W_own[j:e].astype(np.float64) - W0
                rows = np.einsum("ij,ij->i", diff, diff)
            moved += float(np.sum(rows))
            dw_max = np.maximum(dw_max, np.sqrt(rows.max(initial=0.0)))   # NaN stays NaN
            was = np.unpackbits(self.pattern0[:, j // 8:], axis=1, count=e - j).astype(bool)
            flips += np.count_nonzero(was != active[:, j:e])
        sums: Any = [moved, self.w0_sq, float(flips)]
        if self.gram:
            D = active.astype(np.float64)
            sums = np.concatenate([sums, (D @ D.T).ravel()])
        return np.asarray(sums, dtype=np.float64), float(dw_max)

    def finish(self, sums: np.ndarray, dw_max: float, n: int, m: int, root: bool) -> dict:
        """The diagnostics from the ranks' summed numbers (lambda_min on rank 0, which records it)."""
        lam = float("nan")
        if self.gram and root:
            lam = theory.smallest_eigenvalue(self.XX * sums[3:].reshape(n, n) / m)
        return {"dw_max": dw_max, "dw_rel": float(np.sqrt(sums[0] / sums[1])) if sums[1] > 0 else float("nan"),
                "flips": sums[2] / (n * m), "lambda_min": lam}


def ntk_lambda0(X: np.ndarray, comm: Communicator, store_H: bool) -> tuple[float | None, np.ndarray | None,
                float | None]:
    """lambda_0 of the data's NTK Gram matrix, on rank 0 (None elsewhere), H when asked for, and
    lambda_max. The n^2 d entries are computed in row blocks over the ranks; the eigenvalues on
    rank 0."""
    n = X.shape[0]
    bounds = [k * n // comm.size for k in range(comm.size + 1)]
    mine = theory.gram_rows(X, bounds[comm.rank], bounds[comm.rank + 1])
    H = np.empty((n, n)) if comm.rank == 0 else None
    comm.gather_rows(mine, [hi - lo for lo, hi in zip(bounds, bounds[1:])], H)
    lambda0 = theory.smallest_eigenvalue(H) if H is not None else None          # rank 0
    lambda_max = theory.largest_eigenvalue(H) if H is not None else None
    comm.barrier()  # the others sleep while rank 0 runs the eigensolver
    return lambda0, (H if store_H else None), lambda_max


def lambda0_of(cfg: Config, comm: Communicator, X: np.ndarray, say: Callable[[str], None]) -> tuple[float | None,
               np.ndarray | None, float | None]:
    """ntk_lambda0, with what it does told to the user (`say`: rank 0's printer), and the local
    steps' step-stability number (theory.step_number), with a warning above theory.STABLE_STEP."""
    n, t = X.shape[0], time.perf_counter()
    if n > 2000:
        say(f"computing the NTK Gram matrix of the data and its lambda_0 (n = {n}; a few seconds; "
            f"theory.max_n = 0 skips it) ...")
    lambda0, H, lambda_max = ntk_lambda0(X, comm, n <= cfg.theory.store_H_max_n)
    if comm.rank == 0 and lambda_max is not None:
        step = theory.step_number(config.ntk_lr(cfg), lambda_max, n, cfg.masks.keep)
        say(f"NTK Gram matrix of the data: lambda_0 = {lambda0:.4e}, lambda_max = {lambda_max:.4e} (n = {n}, "
            f"{time.perf_counter() - t:.2f} s); step number lr lambda_max / (n keep) = {step:.3g}")
        if step > theory.STABLE_STEP:
            say(f"WARNING: the step number {step:.3g} is above {theory.STABLE_STEP:g}: in the linearised "
                f"dynamics a local step grows the top residual mode instead of shrinking it; expect "
                f"oscillation or divergence unless train.lr is lowered (below "
                f"{cfg.train.lr * theory.STABLE_STEP / step:.3g})")
    return lambda0, H, lambda_max


def check_start(loss: float, sets: Sets, cfg: Config) -> None:
    """A loss that is not finite before any step is the data or the initialisation, not the lr."""
    if math.isfinite(loss):
        return
    with np.errstate(all="ignore"):
        big_x, big_y = float(np.max(np.abs(sets.X))), float(np.max(np.abs(sets.Y)))
    raise UserError(f"the loss is {loss} at the initial weights, before any training step: the data or the "
                    f"initial weights are too large for model.dtype = {cfg.model.dtype!r} (largest |x| = "
                    f"{big_x:.3g}, |y| = {big_y:.3g}, model.init_scale = {cfg.model.init_scale:g}); rescale the "
                    f"data (data.normalize = 'unit' or 'standardize') or lower model.init_scale"
                    + (", or use float64" if cfg.model.dtype != "float64" else ""))
