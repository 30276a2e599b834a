"""The round loop: docs/design.md's algorithm (section 2), step for step.

    for round k:
        M_k = masks of this round (p x m), the same on every rank
        pull: each rank receives from their owners the rows its subnets hold
        for each subnet l on this rank:                       (1. local steps)
            W_l = W_k[active rows of l];  tau gradient steps on L_l;  W_l -> W^l_{k,tau}
        push: the trained rows go back to their owners, where       (2. aggregate)
            w_{k+1,r} = mean of w^l_{k,tau,r} over the subnets l holding r (in subnet order);
            a neuron held by none keeps w_{k,r}
        record the subnetworks' losses (free: from their last local step); every eval_every rounds,
        evaluate the full network's loss L(W_{k+1})

Rank k owns the neurons shard.owned(m, K, k) for the whole run (its rows of W live nowhere else).
"""
import contextlib
import math
import time
import types
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat

import numpy as np

from . import config, kernels, masks, shard, theory
from .errors import UserError, cause

# a loss this many times the initial one means the steps are too large: stop rather than burn the
# allocation on overflowing weights
DIVERGED = 1e3
# W and a are drawn in chunks of this many neurons, each from its own stream: a rank draws only
# the chunks of its own rows, and W_init is the same for any number of ranks
INIT_CHUNK = 1024


def _chunk(cfg, c: int, d: int) -> np.random.Generator:
    return masks.stream(cfg.train.seed, masks.INIT, c, d)


def init_rows(cfg, lo: int, hi: int) -> np.ndarray:
    """Rows lo:hi of W_init: w_r ~ N(0, kappa^2 I), drawn chunk by chunk."""
    m, d = cfg.model.width, cfg.data.d
    W = np.empty((hi - lo, d), dtype=cfg.model.dtype)
    for c in range(lo // INIT_CHUNK, (hi - 1) // INIT_CHUNK + 1 if hi > lo else 0):
        first, last = c * INIT_CHUNK, min((c + 1) * INIT_CHUNK, m)
        block = _chunk(cfg, c, 0).standard_normal((last - first, d))
        b, e = max(first, lo), min(last, hi)
        with np.errstate(over="ignore"):  # a huge init_scale in float32: reported by check_start
            W[b - lo:e - lo] = cfg.model.init_scale * block[b - first:e - first]
    return W


def init_output_weights(cfg) -> np.ndarray:
    """a (m x c): entries uniform in {+1, -1}, fixed. Every rank holds all of a: m c numbers, small
    beside W's m d, and any rank's subnetworks may hold any neuron."""
    m, c = cfg.model.width, cfg.data.outputs
    chunks = [2.0 * _chunk(cfg, k, 1).integers(0, 2, size=(min(INIT_CHUNK, m - k * INIT_CHUNK), c)) - 1.0
              for k in range(-(-m // INIT_CHUNK))]
    return np.concatenate(chunks).astype(cfg.model.dtype)


def network_outputs(W_own, a_own, X, m: int, each=map, parts: int = 1, pattern=None) -> np.ndarray:
    """This rank's part of the full network's outputs on X (n x c): its own block of neurons, in
    `parts` pieces mapped by `each` (e.g. over threads); the ranks' parts add up. With `pattern`
    (n x rows, bool), also the activation patterns of its rows."""
    k = len(W_own)
    cuts = [i * k // parts for i in range(parts + 1)]
    patterns = [np.empty((X.shape[0], e - b) if pattern is not None else (0, 0), dtype=np.bool_)
                for b, e in zip(cuts, cuts[1:])]
    pieces = list(each(kernels.output_and_pattern, [W_own[b:e] for b, e in zip(cuts, cuts[1:])],
                       [a_own[b:e] for b, e in zip(cuts, cuts[1:])], repeat(X),
                       repeat(W_own.dtype.type(1.0 / math.sqrt(m))), patterns))
    if pattern is not None:
        for (b, e), P in zip(zip(cuts, cuts[1:]), patterns):
            pattern[:, b:e] = P
    return sum(pieces, np.zeros((X.shape[0], a_own.shape[1]), dtype=W_own.dtype))  # in block order


def network_loss(W_own, a_own, X, Y, m: int, comm, extra=(), each=map, parts: int = 1,
                 test=None, classify: bool = False, cross_entropy: bool = False,
                 lazy=None) -> tuple[dict, np.ndarray]:
    """The full network's evaluation: loss L(W) on the training data, and with `test` = (X_test,
    Y_test) of some rows the test loss, and with `classify` the accuracies (argmax of the outputs
    against the one-hot targets; NaN where they do not apply), and with `lazy` (a LazyRegime) its
    diagnostics, from the forward pass's activation patterns. One Allreduce sums the ranks'
    outputs, with the numbers in `extra` riding along (and one takes the largest row distance);
    returns (metrics, the sums of `extra`)."""
    Xt, Yt = test if test is not None and len(test[0]) else (X[:0], Y[:0])
    pattern = np.empty((X.shape[0], len(W_own)), dtype=np.bool_) if lazy is not None else None
    out = network_outputs(W_own, a_own, X, m, each, parts, pattern)
    out_t = network_outputs(W_own, a_own, Xt, m, each, parts) if len(Xt) else out[:0]
    diag, dw_max = lazy.local(W_own, pattern) if lazy is not None else (np.zeros(0), 0.0)
    extra = np.asarray(extra, dtype=np.float64)
    buf = np.concatenate([out.astype(np.float64).ravel(), out_t.astype(np.float64).ravel(), extra, diag])
    comm.sum(buf)
    outputs = buf[:out.size].reshape(Y.shape)
    outputs_t = buf[out.size: out.size + out_t.size].reshape(Yt.shape)
    nan = float("nan")
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported by the caller
        metrics = {"loss": kernels.residual(outputs.copy(), Y.astype(np.float64), cross_entropy),
                   "test_loss": kernels.residual(outputs_t.copy(), Yt.astype(np.float64), cross_entropy)
                   if len(Yt) else nan,
                   "train_acc": _accuracy(outputs, Y) if classify else nan,
                   "test_acc": _accuracy(outputs_t, Yt) if classify and len(Yt) else nan}
    sums = buf[out.size + out_t.size:]
    if lazy is not None:
        metrics.update(lazy.finish(sums[len(extra):], float(comm.maxima([dw_max])[0]), X.shape[0], m,
                                   comm.rank == 0))
    return metrics, sums[:len(extra)]


def _accuracy(outputs: np.ndarray, Y: np.ndarray) -> float:
    return float(np.mean(np.argmax(outputs, axis=1) == np.argmax(Y, axis=1)))


class LazyRegime:
    """The lazy-regime diagnostics of an evaluation (Du et al. 2019, section 5; docs/design.md):
    how far the weights moved from W_init, the fraction of activation patterns 1{<w_r, x_i> > 0}
    that differ from W_init's, and (n <= theory.gram_max_n) lambda_min of the finite-width Gram
    matrix H(W)_ij = (1/m) <x_i, x_j> sum_r 1{<w_r, x_i> > 0} 1{<w_r, x_j> > 0}. Each rank measures
    its own rows: W_init's rows are drawn again from their streams, INIT_CHUNK rows at a time
    (keeping them, or drawing them at once, would cost a copy of the rank's W), its activation
    patterns are kept as bits (n x rows / 8 bytes)."""

    def __init__(self, cfg, X, lo: int, hi: int, a_own):
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
        for j in range(0, self.hi - self.lo, INIT_CHUNK):
            e = min(j + INIT_CHUNK, self.hi - self.lo)
            yield j, e, init_rows(self.cfg, self.lo + j, self.lo + e)

    def local(self, W_own, active) -> tuple[np.ndarray, float]:
        """This rank's sums (||W - W0||^2, ||W0||^2, flips, and the n x n sum over its rows for H)
        and its largest ||w_r - w_r(0)||, from its rows and their activation patterns `active`."""
        moved, flips, dw_max = 0.0, 0, 0.0
        for j, e, W0 in self._init_chunks():
            with np.errstate(all="ignore"):  # non-finite weights are reported as divergence
                diff = W_own[j:e].astype(np.float64) - W0
                rows = np.einsum("ij,ij->i", diff, diff)
            moved += float(np.sum(rows))
            dw_max = np.maximum(dw_max, np.sqrt(rows.max(initial=0.0)))   # NaN stays NaN
            was = np.unpackbits(self.pattern0[:, j // 8:], axis=1, count=e - j).astype(bool)
            flips += np.count_nonzero(was != active[:, j:e])
        sums = [moved, self.w0_sq, float(flips)]
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


def pull(W_own, plan, comm) -> np.ndarray:
    """The rows this rank's subnetworks hold, each once, from their owners (plan.need order)."""
    if comm.size == 1:  # it owns them all: one copy, no exchange
        return W_own[plan.pull_index]
    pulled = np.empty((len(plan.need), W_own.shape[1]), dtype=W_own.dtype)
    comm.alltoall_rows(W_own[plan.pull_index], plan.pull_send, pulled, plan.pull_recv)
    return pulled


def push(W_own, trained: dict, plan, counts, comm, disjoint: bool) -> None:
    """In place on W_own: the trained rows go to their owners, which average them (shard.combine)."""
    if comm.size == 1:  # its own rows: average them where they are
        shard.combine(W_own, ((idx, trained[l]) for l, idx in plan.segments), disjoint, counts)
        return
    send = np.empty((sum(plan.push_send), W_own.shape[1]), dtype=W_own.dtype)
    at = 0
    for l, first, last in plan.push_slices:
        send[at: at + last - first] = trained[l][first:last]
        at += last - first
    trained.clear()  # their rows are in `send` now: free them before the receive buffer exists
    received = np.empty((sum(plan.push_recv), W_own.shape[1]), dtype=W_own.dtype)
    comm.alltoall_rows(send, plan.push_send, received, plan.push_recv)
    del send
    shard.combine(W_own, shard.received_pieces(received, plan.segments), disjoint, counts)


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


def record_lambda0(cfg, comm, X, out, log) -> None:
    n, t = X.shape[0], time.perf_counter()
    if comm.rank == 0 and n > 2000:
        log(f"computing the NTK Gram matrix of the data and its lambda_0 (n = {n}; a few seconds; "
            f"theory.max_n = 0 skips it) ...")
    lambda0, H = ntk_lambda0(X, comm, n <= cfg.theory.store_H_max_n)
    out("write_theory", lambda0, H)
    if comm.rank == 0:
        log(f"NTK Gram matrix of the data: lambda_0 = {lambda0:.4e} (n = {n}, {time.perf_counter() - t:.2f} s)")


def restore(cfg, start: dict, out, comm, bounds, dtype):
    """(rounds done, loss_init, this rank's rows of W, metrics history, eval history) from a
    checkpoint; each rank
    reads its own block, rank 0 rebuilds the run file's rows. The checkpoint's W and round are all
    the state there is: masks and minibatches are functions of (seed, round, subnet), so the rounds
    ahead are the ones an unbroken run takes. The checkpoint written before round 1 has no rows."""
    from .store import read_checkpoint_W

    first = start["round"]
    W = read_checkpoint_W(start["folder"], bounds[comm.rank], bounds[comm.rank + 1]).astype(dtype)
    history = {name: list(values) for name, values in start["metrics"].items()}
    evals = {name: list(values) for name, values in start["eval"].items()}
    if out.store is not None:
        mk = cfg.masks
        for i in range(first):
            M = masks.sample(mk.kind, mk.subnets, mk.keep, cfg.model.width, cfg.train.seed, i) \
                if cfg.output.record_masks else None
            out("append", {name: values[i] for name, values in history.items()}, M)
        for i in range(len(evals.get("round", []))):
            out("append_eval", {name: values[i] for name, values in evals.items()})
    save(out, comm, W, bounds, first)
    out.last_checkpoint = first
    return first, start["loss_init"], W, history, evals


def save(out, comm, W_own, bounds, rounds_done: int, *, init=False, weights=True, checkpoint=None) -> None:
    """Every rank's rows stream to rank 0, one block at a time, into the run file and (with
    `checkpoint`: its metrics and loss_init) a new checkpoint. Every rank calls it."""
    out("save", comm.blocks_at_root(W_own, bounds), rounds_done, init=init, weights=weights, checkpoint=checkpoint)


class Writer:
    """Rank 0's run file and checkpoints (store is None on the other ranks). A write that fails
    (a full disk, a quota, an I/O error) is held, not raised: rank 0 alone knows of it, so it rides
    as a flag in the next loss Allreduce and every rank stops together (a raise on rank 0 alone
    would leave the others waiting in a collective). Writes after a failure are skipped, but the
    blocks other ranks send are still received (a generator argument is always run to its end)."""

    def __init__(self, store):
        self.store, self.error = store, None
        self.last_checkpoint = None  # rounds done at the last checkpoint on disk (rank 0 knows)

    def __call__(self, method: str, *args, **kwargs) -> None:
        try:
            if self.store is not None and self.error is None:
                getattr(self.store, method)(*args, **kwargs)
                if kwargs.get("checkpoint"):
                    self.last_checkpoint = args[1]
        except (OSError, RuntimeError) as e:  # h5py reports failed writes as either
            self.error = e
        finally:
            for arg in args:
                if isinstance(arg, types.GeneratorType):
                    for _ in arg:
                        pass

    @property
    def failed(self) -> float:
        return float(self.error is not None)

    def failure(self, rounds_done: int, cfg) -> UserError:
        why = cause(self.error) if self.error is not None else "on rank 0"
        kept = (f"the last good checkpoint (round {self.last_checkpoint}) is kept: free space, then continue "
                f"with --resume {cfg.output.dir}") if self.last_checkpoint is not None else \
            "no checkpoint was written: free space, then start the run again"
        return UserError(f"output.dir {cfg.output.dir!r}: writing the run file or checkpoint failed "
                         f"({why}) after round {rounds_done}; the run stopped; {kept}")


def check_start(loss: float, X, Y, cfg) -> None:
    """A loss that is not finite before any step is the data or the initialisation, not the lr."""
    if math.isfinite(loss):
        return
    with np.errstate(all="ignore"):
        big_x, big_y = float(np.max(np.abs(X))), float(np.max(np.abs(Y)))
    raise UserError(f"the loss is {loss} at the initial weights, before any training step: the data or the "
                    f"initial weights are too large for model.dtype = {cfg.model.dtype!r} (largest |x| = "
                    f"{big_x:.3g}, |y| = {big_y:.3g}, model.init_scale = {cfg.model.init_scale:g}); rescale the "
                    f"data (data.normalize = 'unit' or 'standardize') or lower model.init_scale"
                    + (", or use float64" if cfg.model.dtype != "float64" else ""))


class Interrupted(Exception):
    """A rank was asked to stop (SIGTERM/SIGUSR1): the round finished and a checkpoint was written,
    or (checkpointed False) the stop came before the run's first checkpoint."""

    def __init__(self, rounds_done: int, checkpointed: bool = True):
        super().__init__(f"stopped after round {rounds_done}" if checkpointed else
                         "stopped before training; nothing to resume, start again")
        self.rounds_done, self.checkpointed = rounds_done, checkpointed


@contextlib.contextmanager
def side_by_side(workers: int):
    """A map that runs a rank's subnetworks on `workers` threads (the kernels release the GIL), or
    the plain map for one."""
    if workers == 1:
        yield map
        return
    with ThreadPoolExecutor(workers) as pool:
        yield pool.map


def run(cfg, comm, X, Y, store=None, log=print, start=None, stop_requested=lambda: False, workers=1,
        test=None) -> dict:
    """Train with a resolved config on data X (n x d), Y (n x c); `test` = (X_test, Y_test): held-out
    data, evaluated with the training data. Every rank calls this; `store`
    (the run file) is rank 0's alone. `start`: a checkpoint to continue from. `stop_requested`:
    polled once a round; when it is true on any rank, every rank stops after the round together.
    `workers`: threads that train this rank's subnetworks side by side.
    Returns the final weights and the per-round metrics."""
    out = Writer(store)
    p, m, tau, rounds = cfg.masks.subnets, cfg.model.width, cfg.train.local_steps, cfg.train.rounds
    bounds = [shard.owned(m, comm.size, k)[0] for k in range(comm.size)] + [m]
    lo, hi = bounds[comm.rank], bounds[comm.rank + 1]
    a = init_output_weights(cfg)
    W = init_rows(cfg, lo, hi)                      # this rank's rows of W_init: all it ever holds
    out("write_start", X, Y, a, (m, cfg.data.d), W.dtype, cfg.data.source)
    save(out, comm, W, bounds, 0, init=True)
    if X.shape[0] <= cfg.theory.max_n:
        record_lambda0(cfg, comm, X, out, log)

    keep, disjoint = cfg.masks.keep, cfg.masks.kind != "bernoulli"
    real = np.dtype(cfg.model.dtype).type   # scalars in the model's dtype keep float32 kernels in float32
    sub_scale = real(1.0 / (keep * math.sqrt(m)))  # the surrogate f_l's 1/xi times the NTK 1/sqrt(m)
    lr = real(config.step_size(cfg))
    round_of_plan = round_rows if cfg.train.plan == "rows" else round_outputs
    classify = cfg.data.task == "classification"
    cross_entropy = cfg.train.loss == "cross_entropy"
    lazy = LazyRegime(cfg, X, lo, hi, a[lo:hi])
    due = Cadence(cfg)

    with side_by_side(workers) as each:
        def evaluate(flags) -> tuple[dict, np.ndarray]:
            """The full network's scores and lazy-regime diagnostics, with the flags' sums."""
            return network_loss(W, a[lo:hi], X, Y, m, comm, flags, each, workers, test, classify, cross_entropy,
                                lazy)

        first, history, evals = 0, {}, {}
        if start is not None:
            first, loss_init, W, history, evals = restore(cfg, start, out, comm, bounds, W.dtype)
        # the loss at the starting weights; its Allreduce also carries any rank's stop request (a
        # signal during start-up) and a failed write on rank 0, so every rank acts on them together
        scores, (stops, failed) = evaluate((float(stop_requested()), out.failed))
        loss = scores["loss"]
        if start is None:
            loss_init = loss
            check_start(loss, X, Y, cfg)
            _record(evals, {"round": 0, **scores})
            out("append_eval", {"round": 0, **scores})
        if failed:
            raise out.failure(first, cfg)
        if stops:
            raise Interrupted(first, checkpointed=start is not None)
        if comm.rank == 0:
            log(f"round {first:>{due.digits}}/{rounds}  loss {loss:.4e}  "
                f"{'(initial weights)' if start is None else '(resumed from the checkpoint)'}")
        comm.take_counters()
        out("write_loss_init", loss_init)
        if start is None:  # --resume works from the first second on
            save(out, comm, W, bounds, 0, weights=False,
                 checkpoint={"metrics": history, "evals": evals, "loss_init": loss_init})
        out("publish")

        due.begin(first)
        t_mark = time.perf_counter()   # seconds_wall: from one round's row to the next, store writes included
        for k in range(first, rounds):
            t_start = time.perf_counter()
            M = masks.sample(cfg.masks.kind, p, keep, m, cfg.train.seed, k)
            rows = [np.flatnonzero(M[l]) for l in range(p)]  # each subnetwork's active neurons
            batches = [masks.minibatches(cfg.data.n, cfg.train.batch_size, tau, cfg.train.seed, k, l)
                       for l in range(p)]
            counts = M[:, lo:hi].sum(axis=0, dtype=np.int64)  # N_r of the owned neurons
            # 1. tau local steps of every subnetwork from W_k, on its active rows only, and
            # 2. the mean per neuron over the subnetworks that hold it, on its owner
            sub_loss_sum, seconds_local = round_of_plan(
                W, a, X, Y, rows, batches, counts, (lo, hi), sub_scale, lr, disjoint, comm, each, cross_entropy)

            # the subnetworks' losses, any rank's stop request and a failed write in one Allreduce,
            # with the full network's outputs when this round is evaluated
            t, comm_before = time.perf_counter(), comm.seconds
            flags = (sub_loss_sum, float(stop_requested()), out.failed)
            evaluating = due.evaluate(k + 1)
            if evaluating:
                scores, (sub_loss_sum, stops, failed) = evaluate(flags)
                loss = scores["loss"]
            else:
                loss, (sub_loss_sum, stops, failed) = None, comm.sums(flags)
            seconds_loss = time.perf_counter() - t - (comm.seconds - comm_before)   # its collectives count as comm
            seconds_comm, bytes_comm, bytes_recv = comm.take_counters()
            if failed:
                raise out.failure(k, cfg)
            check_diverged(loss, sub_loss_sum / p, loss_init, k + 1, cfg, X, out.last_checkpoint)

            now = time.perf_counter()
            if evaluating:
                _record(evals, {"round": k + 1, **scores})
                out("append_eval", {"round": k + 1, **scores})
            row = {"round": k + 1, "sub_loss": sub_loss_sum / p,
                   "seconds_compute": now - t_start - seconds_comm, "seconds_comm": seconds_comm,
                   "seconds_wall": now - t_mark, "bytes_comm": bytes_comm, "seconds_local": seconds_local,
                   "seconds_loss": seconds_loss, "bytes_recv": bytes_recv}
            t_mark = now
            _record(history, row)
            state = {"metrics": history, "evals": evals, "loss_init": loss_init}
            end_of_round(row, scores if evaluating else None, M if cfg.output.record_masks else None, state,
                         stop=stops > 0, due=due, out=out, comm=comm, W=W, bounds=bounds, log=log, cfg=cfg)
    if comm.agree(out.failed):  # the last round's writes: no Allreduce follows to carry the flag
        raise out.failure(rounds, cfg)
    return {"W": W, "loss_init": loss_init, "metrics": {k: np.array(v) for k, v in history.items()},
            "eval": {k: np.array(v) for k, v in evals.items()}}


class Cadence:
    """What is due after a round: an evaluation of the full network every output.eval_every rounds;
    weights into the run file and a log line every output.log_every rounds (by default a multiple
    of eval_every, so logged rounds show the loss); a checkpoint every output.checkpoint_every; all
    after the last round, and all but the evaluation at a stop."""

    def __init__(self, cfg):
        self.rounds, self.first, self.t0 = cfg.train.rounds, 0, time.perf_counter()
        self.eval_every = cfg.output.eval_every or 1
        # by default about 20 lines a run, at evaluated rounds (a multiple of eval_every)
        self.log_every = cfg.output.log_every or -(-max(1, self.rounds // 20) // self.eval_every) * self.eval_every
        self.checkpoint_every = cfg.output.checkpoint_every
        self.digits = len(str(self.rounds))
        self.logged = False

    def evaluate(self, done: int) -> bool:
        """The same rounds in a resumed run as in an unbroken one (the launch's first is not special)."""
        return done == self.rounds or done % self.eval_every == 0

    def weights(self, done: int, stop: bool) -> bool:
        return stop or done == self.rounds or done % self.log_every == 0

    def checkpoint(self, done: int, stop: bool) -> bool:
        return stop or done == self.rounds or done % self.checkpoint_every == 0

    def log(self, done: int, stop: bool) -> bool:
        first, self.logged = not self.logged, True  # the first round of a launch is always shown
        return first or self.weights(done, stop)

    def begin(self, first: int) -> None:
        """The launch trains from round `first`: progress counts from here and now."""
        self.first, self.t0 = first, time.perf_counter()

    def progress(self, done: int) -> str:
        """Elapsed time of this launch, rounds per second and the time left at that rate."""
        elapsed = time.perf_counter() - self.t0
        rate = (done - self.first) / elapsed if elapsed > 0 else 0.0
        left = (self.rounds - done) / rate if rate > 0 else 0.0
        return f"elapsed {_duration(elapsed)}  {rate:.3g} rounds/s  ETA {_duration(left)}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes}m{s:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def end_of_round(row: dict, scores: dict | None, M, state: dict, *, stop: bool, due: Cadence, out, comm, W,
                 bounds, log, cfg) -> None:
    """The round's row into the run file; the weights, a checkpoint (of `state`: the histories
    and loss_init) and a log line when due; at a stop, Interrupted once its checkpoint is known to
    be on disk. `scores`: the full network's evaluation, when this round had one."""
    done = row["round"]
    out("append", row, M)
    weights, checkpoint = due.weights(done, stop), due.checkpoint(done, stop)
    if weights or checkpoint:
        save(out, comm, W, bounds, done, weights=weights, checkpoint=state if checkpoint else None)
    if due.log(done, stop) and comm.rank == 0:
        shown = f"{scores['loss']:.4e}" if scores is not None else "-" * 10
        held = "".join(f"  {name} {scores[name]:.4g}" for name in ("test_loss", "train_acc", "test_acc")
                       if scores is not None and not math.isnan(scores[name]))
        log(f"round {done:>{due.digits}}/{due.rounds}  loss {shown}{held}  sub_loss {row['sub_loss']:.4e}  "
            f"compute {row['seconds_compute']:.3f}s  comm {row['seconds_comm']:.3f}s  "
            f"sent {row['bytes_comm'] / 1e6:.2f} MB  {due.progress(done)}")
    if stop and done < due.rounds:
        if comm.agree(out.failed):  # the stop's checkpoint must have reached the disk
            raise out.failure(done, cfg)
        raise Interrupted(done)


def check_diverged(loss: float | None, sub_loss: float, loss_init: float, done: int, cfg, X,
                   last_checkpoint) -> None:
    """A loss 1000 x the initial one (DIVERGED) or not finite: the steps are too large. Between
    evaluations (loss None) the subnetworks' loss, which every round has, must be finite."""
    what = "the loss"
    if loss is None:
        if math.isfinite(sub_loss):
            return
        loss, what = sub_loss, "the subnetworks' loss"
    elif math.isfinite(loss) and loss <= DIVERGED * loss_init:
        return
    big_x = float(np.max(np.linalg.norm(X, axis=1)))
    large_x = (f"; the inputs are large (largest ||x|| = {big_x:.3g}), which shrinks the stable step: "
               f"consider data.normalize = 'unit'") if big_x > 10 else ""
    scaled = f", a step of {config.step_size(cfg):g} with train.lr_scaling = 'keep'" \
        if cfg.train.lr_scaling == "keep" else ""
    raise UserError(f"{what} became {loss:.4g} in round {done} (initial {loss_init:.4g}): "
                    f"training diverged; lower train.lr (now {cfg.train.lr:g}{scaled}): a subnetwork's step is "
                    f"about 1/keep times stronger, so small masks.keep needs a small lr{large_x} "
                    f"(the last good checkpoint, round {last_checkpoint}, is kept)")


def round_rows(W, a, X, Y, rows, batches, counts, owned, sub_scale, lr, disjoint, comm, each, cross_entropy):
    """Plan "rows" (IST's pattern): pull the rows this rank's subnetworks hold from their owners,
    run each subnetwork's tau steps in one kernel call (side by side on `each`'s threads), push the
    trained rows back to their owners, which average them. Returns (sub-loss sum, seconds local)."""
    plan = shard.Exchange(rows, len(a), comm.size, comm.rank)
    pulled = pull(W, plan, comm)
    trained = {l: _rows_of(pulled, plan.position[l]) for l in plan.subnets}
    del pulled
    t = time.perf_counter()
    sub_losses = list(each(kernels.local_steps, trained.values(), [a[rows[l]] for l in plan.subnets],
                           repeat(X), repeat(Y), repeat(sub_scale), repeat(lr), [batches[l] for l in plan.subnets],
                           repeat(cross_entropy)))
    seconds_local = time.perf_counter() - t
    push(W, trained, plan, counts, comm, disjoint)
    return sum(sub_losses), seconds_local  # in subnet order, however they ran


def round_outputs(W, a, X, Y, rows, batches, counts, owned, sub_scale, lr, disjoint, comm, each, cross_entropy):
    """Plan "outputs" (neurons never move): every rank steps its own rows of every subnetwork
    (one working copy per holding subnetwork). Each local step sums the ranks' parts of the p
    subnetworks' outputs with one Allreduce, then each rank takes the gradient step of its rows
    from the whole residual. Returns (sub-loss sum, seconds in the local steps' kernels)."""
    lo, hi = owned
    p, (n, c), d = len(rows), Y.shape, X.shape[1]
    mine = [r[np.searchsorted(r, lo): np.searchsorted(r, hi)] - lo for r in rows]
    W_l = [W[i] for i in mine]                            # working copies of this rank's rows
    aT_l = [np.ascontiguousarray(a[lo:hi][i].T) for i in mine]
    tau, nb = batches[0].shape[0], batches[0].shape[1] or n
    out = np.empty((p, nb, c), dtype=W.dtype)
    A, G = zip(*(kernels.workspaces(len(i), d, nb, W.dtype) for i in mine))
    step = np.float64(lr) * np.float64(sub_scale) / nb
    seconds_local = 0.0
    for t in range(tau):
        Xb = [X if not batches[l].shape[1] else X[batches[l][t]] for l in range(p)]
        Yb = [Y if not batches[l].shape[1] else Y[batches[l][t]] for l in range(p)]
        t0 = time.perf_counter()
        list(each(kernels.part_forward, Xb, W_l, aT_l, repeat(sub_scale), A, out))
        seconds_local += time.perf_counter() - t0
        comm.sum(out)                                     # the subnetworks' outputs, whole
        t0 = time.perf_counter()
        R = out   # the residuals, in place; sub_loss as plan rows has it: the losses of this forward pass
        sub_losses = [kernels.residual(R[l], Yb[l], cross_entropy) for l in range(p)]
        list(each(kernels.part_backward, Xb, R, W_l, aT_l, repeat(step), A, G))
        seconds_local += time.perf_counter() - t0
    del A, G, out, R                                  # before the combine's sum buffer exists
    shard.combine(W, zip(mine, W_l), disjoint, counts)
    # every rank has all p losses; the round loop sums this over the ranks: rank 0 alone counts them
    return (sum(sub_losses) if comm.rank == 0 else 0.0), seconds_local


def _rows_of(pulled: np.ndarray, position: np.ndarray) -> np.ndarray:
    """A subnetwork's rows of the pulled buffer: a view when they are one run of it (IST with one
    subnetwork per rank), else a copy."""
    if len(position) and position[-1] - position[0] + 1 == len(position):
        return pulled[position[0]: position[-1] + 1]
    return pulled[position]


def _record(history: dict, row: dict) -> None:
    for name, value in row.items():
        history.setdefault(name, []).append(value)
