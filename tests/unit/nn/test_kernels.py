"""The compiled local steps against central finite differences of an independent numpy loss."""
import numpy as np
import pytest
from helpers.reference import surrogate_grad, surrogate_loss

from mpisub.nn import kernels
from mpisub.nn.losses import LOSSES

FULL_BATCH = np.zeros((1, 0), np.int64)


def problem(seed=0, n=30, d=6, c=2, m=20, keep=0.5):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Y = rng.standard_normal((n, c))
    W = rng.standard_normal((m, d))
    a = rng.choice([-1.0, 1.0], size=(m, c))
    mask = (rng.random(m) < keep).astype(float)
    return X, Y, W, a, mask, keep


def kernel_grad(W, a, X, Y, mask, keep, batches=FULL_BATCH, loss="squared"):
    """The gradient the kernel applies, read off one step with lr = 1 on the active rows."""
    rows = np.flatnonzero(mask)
    W_l = W[rows].copy()
    kernels.local_steps(W_l, a[rows].copy(), X, Y, 1.0 / (keep * np.sqrt(W.shape[0])), 1.0, batches,
                        LOSSES[loss].code)
    G = np.zeros_like(W)
    G[rows] = W[rows] - W_l
    return G


def fd_grad(W, a, X, Y, mask, keep, h=1e-6, loss="squared"):
    G = np.zeros_like(W)
    for r in range(W.shape[0]):
        for q in range(W.shape[1]):
            E = np.zeros_like(W)
            E[r, q] = h
            up = surrogate_loss(W + E, a, X, Y, mask, keep, loss)
            down = surrogate_loss(W - E, a, X, Y, mask, keep, loss)
            G[r, q] = (up - down) / (2 * h)
    return G


@pytest.mark.parametrize("seed,keep", [(0, 0.5), (1, 0.25), (2, 1.0)])
def test_masked_gradient_matches_finite_differences(seed, keep):
    X, Y, W, a, mask, keep = problem(seed, keep=keep)
    G = kernel_grad(W, a, X, Y, mask, keep)
    G_fd = fd_grad(W, a, X, Y, mask, keep)
    assert np.abs(G).max() > 1e-3  # a real gradient, not a vacuous zero
    np.testing.assert_allclose(G, G_fd, rtol=1e-6, atol=1e-8)
    assert np.all(G[mask == 0] == 0)  # inactive neurons are untouched


def test_minibatch_gradient_matches_finite_differences_on_the_batch():
    X, Y, W, a, mask, keep = problem(3)
    batch = np.array([[1, 4, 5, 11, 20, 29]])
    G = kernel_grad(W, a, X, Y, mask, keep, batch)
    G_fd = fd_grad(W, a, X[batch[0]], Y[batch[0]], mask, keep)
    np.testing.assert_allclose(G, G_fd, rtol=1e-6, atol=1e-8)


def test_local_steps_return_the_loss_their_last_step_descended_from():
    """The sub_loss metric (docs/design.md, "The run file"): the loss in the last step's forward pass,
    at the weights after tau - 1 steps, over the last step's samples."""
    X, Y, W, a, mask, keep = problem(4)
    rows, scale = np.flatnonzero(mask), 1 / (keep * np.sqrt(20))
    for batches in (np.zeros((4, 0), np.int64), np.array([[0, 3, 7], [2, 5, 9], [1, 4, 8], [6, 10, 12]])):
        before_last = W[rows].copy()
        kernels.local_steps(before_last, a[rows].copy(), X, Y, scale, 0.3, batches[:3])
        got = kernels.local_steps(W[rows].copy(), a[rows].copy(), X, Y, scale, 0.3, batches)
        W_at = W.copy()
        W_at[rows] = before_last
        on = batches[3] if batches.shape[1] else slice(None)
        assert got == pytest.approx(surrogate_loss(W_at, a, X[on], Y[on], mask, keep), rel=1e-12)
    full = kernels.local_steps(W[rows].copy(), a[rows].copy(), X, Y, scale, 0.3, np.zeros((4, 0), np.int64))
    assert full < surrogate_loss(W, a, X, Y, mask, keep)  # three small steps went downhill



def test_empty_subnetwork_outputs_zero():
    X, Y, W, a, _, _ = problem(5)
    W_l = np.empty((0, W.shape[1]))
    got = kernels.local_steps(W_l, np.empty((0, 2)), X, Y, 1.0, 0.1, np.zeros((2, 0), np.int64))
    assert got == pytest.approx(0.5 * np.mean(np.sum(Y**2, axis=1)), rel=1e-14)


@pytest.mark.parametrize("c", [1, 3])
def test_neuron_blocks_take_the_step_of_one_product(c):
    """Rows so long that the gradient's GRAD_BYTES limit cuts the subnetwork into uneven neuron
    blocks (2, 2, 1): the step, through local_steps and through plan outputs' part_forward and
    part_backward, is the chain rule's gradient (reference.surrogate_grad, plain numpy)."""
    d = kernels.GRAD_BYTES // 8 // 3 + 16        # two rows fit a block, three do not
    count, width = kernels.blocks(5, d, 8)
    assert (count, width) == (3, 2)
    X, Y, W, a, _, _ = problem(8, n=4, d=d, c=c, m=5)
    mask, keep, lr = np.ones(5), 1.0, 0.7
    expected = W - lr * surrogate_grad(W, a, X, Y, mask, keep)
    W_rows = W.copy()
    got = kernels.local_steps(W_rows, a, X, Y, 1 / np.sqrt(5), lr, FULL_BATCH)
    assert got == pytest.approx(surrogate_loss(W, a, X, Y, mask, keep), rel=1e-12)
    np.testing.assert_allclose(W_rows, expected, rtol=1e-12, atol=1e-14)
    A, G = kernels.workspaces(5, d, 4, np.float64)
    out, aT, W_parts = np.empty((4, c)), np.ascontiguousarray(a.T), W.copy()
    kernels.part_forward(X, W_parts, aT, 1 / np.sqrt(5), A, out)
    np.testing.assert_allclose(out, np.maximum(X @ W.T, 0) @ a / np.sqrt(5), rtol=1e-12, atol=1e-14)
    kernels.residual(out, Y, LOSSES["squared"].code)
    kernels.part_backward(X, out, W_parts, aT, lr / np.sqrt(5) / 4, A, G)
    np.testing.assert_allclose(W_parts, expected, rtol=1e-12, atol=1e-14)


def test_row_blocks_of_the_output_add_up_to_the_network():
    X, Y, W, a, _, _ = problem(6)
    W, a = np.tile(W, (60, 1)), np.tile(a, (60, 1))    # 1200 neurons: three evaluation blocks
    whole = kernels.partial_output(W, a, X, 0.2)
    parts = kernels.partial_output(W[:700].copy(), a[:700].copy(), X, 0.2) + \
        kernels.partial_output(W[700:].copy(), a[700:].copy(), X, 0.2)
    np.testing.assert_allclose(whole, parts, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(whole, np.maximum(X @ W.T, 0) @ a * 0.2, rtol=1e-12, atol=1e-14)


def test_float32_step_agrees_with_float64():
    X, Y, W, a, mask, keep = problem(7)
    G64 = kernel_grad(W, a, X, Y, mask, keep)
    f32 = [v.astype(np.float32) for v in (W, a, X, Y)]
    G32 = kernel_grad(f32[0], f32[1], f32[2], f32[3], mask, keep)
    assert G32.dtype == np.float32
    np.testing.assert_allclose(G32, G64, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("seed,keep", [(0, 0.5), (3, 1.0)])
def test_cross_entropy_gradient_matches_finite_differences(seed, keep):
    """train.loss = cross_entropy: L = (1/n) sum_i (logsumexp(f_i) - <y_i, f_i>) on one-hot targets."""
    X, _, W, a, mask, keep = problem(seed, c=3, keep=keep)
    Y = np.eye(3)[np.random.default_rng(seed).integers(0, 3, size=X.shape[0])]
    G = kernel_grad(W, a, X, Y, mask, keep, loss="cross_entropy")
    G_fd = fd_grad(W, a, X, Y, mask, keep, loss="cross_entropy")
    assert np.abs(G).max() > 1e-3
    np.testing.assert_allclose(G, G_fd, rtol=1e-6, atol=1e-8)
    rows = np.flatnonzero(mask)
    got = kernels.local_steps(W[rows].copy(), a[rows].copy(), X, Y, 1.0 / (keep * np.sqrt(W.shape[0])), 0.1,
                              FULL_BATCH, LOSSES["cross_entropy"].code)
    assert got == pytest.approx(surrogate_loss(W, a, X, Y, mask, keep, "cross_entropy"), rel=1e-12)
