"""The round loop: DESIGN.md's algorithm, step for step.

    for round k:
        M_k = masks of this round (p x m), the same on every rank
        for each subnet l on this rank:                       (1. local steps)
            W_l = W_k[active rows of l];  tau gradient steps on L_l;  W_l -> W^l_{k,tau}
        w_{k+1,r} = mean of w^l_{k,tau,r} over the subnets l holding r;   (2. aggregate)
                    a neuron held by none keeps w_{k,r}
        record the full network's loss L(W_{k+1})
"""
import contextlib
import math
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat

import numpy as np

from . import kernels, masks, theory
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


def network_loss(W, a, X, Y, comm, extra=(), each=map, parts: int = 1) -> tuple[float, np.ndarray]:
    """The full network's loss L(W), with the sums over ranks of the numbers in `extra` riding
    along in the same Allreduce. Each rank evaluates a contiguous block of neurons (in `parts`
    pieces mapped by `each`, e.g. over threads); the blocks' outputs add up."""
    m = W.shape[0]
    lo, hi = comm.rank * m // comm.size, (comm.rank + 1) * m // comm.size
    cuts = [lo + i * (hi - lo) // parts for i in range(parts + 1)]
    pieces = each(kernels.partial_output, [W[b:e] for b, e in zip(cuts, cuts[1:])],
                  [a[b:e] for b, e in zip(cuts, cuts[1:])], repeat(X), repeat(W.dtype.type(1.0 / math.sqrt(m))))
    out = sum(pieces)  # in block order, however they ran
    buf = np.concatenate([out.astype(np.float64).ravel(), np.asarray(extra, dtype=np.float64)])
    comm.sum(buf)
    outputs = buf[:out.size].reshape(Y.shape)
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported by the caller
        loss = float(np.sum((outputs - Y) ** 2) / (2 * Y.shape[0]))
    return loss, buf[out.size:]


def ntk_lambda0(X, comm, store_H: bool) -> tuple[float | None, np.ndarray | None]:
    """lambda_0 of the data's NTK Gram matrix, on rank 0 (None elsewhere), and H when asked for.
    The n^2 d entries are computed in row blocks over the ranks; the eigenvalue on rank 0."""
    n = X.shape[0]
    bounds = [k * n // comm.size for k in range(comm.size + 1)]
    mine = theory.gram_rows(X, bounds[comm.rank], bounds[comm.rank + 1])
    H = np.empty((n, n)) if comm.rank == 0 else None
    comm.gather_rows(mine, [hi - lo for lo, hi in zip(bounds, bounds[1:])], H)
    lambda0 = theory.smallest_eigenvalue(H) if comm.rank == 0 else None
    comm.barrier()  # the others sleep while rank 0 runs the eigensolver
    return lambda0, (H if store_H else None)


def record_lambda0(cfg, comm, X, store, log) -> None:
    n, t = X.shape[0], time.perf_counter()
    if comm.rank == 0 and n > 2000:
        log(f"computing the NTK Gram matrix of the data and its lambda_0 (n = {n}; a few seconds; "
            f"theory.max_n = 0 skips it) ...")
    lambda0, H = ntk_lambda0(X, comm, n <= cfg.theory.store_H_max_n)
    if store is not None:
        store.write_theory(lambda0, H)
    if comm.rank == 0:
        log(f"NTK Gram matrix of the data: lambda_0 = {lambda0:.4e} (n = {n}, {time.perf_counter() - t:.2f} s)")


def restore(cfg, start: dict, store, dtype):
    """(rounds done, loss_init, W, metrics history) from a checkpoint; rank 0 rebuilds the run file's
    rows. The checkpoint's W and round are all the state there is: masks and minibatches are
    functions of (seed, round, subnet), so the rounds ahead are the ones an unbroken run takes."""
    first = start["round"]
    W = start["W"].astype(dtype)
    history = {name: list(values) for name, values in start["metrics"].items()}
    if store is not None:
        mk = cfg.masks
        for i in range(first):
            M = masks.sample(mk.kind, mk.subnets, mk.keep, cfg.model.width, cfg.train.seed, i) \
                if cfg.output.record_masks else None
            store.append({name: values[i] for name, values in history.items()}, M)
        store.write_weights(W, first)
    return first, start["loss_init"], W, history


class Interrupted(Exception):
    """A rank was asked to stop (SIGTERM/SIGUSR1): the round finished and a checkpoint was written."""

    def __init__(self, rounds_done: int):
        super().__init__(f"stopped after round {rounds_done}")
        self.rounds_done = rounds_done


def run(cfg, comm, X, Y, store=None, log=print, start=None, stop_requested=lambda: False, workers=1) -> dict:
    """Train with a resolved config on data X (n x d), Y (n x c). Every rank calls this; `store`
    (the run file) is rank 0's alone. `start`: a checkpoint to continue from. `stop_requested`:
    polled once a round; when it is true on any rank, every rank stops after the round together.
    `workers`: threads that train this rank's subnetworks side by side (the kernels release the GIL).
    Returns the final weights and the per-round metrics."""
    with ThreadPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        return _run(cfg, comm, X, Y, store, log, start, stop_requested,
                    pool.map if pool is not None else map, workers)


def _run(cfg, comm, X, Y, store, log, start, stop_requested, each, workers) -> dict:
    W, a = init_model(cfg)
    if store is not None:
        store.write_start(X, Y, a, W, cfg.data.source)
    if X.shape[0] <= cfg.theory.max_n:
        record_lambda0(cfg, comm, X, store, log)

    p, m = cfg.masks.subnets, cfg.model.width
    keep = cfg.masks.keep
    tau, rounds = cfg.train.local_steps, cfg.train.rounds
    disjoint = cfg.masks.kind != "bernoulli"
    my_subnets = subnets_of_rank(p, comm.size, comm.rank)
    real = np.dtype(cfg.model.dtype).type   # scalars in the model's dtype keep float32 kernels in float32
    sub_scale = real(1.0 / (keep * math.sqrt(m)))  # the surrogate f_l's 1/xi times the NTK 1/sqrt(m)
    lr = real(cfg.train.lr)
    log_every = cfg.output.log_every or max(1, rounds // 20)
    checkpoint_every = cfg.output.checkpoint_every
    width = len(str(rounds))

    if start is None:
        first, history = 0, {}
        loss_init, _ = network_loss(W, a, X, Y, comm, (), each, workers)
        if comm.rank == 0:
            log(f"round {0:>{width}}/{rounds}  loss {loss_init:.4e}  (initial weights)")
    else:
        first, loss_init, W, history = restore(cfg, start, store, W.dtype)
        if comm.rank == 0:
            log(f"round {first:>{width}}/{rounds}  loss {history['loss'][-1]:.4e}  (resumed from the checkpoint)")
    comm.take_counters()
    if store is not None:
        store.write_loss_init(loss_init)
        if start is None:
            store.checkpoint(W, 0, history, loss_init)  # --resume works from the first second on
    last_checkpoint = first

    t_mark = time.perf_counter()   # seconds_wall: from one round's row to the next, store writes included
    for round in range(first, rounds):
        t_start = time.perf_counter()
        M = masks.sample(cfg.masks.kind, p, keep, m, cfg.train.seed, round)
        rows = [np.flatnonzero(M[l]) for l in range(p)]  # each subnetwork's active neurons

        # 1. every subnetwork on this rank: tau local steps from W_k, on its active rows only
        #    (updated in place; side by side on `workers` threads)
        updated = {l: W[rows[l]] for l in my_subnets}
        batches = [masks.minibatches(cfg.data.n, cfg.train.batch_size, tau, cfg.train.seed, round, l)
                   for l in my_subnets]
        t = time.perf_counter()
        sub_losses = list(each(kernels.local_steps, updated.values(), [a[rows[l]] for l in my_subnets],
                               repeat(X), repeat(Y), repeat(sub_scale), repeat(lr), batches))
        seconds_local = time.perf_counter() - t
        sub_loss_sum = sum(sub_losses)  # in subnet order, however they ran

        # 2. aggregate per neuron over the subnetworks that hold it
        W = aggregate(W, M, rows, updated, comm, disjoint)

        # the loss, the subnetworks' losses and any rank's stop request, in one Allreduce
        t = time.perf_counter()
        loss, (sub_loss_sum, stops) = network_loss(W, a, X, Y, comm, (sub_loss_sum, float(stop_requested())),
                                                   each, workers)
        seconds_loss = time.perf_counter() - t
        sub_loss = sub_loss_sum / p
        seconds_comm, bytes_comm = comm.take_counters()
        seconds_loss -= comm.last_seconds  # its Allreduce counts as comm
        seconds_compute = time.perf_counter() - t_start - seconds_comm

        if not math.isfinite(loss) or loss > DIVERGED * loss_init:
            raise UserError(f"the loss became {loss:.4g} in round {round + 1} (initial {loss_init:.4g}): "
                            f"training diverged; lower train.lr (now {lr:g}): a subnetwork's step is "
                            f"about 1/keep times stronger, so small masks.keep needs a small lr "
                            f"(the last good checkpoint, round {last_checkpoint}, is kept)")
        now = time.perf_counter()
        row = {"round": round + 1, "loss": loss, "sub_loss": sub_loss, "seconds_compute": seconds_compute,
               "seconds_comm": seconds_comm, "seconds_wall": now - t_mark, "bytes_comm": bytes_comm,
               "seconds_local": seconds_local, "seconds_loss": seconds_loss}
        t_mark = now
        for name, value in row.items():
            history.setdefault(name, []).append(value)
        done, stop = round + 1 == rounds, stops > 0
        save = done or stop or (round + 1) % checkpoint_every == 0
        if store is not None:
            store.append(row, M if cfg.output.record_masks else None)
            if done or stop or (round + 1) % log_every == 0:
                store.write_weights(W, round + 1)
            if save:
                store.checkpoint(W, round + 1, history, loss_init)
        if save:
            last_checkpoint = round + 1
        if comm.rank == 0 and (done or stop or round == first or (round + 1) % log_every == 0):
            log(f"round {round + 1:>{width}}/{rounds}  loss {loss:.4e}  sub_loss {sub_loss:.4e}  "
                f"compute {seconds_compute:.3f}s  comm {seconds_comm:.3f}s  "
                f"sent {bytes_comm / 1e6:.2f} MB")
        if stop and not done:
            raise Interrupted(round + 1)
    return {"W": W, "loss_init": loss_init, "metrics": {k: np.array(v) for k, v in history.items()}}
