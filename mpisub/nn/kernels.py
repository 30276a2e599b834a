"""The numba-compiled hot path: a subnetwork's local gradient steps and the network's forward pass.

A subnetwork is given as its compact active rows only (W_l: k x d, a_l: k x c), so the cost of a
local step scales with keep. A step is its two BLAS products, Z = X W_l^T and G = D^T X, and one
pass over Z between them, a sample at a time while its row is in cache: the output
f_i = scale relu(z_i) a_l, the residual, and the row of D = [Z > 0] * (R a_l^T), written over z_i.
One read and one write of the n x k activations is all a step adds to its products
(docs/design.md, section 8). `scale` is the network's output scale: 1/sqrt(m) for the full network,
1/(keep sqrt(m)) for a subnetwork's surrogate f_l.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from mpisub.nn.losses import LOSSES

if TYPE_CHECKING:  # types only: never imported at run time

    from numpy.typing import DTypeLike

# the gradient G = D^T X of a subnetwork with many rows is computed in neuron blocks of at most
# this many bytes: its workspace would otherwise be the subnetwork's k x d, at owner storage's
# scale W's own size per rank. Smaller subnetworks take one block, as fast as one product.
GRAD_BYTES = 8 * 2**20
# the per-sample sums over neurons may be reordered, so that LLVM vectorizes them (lanes of partial
# sums): deterministic for a given shape and machine, as BLAS is
SUMS = {"reassoc", "nsz", "contract"}
# the residual's branches (losses.LOSSES: a loss is passed as its code); numba compiles the
# global in as a constant
CROSS_ENTROPY = LOSSES["cross_entropy"].code


@njit(cache=True, nogil=True)
def blocks(k, d, itemsize):
    """A subnetwork's k rows in neuron blocks of equal width (the last may be narrower), each
    block's gradient within GRAD_BYTES: returns (count, width), (0, 0) for no rows."""
    if k == 0:
        return 0, 0
    most = max(1, GRAD_BYTES // (d * itemsize))
    width = -(-k // -(-k // most))
    return -(-k // width), width


@njit(cache=True, nogil=True)
def _block(A, n, lo, hi):
    """Neurons lo:hi of the activations, n x (hi - lo) and contiguous: A is a flat buffer holding
    the blocks one after the other, so each block feeds BLAS without a copy."""
    return A[n * lo: n * hi].reshape((n, hi - lo))


@njit(cache=True, nogil=True)
def _row(A, n, lo, hi, i):
    """Sample i's pre-activations of the neurons lo:hi, a slice of A (no reshape per sample)."""
    at = n * lo + i * (hi - lo)
    return A[at: at + hi - lo]


@njit(cache=True, nogil=True)
def _pre_activations(X, W, A, count, width):
    """Z = X W^T into A's blocks."""
    n, k = X.shape[0], W.shape[0]
    for b in range(count):
        lo, hi = b * width, min(b * width + width, k)
        np.dot(X, W[lo:hi].T, _block(A, n, lo, hi))


@njit(cache=True, nogil=True, fastmath=SUMS)
def _add_output(z, aT, lo, o):
    """o += relu(z) a for one sample's pre-activations z of the neurons lo:lo + len(z)."""
    for j in range(aT.shape[0]):
        aj = aT[j][lo: lo + z.size]   # a view from 0: an offset index would keep LLVM from vectorizing
        s = 0.0
        for r in range(z.size):
            s += max(z[r], 0.0) * aj[r]
        o[j] += s


@njit(cache=True, nogil=True)
def _residual_row(o, y, code):
    """In place: one sample's outputs f_i become n dL/df_i (f_i - y_i, or softmax(f_i) - y_i for
    the cross-entropy) for the loss of this code; returns that sample's term of n L, in float64."""
    c = o.shape[0]
    s = 0.0
    if code == CROSS_ENTROPY:
        top = o[0]
        for j in range(c):
            top = max(top, o[j])
        z = 0.0
        for j in range(c):
            z += np.exp(np.float64(o[j]) - top)
        lse = top + np.log(z)
        for j in range(c):
            s += np.float64(y[j]) * (lse - np.float64(o[j]))
            o[j] = np.exp(np.float64(o[j]) - lse) - y[j]
        return s
    for j in range(c):
        e = np.float64(o[j]) - np.float64(y[j])
        s += e * e
        o[j] -= y[j]
    return 0.5 * s


@njit(cache=True, nogil=True, fastmath={"contract"})
def _delta(z, e, aT, lo, ea):
    """In place over one sample's pre-activations z of neurons lo:lo + len(z): its row of D,
    D_r = [z_r > 0] sum_j e_j a_rj, from its residual e. ea: room for len(z) numbers (c > 1:
    the sums go over j one output at a time, so that each pass over r vectorizes)."""
    kb, c = z.size, aT.shape[0]
    e0, a0 = e[0], aT[0][lo: lo + kb]
    if c == 1:
        for r in range(kb):
            z[r] = e0 * a0[r] if z[r] > 0.0 else 0.0
        return
    for r in range(kb):
        ea[r] = e0 * a0[r]
    for j in range(1, c):
        ej, aj = e[j], aT[j][lo: lo + kb]
        for r in range(kb):
            ea[r] += ej * aj[r]
    for r in range(kb):
        z[r] = ea[r] if z[r] > 0.0 else 0.0


@njit(cache=True, nogil=True)
def _sample_output(A, i, n, k, count, width, aT, scale, o):
    """o = scale relu(z_i) a from sample i's pre-activations, across A's blocks."""
    o[:] = 0.0
    for b in range(count):
        lo, hi = b * width, min(b * width + width, k)
        _add_output(_row(A, n, lo, hi, i), aT, lo, o)
    for j in range(o.size):
        o[j] *= scale


@njit(cache=True, nogil=True)
def _sample_delta(A, i, n, k, count, width, aT, e, ea):
    """Sample i's row of D over its pre-activations, across A's blocks, from its residual e."""
    for b in range(count):
        lo, hi = b * width, min(b * width + width, k)
        _delta(_row(A, n, lo, hi, i), e, aT, lo, ea)


@njit(cache=True, nogil=True)
def _descend(X, W, step, A, G, count, width):
    """W <- W - step * D^T X, in place, a neuron block at a time (G: width x d)."""
    n, k = X.shape[0], W.shape[0]
    for b in range(count):
        lo, hi = b * width, min(b * width + width, k)
        Gb = G[:hi - lo]
        np.dot(_block(A, n, lo, hi).T, X, Gb)
        w, g = W[lo:hi].ravel(), Gb.ravel()
        for t in range(w.size):
            w[t] -= step * g[t]


@njit(cache=True, nogil=True)
def _outputs(X, W, aT, scale, A, out, count, width):
    """out = scale relu(X W^T) a (aT = a^T, c x k), A keeping Z = X W^T for a backward pass."""
    n, k = X.shape[0], W.shape[0]
    _pre_activations(X, W, A, count, width)
    for i in range(n):
        _sample_output(A, i, n, k, count, width, aT, scale, out[i])


@njit(cache=True, nogil=True)
def residual(out, Y, code):
    """In place: out (the outputs f) becomes n dL/df, the residual the backward pass takes:
    f - y for the squared error L = 1/(2n) sum ||f_i - y_i||^2, softmax(f) - y for the cross-entropy
    L = 1/n sum (logsumexp(f_i) - <y_i, f_i>) (y: one-hot or probabilities). Returns L at f, in
    float64."""
    s = 0.0
    for i in range(out.shape[0]):
        s += _residual_row(out[i], Y[i], code)
    return s / out.shape[0]


@njit(cache=True, nogil=True)
def _step(X, Y, W, aT, scale, lr, A, out, G, code):
    """One gradient step W <- W - lr * grad L(W) of L(scale relu(X W^T) a) (`residual`'s loss),
    in place; the forward pass, residual and D in one pass over Z (module docstring). Returns L at
    the weights the step started from."""
    n = X.shape[0]
    k, d = W.shape
    count, width = blocks(k, d, W.itemsize)
    _pre_activations(X, W, A, count, width)
    ea = G.ravel()[:width]   # the gradient's block is free until the pass is done: room for D's sums
    loss = 0.0
    for i in range(n):
        _sample_output(A, i, n, k, count, width, aT, scale, out[i])
        loss += _residual_row(out[i], Y[i], code)
        _sample_delta(A, i, n, k, count, width, aT, out[i], ea)
    # d/dw_r of L = (scale/n) sum_i D[i, r] x_i
    _descend(X, W, lr * scale / n, A, G, count, width)
    return loss / n


def workspaces(k: int, d: int, n: int, dtype: DTypeLike) -> tuple[np.ndarray, np.ndarray]:
    """The activations (a flat buffer of n x k, in blocks) and the gradient block of a subnetwork
    part of k rows on n samples. numpy allocates them, not numba: it asks the kernel for huge pages
    for large arrays, so a fresh n x k buffer each round costs a few page faults, not thousands."""
    _, width = blocks(k, d, np.dtype(dtype).itemsize)
    return np.empty(n * k, dtype=dtype), np.empty((width, d), dtype=dtype)


def local_steps(W: np.ndarray, a: np.ndarray, X: np.ndarray, Y: np.ndarray, scale: float, lr: float,
                batches: np.ndarray, code: int = 0) -> float:
    """tau = batches.shape[0] gradient steps of one subnetwork, in place on its active rows W (k x d).

    batches: (tau x b) sample indices per step, or (tau x 0) for full-batch steps (the paper).
    Returns the subnetwork's loss in its last step's forward pass (at the weights that step started
    from, over that step's samples): the sub_loss metric, free of any extra product."""
    (k, d), c, b = W.shape, Y.shape[1], batches.shape[1]
    nb = b or X.shape[0]
    (A, G), out, aT = workspaces(k, d, nb, W.dtype), np.empty((nb, c), W.dtype), np.ascontiguousarray(a.T)
    Xb, Yb = (X, Y) if b == 0 else (np.empty((b, d), W.dtype), np.empty((b, c), W.dtype))
    last = 0.0
    # the steps in Python: a few per round, each a numba call that releases the GIL (a jitted loop
    # around _step would add its whole compile again on the first launch after an install)
    for t in range(batches.shape[0]):
        if b:
            np.take(X, batches[t], axis=0, out=Xb)
            np.take(Y, batches[t], axis=0, out=Yb)
        last = _step(Xb, Yb, W, aT, scale, lr, A, out, G, code)
    return last


@njit(cache=True, nogil=True)
def part_forward(X, W, aT, scale, A, out):
    """Plan "outputs": this rank's part of a subnetwork's output, out = scale relu(X W^T) a for its
    own rows W (k x d), keeping Z = X W^T in A (`workspaces`) for part_backward."""
    count, width = blocks(W.shape[0], W.shape[1], W.itemsize)
    _outputs(X, W, aT, scale, A, out, count, width)


@njit(cache=True, nogil=True)
def part_backward(X, R, W, aT, step, A, G):
    """Plan "outputs": the gradient step of this rank's rows of a subnetwork, from the whole
    subnetwork's residual R (summed over the ranks' parts)."""
    n = X.shape[0]
    k, d = W.shape
    count, width = blocks(k, d, W.itemsize)
    ea = G.ravel()[:width]   # the gradient's block is free until the pass is done: room for D's sums
    for i in range(n):
        _sample_delta(A, i, n, k, count, width, aT, R[i], ea)
    _descend(X, W, step, A, G, count, width)


# neurons per block of the evaluation's forward pass: the n x block workspace stays small where
# the whole n x m product would take GBs (and memory traffic instead of cache)
OUTPUT_BLOCK = 512


def partial_output(W: np.ndarray, a: np.ndarray, X: np.ndarray, scale: float) -> np.ndarray:
    """scale * relu(X W^T) a for a block of rows: the blocks' outputs sum to the network's output."""
    return output_and_pattern(W, a, X, scale, np.empty((0, 0), dtype=np.bool_))


@njit(cache=True, nogil=True)
def output_and_pattern(W, a, X, scale, P):
    """partial_output, and, when P is n x k, the activation patterns 1{<w_r, x_i> > 0} into P (the
    lazy-regime diagnostics read them off the forward pass instead of a second product)."""
    n, k, c = X.shape[0], W.shape[0], a.shape[1]
    out = np.zeros((n, c), dtype=W.dtype)
    aT = np.ascontiguousarray(a.T)
    A = np.empty(n * min(k, OUTPUT_BLOCK), dtype=W.dtype)
    for lo in range(0, k, OUTPUT_BLOCK):
        hi = min(lo + OUTPUT_BLOCK, k)
        Z = A[:n * (hi - lo)].reshape((n, hi - lo))
        np.dot(X, W[lo:hi].T, Z)
        for i in range(n):
            _add_output(Z[i], aT, lo, out[i])
            if P.shape[0] == n:
                for j in range(hi - lo):
                    P[i, lo + j] = Z[i, j] > 0.0
    flat = out.ravel()
    for t in range(flat.size):
        flat[t] *= scale
    return out


def cache_is_cold() -> bool:
    """Whether numba's on-disk cache lacks the local step (the first launch after an install, or
    after the kernels changed): then compiling them takes seconds, and the launch says so."""
    try:
        return not os.path.exists(_step._cache._cache_file._index_path)  # type: ignore[attr-defined]  # numba's
    except AttributeError:  # another numba's internals: say nothing
        return False


def compile_for(dtype: DTypeLike, plan: str = "", share: tuple[int, int] = (0, 1)) -> None:
    """Compile (or load from numba's on-disk cache) the kernel signatures a run of this dtype and
    train.plan uses ("": both plans'), and nothing else. share = (i, n): only the i-th of n
    shares of them (the training steps, the evaluation), so that n ranks compile side by side."""
    one = np.dtype(dtype).type(1.0)  # type: ignore[call-overload]  # the model.s float dtype
    X, Y = np.ones((3, 2), dtype), np.ones((3, 1), dtype)
    W, a = np.ones((2, 2), dtype), np.ones((2, 1), dtype)

    def steps():
        if plan != "outputs":
            local_steps(W.copy(), a, X, Y, one, one, np.zeros((1, 0), np.int64))
        if plan != "rows":
            (A, G), out, aT = workspaces(2, 2, 3, dtype), np.empty((3, 1), dtype), np.ascontiguousarray(a.T)
            part_forward(X, W, aT, one, A, out)
            residual(out, Y, 0)
            part_backward(X, out, W.copy(), aT, np.float64(1.0), A, G)

    def evaluation():
        output_and_pattern(W, a, X, one, np.empty((3, 2), dtype=np.bool_))
        residual(np.ones((3, 1)), np.ones((3, 1)), 0)
    for compile_part in (steps, evaluation)[share[0]::share[1]]:
        compile_part()
