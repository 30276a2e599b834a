"""The paper's instruments (plain numpy, no MPI): the infinite-width NTK Gram matrix of the data,
its smallest eigenvalue lambda_0, and the empirical linear rate of a loss curve.

    H_ij = <x_i, x_j> (pi - arccos(cos angle_ij)) / (2 pi)

is E_w[<x_i, x_j> 1{<w, x_i> > 0} 1{<w, x_j> > 0}] for w ~ N(0, I): the Gram matrix that the
network's gradients converge to as the width grows. Liao & Kyrillidis prove linear convergence
(up to a neighbourhood for masked training) at a rate set by lambda_0 = lambda_min(H) > 0.
"""
from __future__ import annotations

import math

import numpy as np


def gram_rows(X: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Rows lo:hi of H (float64), so that ranks can each compute a block."""
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1)
    inner = X[lo:hi] @ X.T
    denom = np.outer(norms[lo:hi], norms)
    cos = np.divide(inner, denom, out=np.zeros_like(inner), where=denom > 0)
    return inner * (math.pi - np.arccos(np.clip(cos, -1.0, 1.0))) / (2 * math.pi)


def smallest_eigenvalue(H: np.ndarray) -> float:
    """lambda_min of the symmetric H: only the lowest eigenvalue is computed."""
    from scipy.linalg import eigh  # lazy, for start-up time: scipy.linalg takes ~0.2 s to import
    return float(eigh(H, eigvals_only=True, subset_by_index=[0, 0], driver="evr")[0])


def largest_eigenvalue(H: np.ndarray) -> float:
    """lambda_max of the symmetric H (Lanczos; a full solve for small H)."""
    if len(H) <= 64:
        return float(np.linalg.eigvalsh(H)[-1])
    from scipy.sparse.linalg import eigsh  # lazy, for start-up time (as eigh)
    return float(eigsh(H, k=1, which="LA", return_eigenvectors=False)[0])


# the step-stability number above which the linearised local steps diverge
STABLE_STEP = 2.0


def step_number(lr_ntk: float, lambda_max: float, n: int, keep: float) -> float:
    """lr lambda_max / (n keep): the largest factor by which a local step of a subnetwork's
    surrogate multiplies a residual mode in the linearised (NTK) dynamics, minus one. The surrogate's
    Gram matrix is H / keep in expectation (1/keep^2 scale, keep of the neurons), mpisub's loss
    carries 1/(2n); above STABLE_STEP the steps grow that mode instead of shrinking it. lr in the
    NTK form's units (config.ntk_lr)."""
    return lr_ntk * lambda_max / (n * keep)


def running_plateau(losses: list[float], points: int, floor: float = 0.0, patience: int = 1) -> tuple[int | None,
                    float, int]:
    """The authors' stopping rule on the full loss at rounds 0, 1, 2, ...: at each round g, the mean
    of the last `points` losses (fewer at the start); stop at the round where the means have failed
    to improve on the best so far `patience` times in all (their Fig. 2b script: 1; their width
    script: 6), or once the best is below `floor`. Returns (that round or None, the best mean: their
    plateau estimate, the misses so far)."""
    losses = np.asarray(losses, dtype=np.float64)  # type: ignore[assignment]  # the same values, as an array
    sums = np.concatenate([[0.0], np.cumsum(losses)])
    best, misses = math.inf, 0
    for g in range(1, len(losses)):
        lo = max(0, g - points + 1)
        mean = (sums[g + 1] - sums[lo]) / (g + 1 - lo)
        if mean < best:
            best = mean
        else:
            misses += 1
        if misses >= patience or best < floor:
            return g, best, misses
    return None, best, misses


def linear_rate(loss: np.ndarray, rounds: np.ndarray | None = None) -> float | None:
    """The per-round factor r of a least-squares fit log loss_k = c + k log r over the rounds k
    (default 1, 2, ...; r < 1: linear convergence; None when fewer than 2 positive values)."""
    loss = np.asarray(loss, dtype=np.float64)
    rounds = np.arange(1, len(loss) + 1) if rounds is None else np.asarray(rounds, dtype=np.float64)
    keep = loss > 0
    if keep.sum() < 2:
        return None
    slope = np.polyfit(rounds[keep], np.log(loss[keep]), 1)[0]
    return float(math.exp(slope))


# the early phase of a curve: the evaluations whose loss is above this multiple of its plateau
ABOVE_PLATEAU = 10.0
# a run has plateaued when its loss falls by less than this fraction a round over its last quarter
PLATEAU_RATE = 0.01


def curve_summary(rounds: np.ndarray, loss: np.ndarray) -> dict:
    """What a loss curve says, without letting its plateau bias its speed:
    plateau        the geometric mean of the loss over the last quarter of the rounds;
    early_rate     the per-round factor of a fit of log loss over the early phase, the evaluations
                   before the loss first comes within ABOVE_PLATEAU x the plateau (None with fewer
                   than 2 there);
    early_until    the last round of the early phase;
    plateaued      whether the loss falls by less than PLATEAU_RATE a round over the last quarter
                   (a fit): a short run still falling 3% a round has not plateaued.
    Only positive losses count."""
    rounds, loss = np.asarray(rounds, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    good = loss > 0
    rounds, loss = rounds[good], loss[good]
    if len(loss) < 2:
        return {"plateau": None, "early_rate": None, "early_until": None, "plateaued": None}
    last = rounds >= rounds[-1] - (rounds[-1] - rounds[0]) / 4
    plateau = float(np.exp(np.mean(np.log(loss[last]))))
    near = np.flatnonzero(loss <= ABOVE_PLATEAU * plateau)
    early = slice(0, near[0] if len(near) else len(loss))
    early_rate = linear_rate(loss[early], rounds[early]) if early.stop >= 2 else None
    per_round = 1.0
    if last.sum() >= 2:
        per_round = math.exp(-np.polyfit(rounds[last], np.log(loss[last]), 1)[0])
    return {"plateau": plateau, "early_rate": early_rate,
            "early_until": int(rounds[early.stop - 1]) if early.stop >= 1 else None,
            "plateaued": bool(per_round < 1.0 + PLATEAU_RATE)}


def gd_reference(loss_init: float, lr: float, lambda0: float, n: int, steps_per_round: int,
                 rounds: np.ndarray) -> np.ndarray:
    """The slowest mode of linearised full gradient descent for mpisub's loss L = ||u - y||^2 / (2n):
    its residual shrinks by (1 - lr lambda_0 / n) per step, its loss by the square (lr in NTK
    units, config.ntk_lr). A reference line for plots: not Du et al.'s guarantee (1 - lr lambda_0 /
    (2n) per step, under their conditions), not a bound for masked training."""
    factor = max(0.0, 1.0 - lr * lambda0 / n)
    return loss_init * factor ** (2 * steps_per_round * np.asarray(rounds, dtype=np.float64))
