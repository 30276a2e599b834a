"""The network (docs/design.md, section 2), in one place, like nanoGPT's model.py:

    f(W, x) = scale sum_r a_r relu(<w_r, x>),   scale = 1/sqrt(m)   (the NTK form, the paper's)

or, with model.parametrization = "standard", scale = 1/sqrt(c) and w_r ~ N(0, kappa^2 I / m):
the authors' code's network, with train.lr in its units. The two map exactly: a standard run is
the ntk run with init_scale kappa / sqrt(c) and lr x m / c, its W that run's x sqrt(c / m).
W (m x d) is trained; a (m x c, entries +-1) is fixed. Init: w_r ~ N(0, kappa^2 I) and a_r
uniform in {+1, -1}, both drawn in chunks of INIT_CHUNK neurons from streams keyed by
(train.seed, chunk), so a rank draws only its own rows and W_init is the same for any number of
ranks (or, with model.init_from, a finished run's W and a: train/init.py reads them). A subnetwork's surrogate f_l has
scale 1/(keep sqrt(m)) over its active neurons.
Plain numpy (no MPI, no numba, no files): the kernels
compute the same f fast (kernels.py), `forward` is its plain statement for readers of a run file.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from mpisub.nn.masks import INIT, stream

if TYPE_CHECKING:  # types only: never imported at run time
    from mpisub.config import Config

# W and a are drawn in chunks of this many neurons, each from its own stream
INIT_CHUNK = 1024


def _chunk(cfg, c: int, what: int) -> np.random.Generator:
    return stream(cfg.train.seed, INIT, c, what)


def init_rows(cfg: Config, lo: int, hi: int) -> np.ndarray:
    """Rows lo:hi of W_init as drawn: w_r ~ N(0, kappa^2 I), chunk by chunk (model.init_from's
    weights are the run's start instead: train/init.py)."""
    m, d = cfg.model.width, cfg.data.d
    W = np.empty((hi - lo, d), dtype=cfg.model.dtype)
    for c in range(lo // INIT_CHUNK, (hi - 1) // INIT_CHUNK + 1 if hi > lo else 0):
        first, last = c * INIT_CHUNK, min((c + 1) * INIT_CHUNK, m)
        block = _chunk(cfg, c, 0).standard_normal((last - first, d))
        b, e = max(first, lo), min(last, hi)
        with np.errstate(over="ignore"):  # a huge init_scale in float32: reported by train.check_start
            W[b - lo:e - lo] = init_std(cfg) * block[b - first:e - first]
    return W


def output_weights(cfg: Config) -> np.ndarray:
    """a (m x c): entries uniform in {+1, -1}, fixed; as int8 (m c bytes: every rank keeps all of
    its signs, drawn once, and takes the rows it uses in the model's dtype)."""
    m, c = cfg.model.width, cfg.data.outputs
    chunks = [(2 * _chunk(cfg, k, 1).integers(0, 2, size=(min(INIT_CHUNK, m - k * INIT_CHUNK), c)) - 1).astype(np.int8)
              for k in range(-(-m // INIT_CHUNK))]
    return np.concatenate(chunks)


def init_std(cfg: Config) -> float:
    """w_r's standard deviation: kappa (ntk), kappa / sqrt(m) (standard)."""
    return cfg.model.init_scale / (1.0 if cfg.model.parametrization == "ntk" else math.sqrt(cfg.model.width))


def scale(cfg: Config, keep: float = 1.0) -> float:
    """The output scale: 1/sqrt(m) (ntk; 1/sqrt(c) standard) for the network, 1/keep times it for a
    subnetwork's surrogate f_l."""
    base = cfg.model.width if cfg.model.parametrization == "ntk" else cfg.data.outputs
    return 1.0 / (keep * math.sqrt(base))


def forward(W: np.ndarray, a: np.ndarray, X: np.ndarray, scale: float, block: int = 4096) -> np.ndarray:
    """f(W, X) = scale relu(X W^T) a (n x c) of the whole network, in float64, a block of neurons at a time."""
    out = np.zeros((X.shape[0], a.shape[1]))
    for lo in range(0, len(W), block):
        out += np.maximum(X @ W[lo:lo + block].T.astype(np.float64), 0.0) @ a[lo:lo + block]
    return out * scale
