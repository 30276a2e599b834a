"""The numba-compiled hot path: a subnetwork's local gradient steps and the network's forward pass.

A subnetwork is given as its compact active rows only (W_l: k x d, a_l: k x c), so the cost of a
local step scales with keep. Each step is two BLAS products, Z = X W_l^T and G = D^T X, with the
element-wise work (ReLU, output sum, residual, ReLU derivative) fused into two loops between them.
`scale` is the network's output scale: 1/sqrt(m) for the full network, 1/(keep sqrt(m)) for a
subnetwork's surrogate f_l.
"""
import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _forward(X, W, a, scale, Z, out):
    """Z = X W^T (pre-activations, kept for the backward pass); out = scale * relu(Z) a."""
    n, k = Z.shape
    c = a.shape[1]
    out[:] = 0.0
    if k == 0:  # a subnetwork that holds no neuron outputs 0 (BLAS rejects empty operands)
        return
    np.dot(X, W.T, Z)
    for i in range(n):
        for r in range(k):
            z = Z[i, r]
            if z > 0.0:
                for j in range(c):
                    out[i, j] += z * a[r, j]
    for i in range(n):
        for j in range(c):
            out[i, j] *= scale


@njit(cache=True, nogil=True)
def _loss(out, Y):
    """1/(2n) sum_i ||out_i - y_i||^2, accumulated in float64."""
    s = 0.0
    n, c = out.shape
    for i in range(n):
        for j in range(c):
            e = np.float64(out[i, j]) - np.float64(Y[i, j])
            s += e * e
    return s / (2.0 * n)


@njit(cache=True, nogil=True)
def _step(X, Y, W, a, scale, lr, Z, out, G):
    """One gradient step W <- W - lr * grad L(W) for L = 1/(2n) sum ||scale relu(X W^T) a - Y||^2.
    Returns the loss before the step."""
    _forward(X, W, a, scale, Z, out)
    loss = _loss(out, Y)
    n, k = Z.shape
    c = a.shape[1]
    if k == 0:
        return loss
    # residual, then D = (R a^T) * relu'(Z), written over Z
    for i in range(n):
        for j in range(c):
            out[i, j] -= Y[i, j]
    for i in range(n):
        for r in range(k):
            if Z[i, r] > 0.0:
                s = 0.0
                for j in range(c):
                    s += out[i, j] * a[r, j]
                Z[i, r] = s
            else:
                Z[i, r] = 0.0
    np.dot(Z.T, X, G)
    # d/dw_r of 1/(2n) sum ||f - y||^2 = (scale/n) sum_i D[i, r] x_i
    step = lr * scale / n
    d = W.shape[1]
    for r in range(k):
        for q in range(d):
            W[r, q] -= step * G[r, q]
    return loss


@njit(cache=True, nogil=True)
def local_steps(W, a, X, Y, scale, lr, batches):
    """tau = batches.shape[0] gradient steps of one subnetwork, in place on its active rows W (k x d).

    batches: (tau x b) sample indices per step, or (tau x 0) for full-batch steps (the paper).
    Returns the subnetwork's full-batch loss after the last step."""
    k, d = W.shape
    n, c = Y.shape
    tau, b = batches.shape
    nb = n if b == 0 else b
    Z = np.empty((nb, k), dtype=W.dtype)
    out = np.empty((nb, c), dtype=W.dtype)
    G = np.empty((k, d), dtype=W.dtype)
    Xb = np.empty((nb, d), dtype=W.dtype)
    Yb = np.empty((nb, c), dtype=W.dtype)
    for t in range(tau):
        if b == 0:
            _step(X, Y, W, a, scale, lr, Z, out, G)
        else:
            for i in range(b):
                Xb[i] = X[batches[t, i]]
                Yb[i] = Y[batches[t, i]]
            _step(Xb, Yb, W, a, scale, lr, Z, out, G)
    return loss(W, a, X, Y, scale)


@njit(cache=True, nogil=True)
def partial_output(W, a, X, scale):
    """scale * relu(X W^T) a for a block of rows: the blocks' outputs sum to the network's output."""
    Z = np.empty((X.shape[0], W.shape[0]), dtype=W.dtype)
    out = np.empty((X.shape[0], a.shape[1]), dtype=W.dtype)
    _forward(X, W, a, scale, Z, out)
    return out


@njit(cache=True, nogil=True)
def loss(W, a, X, Y, scale):
    """L(W) = 1/(2n) sum_i ||scale relu(X W^T) a - y_i||^2."""
    return _loss(partial_output(W, a, X, scale), Y)
