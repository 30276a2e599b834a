"""The round loop: DESIGN.md's algorithm, step for step.

    for round k:
        M_k = masks of this round (p x m), the same on every rank
        for each subnet l on this rank:                       (1. local steps)
            W_l = W_k[active rows of l];  tau gradient steps on L_l;  W_l -> W^l_{k,tau}
        w_{k+1,r} = mean of w^l_{k,tau,r} over the subnets l holding r;   (2. aggregate)
                    a neuron held by none keeps w_{k,r}
        record the full network's loss L(W_{k+1})
"""
import math
import time

import numpy as np

from . import kernels, masks
from .errors import UserError

# a loss this many times the initial one means the steps are too large: stop rather than burn the
# allocation on overflowing weights
DIVERGED = 1e3


def init_model(cfg) -> tuple[np.ndarray, np.ndarray]:
    """W (m x d): w_r ~ N(0, kappa^2 I); a (m x c): entries uniform in {+1, -1}; from train.seed."""
    rng = masks.stream(cfg.train.seed, masks.INIT)
    m, d, c = cfg.model.width, cfg.data.d, cfg.data.outputs
    W = cfg.model.init_scale * rng.standard_normal((m, d))
    a = 2.0 * rng.integers(0, 2, size=(m, c)) - 1.0
    return W.astype(cfg.model.dtype), a.astype(cfg.model.dtype)


def subnets_of_rank(p: int, ranks: int, rank: int) -> range:
    """Contiguous blocks: rank k holds subnets [k p/K, (k+1) p/K), so gathering the ranks' rows in
    rank order gives them in subnet order, whatever K is."""
    return range(rank * p // ranks, (rank + 1) * p // ranks)


def aggregate(W, M, rows, updated, comm, disjoint: bool) -> np.ndarray:
    """W_{k+1} from the subnetworks' updated rows: rows[l] are subnetwork l's active neurons (all l),
    updated[l] its trained rows W^l_{k,tau} (the subnetworks of this rank)."""
    p, m = M.shape
    if disjoint:
        # categorical / partition / full: each neuron is held by exactly one subnetwork, so the
        # average is that subnetwork's row; gather every rank's rows (N_r = 1 for all r)
        counts = [sum(len(rows[l]) for l in subnets_of_rank(p, comm.size, k)) for k in range(comm.size)]
        gathered = np.empty_like(W)
        comm.allgather_rows(np.concatenate(list(updated.values())), counts, gathered)
        W_next = np.empty_like(W)
        W_next[np.concatenate(rows)] = gathered
        return W_next
    # bernoulli: sum the masked rows over all subnetworks, divide by N_r where N_r > 0
    S = np.zeros_like(W)
    for l, W_l in updated.items():
        S[rows[l]] += W_l
    comm.sum(S)
    N = M.sum(axis=0, dtype=np.int64)
    held = N > 0
    W_next = W.copy()
    W_next[held] = S[held] / N[held, None].astype(W.dtype)
    return W_next


def network_loss(W, a, X, Y, comm, extra: float = 0.0) -> tuple[float, float]:
    """The full network's loss L(W), with the sum over ranks of `extra` riding along in the same
    Allreduce. Each rank evaluates a contiguous block of neurons; the blocks' outputs add up."""
    m = W.shape[0]
    lo, hi = comm.rank * m // comm.size, (comm.rank + 1) * m // comm.size
    out = kernels.partial_output(W[lo:hi], a[lo:hi], X, W.dtype.type(1.0 / math.sqrt(m)))
    buf = np.append(out.astype(np.float64).ravel(), extra)
    comm.sum(buf)
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported by the caller
        loss = float(np.sum((buf[:-1].reshape(Y.shape) - Y) ** 2) / (2 * Y.shape[0]))
    return loss, float(buf[-1])


def run(cfg, comm, X, Y, store=None, log=print) -> dict:
    """Train with a resolved config on data X (n x d), Y (n x c). Every rank calls this; `store`
    (the run file) is rank 0's alone. Returns the final weights and the per-round metrics."""
    W, a = init_model(cfg)
    if store is not None:
        store.write_start(X, Y, a, W)

    p, m = cfg.masks.subnets, cfg.model.width
    keep = cfg.masks.keep
    tau, rounds = cfg.train.local_steps, cfg.train.rounds
    disjoint = cfg.masks.kind != "bernoulli"
    my_subnets = subnets_of_rank(p, comm.size, comm.rank)
    real = np.dtype(cfg.model.dtype).type   # scalars in the model's dtype keep float32 kernels in float32
    sub_scale = real(1.0 / (keep * math.sqrt(m)))  # the surrogate f_l's 1/xi times the NTK 1/sqrt(m)
    lr = real(cfg.train.lr)
    log_every = cfg.output.log_every or max(1, rounds // 20)
    history = {}

    loss_init, _ = network_loss(W, a, X, Y, comm)
    comm.take_counters()
    if store is not None:
        store.write_loss_init(loss_init)
    if comm.rank == 0:
        log(f"round {0:>{len(str(rounds))}}/{rounds}  loss {loss_init:.4e}  (initial weights)")
    t_mark = time.perf_counter()   # seconds_wall: from one round's row to the next, store writes included
    for round in range(rounds):
        t_start = time.perf_counter()
        M = masks.sample(cfg.masks.kind, p, keep, m, cfg.train.seed, round)
        rows = [np.flatnonzero(M[l]) for l in range(p)]  # each subnetwork's active neurons

        # 1. every subnetwork on this rank: tau local steps from W_k, on its active rows only
        updated, sub_loss_sum = {}, 0.0
        for l in my_subnets:
            W_l = W[rows[l]]
            batches = masks.minibatches(cfg.data.n, cfg.train.batch_size, tau, cfg.train.seed, round, l)
            sub_loss_sum += kernels.local_steps(W_l, a[rows[l]], X, Y, sub_scale, lr, batches)
            updated[l] = W_l

        # 2. aggregate per neuron over the subnetworks that hold it
        W = aggregate(W, M, rows, updated, comm, disjoint)

        loss, sub_loss_sum = network_loss(W, a, X, Y, comm, sub_loss_sum)
        sub_loss = sub_loss_sum / p
        seconds_comm, bytes_comm = comm.take_counters()
        seconds_compute = time.perf_counter() - t_start - seconds_comm

        if not math.isfinite(loss) or loss > DIVERGED * loss_init:
            raise UserError(f"the loss became {loss:.4g} in round {round + 1} (initial {loss_init:.4g}): "
                            f"training diverged; lower train.lr (now {lr:g}): a subnetwork's step is "
                            f"about 1/keep times stronger, so small masks.keep needs a small lr")
        now = time.perf_counter()
        row = {"round": round + 1, "loss": loss, "sub_loss": sub_loss, "seconds_compute": seconds_compute,
               "seconds_comm": seconds_comm, "seconds_wall": now - t_mark, "bytes_comm": bytes_comm}
        t_mark = now
        done = round + 1 == rounds
        if store is not None:
            store.append(row, M if cfg.output.record_masks else None)
            if done or (round + 1) % log_every == 0:
                store.write_weights(W, round + 1)
        for name, value in row.items():
            history.setdefault(name, []).append(value)
        if comm.rank == 0 and (done or round == 0 or (round + 1) % log_every == 0):
            log(f"round {round + 1:>{len(str(rounds))}}/{rounds}  loss {loss:.4e}  sub_loss {sub_loss:.4e}  "
                f"compute {seconds_compute:.3f}s  comm {seconds_comm:.3f}s  "
                f"sent {bytes_comm / 1e6:.2f} MB")
    return {"W": W, "loss_init": loss_init, "metrics": {k: np.array(v) for k, v in history.items()}}
