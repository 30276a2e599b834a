"""A slow, plain-numpy statement of docs/design.md's algorithm (section 2), written independently of mpisub's
kernels: full-width matrices with the mask applied as a multiplication, the gradient from the
chain rule, the aggregation as an explicit loop over neurons."""
import numpy as np


def surrogate_output(W, a, X, mask, keep):
    """f_l(W, x) = (1/keep) (1/sqrt(m)) sum_r mask_r a_r relu(<w_r, x>), for all rows of X."""
    m = W.shape[0]
    return (np.maximum(X @ W.T, 0.0) * mask) @ a / (keep * np.sqrt(m))


def surrogate_loss(W, a, X, Y, mask, keep, loss="squared"):
    f = surrogate_output(W, a, X, mask, keep)
    if loss == "cross_entropy":   # (1/n) sum_i (log sum_j exp f_ij - <y_i, f_i>)
        return np.mean(np.log(np.sum(np.exp(f), axis=1)) - np.sum(Y * f, axis=1))
    return 0.5 * np.mean(np.sum((f - Y) ** 2, axis=1))


def surrogate_grad(W, a, X, Y, mask, keep, loss="squared"):
    m, n = W.shape[0], X.shape[0]
    Z = X @ W.T
    f = surrogate_output(W, a, X, mask, keep)
    # dL/df_i times n: f - y for the squared error; softmax(f) - y for the cross-entropy
    R = (np.exp(f) / np.sum(np.exp(f), axis=1, keepdims=True) if loss == "cross_entropy" else f) - Y
    D = (R @ a.T) * (Z > 0) * mask / (keep * np.sqrt(m))            # n x m: d f-terms / d z
    return D.T @ X / n


def replay(W_init, a, X, Y, masks, keep, lr, local_steps, batches=None, loss="squared", uncovered="keep"):
    """Every round of a run from its recorded masks (rounds x p x m). Returns the final W and per
    round (loss of the aggregated network, mean over subnetworks of the loss their last local step
    descended from: at its starting weights, over its samples). uncovered = "zero": a neuron no
    subnetwork holds is set to 0, as the authors' code's aggregate_updates does."""
    W = W_init.copy()
    full = np.ones(W.shape[0])
    losses, sub_losses = [], []
    for k, M in enumerate(masks):
        p, m = M.shape
        trained, last = [], []
        for l in range(p):
            W_l = W.copy()
            for t in range(local_steps):
                if batches is None:
                    Xb, Yb = X, Y
                else:
                    Xb, Yb = X[batches[k][l][t]], Y[batches[k][l][t]]
                if t == local_steps - 1:
                    last.append(surrogate_loss(W_l, a, Xb, Yb, M[l], keep, loss))
                W_l = W_l - lr * surrogate_grad(W_l, a, Xb, Yb, M[l], keep, loss)
            trained.append(W_l)
        sub_losses.append(np.mean(last))
        W_next = W.copy()
        for r in range(m):
            holders = [l for l in range(p) if M[l, r]]
            if holders:  # a neuron held by no subnetwork keeps its weights (or is zeroed)
                W_next[r] = sum(trained[l][r] for l in holders) / len(holders)
            elif uncovered == "zero":
                W_next[r] = 0.0
        W = W_next
        losses.append(surrogate_loss(W, a, X, Y, full, 1.0, loss))
    return W, np.array(losses), np.array(sub_losses)


def rows_sent_by_rank0(M, K: int) -> int:
    """Rows rank 0 sends to other ranks in one round (docs/design.md, section 3): rank k owns
    neurons [k m/K, (k+1) m/K) and holds subnets [k p/K, (k+1) p/K); it sends each other rank the
    rows it owns that the other's subnetworks hold (once per rank), then each trained row of its
    own subnetworks that another rank owns (once per subnetwork)."""
    p, m = M.shape
    owned = np.zeros(m, dtype=bool)
    owned[: m // K] = True
    subnets = [range(k * p // K, (k + 1) * p // K) for k in range(K)]
    pulled = sum(int((M[list(subnets[k])].any(axis=0) & owned).sum()) for k in range(1, K))
    pushed = sum(int((M[l].astype(bool) & ~owned).sum()) for l in subnets[0])
    return pulled + pushed


def rows_received_by_rank0(M, K: int) -> int:
    """Rows rank 0 receives from other ranks in one round: its subnetworks' rows that others own
    (pull, once per rank), then every other rank's subnetworks' trained rows that it owns (push)."""
    p, m = M.shape
    owned = np.zeros(m, dtype=bool)
    owned[: m // K] = True
    subnets = [range(k * p // K, (k + 1) * p // K) for k in range(K)]
    pulled = int((M[list(subnets[0])].any(axis=0) & ~owned).sum())
    pushed = sum(int((M[l].astype(bool) & owned).sum()) for k in range(1, K) for l in subnets[k])
    return pulled + pushed
