"""The numba-compiled hot path: a subnetwork's local gradient steps and the network's forward pass.

A subnetwork is given as its compact active rows only (W_l: k x d, a_l: k x c), so the cost of a
local step scales with keep. Each step is two BLAS products, Z = X W_l^T and G = D^T X, plus the
small product relu(Z) a_l; the element-wise work (ReLU, residual, ReLU derivative, update) runs in
flat loops between them that LLVM vectorizes. `scale` is the network's output scale: 1/sqrt(m)
for the full network, 1/(keep sqrt(m)) for a subnetwork's surrogate f_l.
"""
import numpy as np
from numba import njit

# the gradient G = D^T X of a subnetwork with many rows is computed in row blocks of at most this
# many bytes: its workspace would otherwise be the subnetwork's k x d, at owner storage's scale W's
# own size per rank. Smaller subnetworks take one block, as fast as one product.
GRAD_BYTES = 8 * 2**20


@njit(cache=True, nogil=True)
def _forward(X, W, a, scale, A, out):
    """A = relu(X W^T) (kept: relu'(z) = [A > 0] for the backward pass); out = scale * A a."""
    if W.shape[0] == 0:  # a subnetwork that holds no neuron outputs 0 (BLAS rejects empty operands)
        out[:] = 0.0
        return
    np.dot(X, W.T, A)
    flat = A.ravel()
    for t in range(flat.size):
        flat[t] = max(flat[t], 0.0)
    np.dot(A, a, out)
    flat = out.ravel()
    for t in range(flat.size):
        flat[t] *= scale


@njit(cache=True, nogil=True)
def _loss(out, Y):
    """1/(2n) sum_i ||out_i - y_i||^2, accumulated in float64."""
    s = 0.0
    o, y = out.ravel(), Y.ravel()
    for t in range(o.size):
        e = np.float64(o[t]) - np.float64(y[t])
        s += e * e
    return s / (2.0 * out.shape[0])


@njit(cache=True, nogil=True)
def residual(out, Y, cross_entropy):
    """In place: out (the outputs f) becomes n dL/df, the residual the backward pass takes:
    f - y for the squared error L = 1/(2n) sum ||f_i - y_i||^2, softmax(f) - y for the cross-entropy
    L = 1/n sum (logsumexp(f_i) - <y_i, f_i>) (y: one-hot or probabilities). Returns L at f, in
    float64."""
    n, c = out.shape
    s = 0.0
    for i in range(n):
        if cross_entropy:
            top = out[i, 0]
            for j in range(c):
                top = max(top, out[i, j])
            z = 0.0
            for j in range(c):
                z += np.exp(np.float64(out[i, j]) - top)
            lse = top + np.log(z)
            for j in range(c):
                s += np.float64(Y[i, j]) * (lse - np.float64(out[i, j]))
                out[i, j] = np.exp(np.float64(out[i, j]) - lse) - Y[i, j]
        else:
            for j in range(c):
                e = np.float64(out[i, j]) - np.float64(Y[i, j])
                s += e * e
                out[i, j] -= Y[i, j]
    return s / n if cross_entropy else s / (2.0 * n)


@njit(cache=True, nogil=True)
def _step(X, Y, W, a, aT, scale, lr, A, out, G, Dblk, cross_entropy):
    """One gradient step W <- W - lr * grad L(W) of L(scale relu(X W^T) a) (`residual`'s loss),
    in place. aT = a^T, contiguous (c x k). Returns L at the weights the step started from: its
    forward pass has it for free."""
    n, k = A.shape
    _forward(X, W, a, scale, A, out)
    loss = residual(out, Y, cross_entropy)   # out is now the residual
    if k > 0:
        _backward(X, out, W, aT, lr * scale / n, A, G, Dblk)
    return loss


@njit(cache=True, nogil=True)
def _backward(X, R, W, aT, step, A, G, Dblk):
    """W <- W - step * D^T X, in place, from the residual R (n x c) and the forward pass's
    A = relu(X W^T): D[i, r] = [z_ir > 0] * sum_j R[i, j] a[r, j], written over A."""
    n, k = A.shape
    c = R.shape[1]
    if k == 0:
        return
    for i in range(n):
        Ai = A[i]
        if c == 1:
            e = R[i, 0]
            a0 = aT[0]
            for r in range(k):
                Ai[r] = e * a0[r] if Ai[r] > 0.0 else 0.0
        else:
            for r in range(k):
                if Ai[r] > 0.0:
                    s = 0.0
                    for j in range(c):
                        s += R[i, j] * aT[j, r]
                    Ai[r] = s
    # d/dw_r of 1/(2n) sum ||f - y||^2 = (scale/n) sum_i D[i, r] x_i, in blocks of G's rows
    # (GRAD_BYTES): the gradient's workspace stays small however many rows the subnetwork holds
    B = G.shape[0]
    for lo in range(0, k, B):
        cols = min(B, k - lo)
        Gb = G[:cols]
        if cols == k:  # one block: D is A itself
            np.dot(A.T, X, Gb)
        else:
            D = Dblk if cols == B else np.empty((n, cols), dtype=A.dtype)
            for i in range(n):
                for r in range(cols):
                    D[i, r] = A[i, lo + r]
            np.dot(D.T, X, Gb)
        w, g = W[lo:lo + cols].ravel(), Gb.ravel()
        for t in range(w.size):
            w[t] -= step * g[t]


def _workspaces(k: int, d: int, nb: int, dtype):
    """The gradient's blocks (see GRAD_BYTES) for a subnetwork part of k rows and nb samples."""
    block = max(1, GRAD_BYTES // (d * np.dtype(dtype).itemsize))
    return np.empty((min(k, block), d), dtype=dtype), np.empty((nb, block if k > block else 0), dtype=dtype)


@njit(cache=True, nogil=True)
def part_forward(X, W, a, scale, A, out):
    """Plan "outputs": this rank's part of a subnetwork's output, out = scale relu(X W^T) a for its
    own rows W (k x d), keeping A = relu(X W^T) for part_backward."""
    _forward(X, W, a, scale, A, out)


@njit(cache=True, nogil=True)
def part_backward(X, R, W, aT, step, A, G, Dblk):
    """Plan "outputs": the gradient step of this rank's rows of a subnetwork, from the whole
    subnetwork's residual R (summed over the ranks' parts)."""
    _backward(X, R, W, aT, step, A, G, Dblk)


@njit(cache=True, nogil=True)
def local_steps(W, a, X, Y, scale, lr, batches, cross_entropy=False):
    """tau = batches.shape[0] gradient steps of one subnetwork, in place on its active rows W (k x d).

    batches: (tau x b) sample indices per step, or (tau x 0) for full-batch steps (the paper).
    Returns the subnetwork's loss in its last step's forward pass (at the weights that step started
    from, over that step's samples): the sub_loss metric, free of any extra product."""
    k, d = W.shape
    n, c = Y.shape
    tau, b = batches.shape
    nb = n if b == 0 else b
    # one set of workspaces for all tau steps
    A = np.empty((nb, k), dtype=W.dtype)
    out = np.empty((nb, c), dtype=W.dtype)
    block = max(1, GRAD_BYTES // (d * W.itemsize))
    G = np.empty((min(k, block), d), dtype=W.dtype)
    Dblk = np.empty((nb, block if k > block else 0), dtype=W.dtype)
    aT = np.ascontiguousarray(a.T)
    Xb = np.empty((nb if b else 0, d), dtype=W.dtype)
    Yb = np.empty((nb if b else 0, c), dtype=W.dtype)
    last = 0.0
    for t in range(tau):
        if b == 0:
            last = _step(X, Y, W, a, aT, scale, lr, A, out, G, Dblk, cross_entropy)
        else:
            for i in range(b):
                Xb[i] = X[batches[t, i]]
                Yb[i] = Y[batches[t, i]]
            last = _step(Xb, Yb, W, a, aT, scale, lr, A, out, G, Dblk, cross_entropy)
    return last


# neurons per block of the forward pass: the n x block workspace stays small where the whole
# n x m product would take GBs (and memory traffic instead of cache)
OUTPUT_BLOCK = 512


@njit(cache=True, nogil=True)
def partial_output(W, a, X, scale):
    """scale * relu(X W^T) a for a block of rows: the blocks' outputs sum to the network's output."""
    return output_and_pattern(W, a, X, scale, np.empty((0, 0), dtype=np.bool_))


@njit(cache=True, nogil=True)
def output_and_pattern(W, a, X, scale, P):
    """partial_output, and, when P is n x k, the activation patterns 1{<w_r, x_i> > 0} into P (the
    lazy-regime diagnostics read them off the forward pass instead of a second product)."""
    n, k, c = X.shape[0], W.shape[0], a.shape[1]
    out = np.zeros((n, c), dtype=W.dtype)
    part = np.empty((n, c), dtype=W.dtype)
    A = np.empty((n, min(k, OUTPUT_BLOCK)), dtype=W.dtype)
    for lo in range(0, k, OUTPUT_BLOCK):
        hi = min(lo + OUTPUT_BLOCK, k)
        if hi - lo != A.shape[1]:
            A = np.empty((n, hi - lo), dtype=W.dtype)
        _forward(X, W[lo:hi], a[lo:hi], scale, A, part)
        out += part
        if P.shape[0] == n:
            for i in range(n):
                for j in range(hi - lo):
                    P[i, lo + j] = A[i, j] > 0.0
    return out


@njit(cache=True, nogil=True)
def loss(W, a, X, Y, scale):
    """L(W) = 1/(2n) sum_i ||scale relu(X W^T) a - y_i||^2."""
    return _loss(partial_output(W, a, X, scale), Y)


def compile_for(dtype) -> None:
    """Compile (or load from numba's on-disk cache) every kernel signature a run of this dtype uses."""
    one = np.dtype(dtype).type(1.0)  # the round loop passes scalars in the model's dtype
    X, Y = np.ones((3, 2), dtype), np.ones((3, 1), dtype)
    W, a = np.ones((2, 2), dtype), np.ones((2, 1), dtype)
    for batches in (np.zeros((1, 0), np.int64), np.zeros((1, 2), np.int64)):
        for cross_entropy in (False, True):
            local_steps(W.copy(), a, X, Y, one, one, batches, cross_entropy)
    partial_output(W, a, X, one)
    output_and_pattern(W, a, X, one, np.empty((3, 2), dtype=np.bool_))
    A, out = np.empty((3, 2), dtype), np.empty((3, 1), dtype)
    part_forward(X, W, a, one, A, out)
    for cross_entropy in (False, True):
        residual(out.copy(), Y, cross_entropy)
        residual(out.astype(np.float64), Y.astype(np.float64), cross_entropy)   # the full network's evaluation
    part_backward(X, out, W.copy(), np.ascontiguousarray(a.T), np.float64(1.0), A, *_workspaces(2, 2, 3, dtype))
