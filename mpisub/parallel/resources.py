"""What a run needs, estimated from its config, against what the machine offers: memory per rank
and disk for the run folder. Checked before anything is allocated or written, so a run that
cannot fit stops with one line saying how much it needs and what would fit, instead of a
MemoryError, an OOM kill or a half-written run file (docs/design.md, "Sizes before work").

"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mpisub._util.errors import UserError
from mpisub.nn.masks import KINDS
from mpisub.parallel import costs
from mpisub.parallel.threads import split_cores

if TYPE_CHECKING:  # types only: never imported at run time
    from mpisub.config import Config

BASE = 224 * 2**20   # interpreter, numpy, scipy, numba, h5py, MPI (190 MiB measured) and OpenBLAS's buffers


def memory_per_rank(cfg: Config, ranks: int, workers: int = 1, resuming: bool = False,
                    plan: str | None = None) -> dict:
    """Peak bytes one rank needs, by part (rank 0, which also holds the NTK Gram matrix when it is
    computed). Follows the round of docs/design.md, section 3: a rank holds its owned rows, the
    rows its subnetworks pull, their trained copies and the push buffers, never all of W; and its
    part of the round's masks and exchange plan, O(m p / K + m), never p x m."""
    s, m, d, n, c = np.dtype(cfg.model.dtype).itemsize, cfg.model.width, cfg.data.d, cfg.data.n, cfg.data.outputs
    own, row = -(-m // ranks), d * s
    plan = plan or cfg.train.plan
    weights = _round_rows(cfg, ranks, workers) if plan != "outputs" else _outputs_rows(cfg, ranks, workers)
    train = {"weights": int(weights * row + (own * row if resuming else 0)),
             "checkpoint copy": own * row,                 # its rows as a background shard write holds them
             "masks": _bookkeeping(cfg, ranks),
             "data": n * (d + c) * s}                      # the node's shared window, as this rank maps it
    if n <= cfg.theory.max_n:
        train["ntk"] = n * n * 8 + 4 * (n // ranks + 1) * n * 8
    loading = n * (d + c) * (8 + s)                       # a file read in float64 and copied into the window
    if loading > sum(train.values()):                     # before any weights exist
        train["data loading"] = loading - sum(train.values())
    return {**train, "base": BASE}


def _workspace(cfg, k: float, workers: int) -> float:
    """Bytes of the local steps' workspaces for subnetworks of k rows: the activations (a batch
    by k), the gradient's block and the evaluation's (n by 512)."""
    from mpisub.nn.kernels import GRAD_BYTES  # lazy, for start-up time: numba, which settling a config does not need

    s, d, n = np.dtype(cfg.model.dtype).itemsize, cfg.data.d, cfg.data.n
    block = max(1, GRAD_BYTES // (d * s))                  # the gradient's rows per block
    return workers * ((cfg.train.batch_size or n) * k + min(k, block) * d + n * 512) * s


def _round_rows(cfg, ranks: int, workers: int) -> float:
    """Plan rows: the most rows of W a rank holds at once in a round, phase by phase."""
    m, p, xi = cfg.model.width, cfg.masks.subnets, cfg.masks.keep
    kind, here, own = KINDS[cfg.masks.kind], p // ranks, -(-m // ranks)
    shared = not kind.disjoint                             # a neuron may be in several subnetworks
    pulled = kind.held_fraction(here, xi) * m              # rows this rank's subnetworks hold, once each
    trained = here * xi * m                                # their rows
    views = not (shared and here > 1) and (here == 1 or ranks == 1)   # their rows are runs of the pulled buffer
    held = pulled if views else trained                    # what the local steps hold
    work = _workspace(cfg, xi * m, workers) / (cfg.data.d * np.dtype(cfg.model.dtype).itemsize)
    sums = own if shared else 0                            # the combine's sums of shared rows
    if ranks == 1:                                         # no exchange: the rows are averaged where they are
        return max(own + pulled + (0 if views else trained), own + held + work, own + held + sums)
    pull_send = own * (ranks * kind.held_fraction(here, xi) if shared else 1)
    received = own * (p * xi if shared else 1)
    packed = trained if here > 1 else 0                    # one subnetwork's rows are sent as they are
    return max(own + pull_send + pulled,                   # pull
               own + pulled + (0 if views else trained),   # each subnetwork's rows copied out
               own + held + work,                          # local steps
               own + held + packed,                        # packing the push
               own + max(held - packed, 0) + packed + received + sums)   # receiving it, combining


def _outputs_rows(cfg, ranks: int, workers: int) -> float:
    """Plan outputs: neurons never move; one working copy per holding subnetwork, and the
    activations of every subnetwork's part."""
    m, p, xi, n, c, d = cfg.model.width, cfg.masks.subnets, cfg.masks.keep, cfg.data.n, cfg.data.outputs, cfg.data.d
    own, nb = -(-m // ranks), cfg.train.batch_size or n
    copies = p * xi * own
    samples = nb + (n if nb != n else 0)                   # the last, full-batch forward has its own with minibatches
    activations = (copies + p * c) * samples / d           # A per subnetwork, the outputs
    workspace = _workspace(cfg, xi * m, workers) / (d * np.dtype(cfg.model.dtype).itemsize)
    return own + copies + max(activations + workspace, own if not KINDS[cfg.masks.kind].disjoint else 0)


def _bookkeeping(cfg, ranks: int) -> int:
    """A round's masks and exchange plan as one rank holds them (masks.RoundMasks, shard.Exchange):
    a's signs (int8), the draw of the round's streams, its subnetworks' neurons (thrice: the
    rows, their places in the pulled buffer and in the send buffer), the union of them (twice),
    the (subnet, neuron) pairs of its owned neurons (five arrays of them), the K-long counts."""
    m, p, xi, c = cfg.model.width, cfg.masks.subnets, cfg.masks.keep, cfg.data.outputs
    kind, here, own = KINDS[cfg.masks.kind], max(1, p // ranks), -(-m // ranks)
    pairs = own * (p * xi if not kind.disjoint else 1)
    indices = 3 * here * xi * m + 2 * kind.held_fraction(here, xi) * m + 5 * pairs
    return int(m * c + kind.draw_bytes(m, own, p) + 8 * indices + 8 * 8 * ranks)


def plan_costs(cfg: Config, ranks: int) -> dict:
    """Per plan, the bytes one rank sends plus receives per round (as bytes_comm + bytes_recv count
    them) and the modelled seconds of those collectives (docs/design.md, section 3). rows: two
    pairwise Alltoallv, (K-1) alpha + bytes beta each; outputs: tau Allreduces of the p
    subnetworks' outputs (one per local step), Rabenseifner: 2 log K alpha + 2 (K-1)/K
    bytes beta each. Both leave out the loss Allreduce they share."""
    K, p, xi, m = ranks, cfg.masks.subnets, cfg.masks.keep, cfg.model.width
    s = np.dtype(cfg.model.dtype).itemsize
    if K == 1:
        return {"rows": (0.0, 0.0), "outputs": (0.0, 0.0)}
    here = p / K
    held = KINDS[cfg.masks.kind].held_fraction(here, xi)
    one_way = (K - 1) / K * m * (held + here * xi) / 2 * cfg.data.d * s   # each Alltoallv, each way
    n, c, tau = cfg.data.n, cfg.data.outputs, cfg.train.local_steps
    buffer = p * (cfg.train.batch_size or n) * c * s
    # bytes as the run file counts them: an Allreduce's buffer goes out once and comes back once
    return {"rows": (4 * one_way, 2 * costs.alltoallv(K, one_way)),
            "outputs": (tau * 2 * buffer, tau * costs.allreduce(K, buffer))}


@dataclass(frozen=True)
class Node:
    """What a rank has: the ranks that share its node's memory, and its cores (0: the thread
    variables were set by the user)."""
    ranks: int = 1
    cores: int = 0

    def workers(self, cfg: Config, ranks: int) -> int:
        """Subnetwork workers (threads) of a rank (threads.split_cores)."""
        return split_cores(self.cores, cfg.masks.subnets // ranks)[0] if self.cores else 1

    def available(self, cfg: Config) -> int | None:
        """Bytes one rank may use: its share of the node's available memory, at most
        train.memory_limit_mb; None where it cannot be told."""
        avail, limit = memory_available(self.ranks), cfg.train.memory_limit_mb * 2**20
        return limit if limit and (avail is None or limit < avail) else avail


def choose_plan(cfg: Config, ranks: int, node: Node | None = None, resuming: bool = False) -> tuple[str, str]:
    """The plan to run and why: the one asked for, or (auto) the one whose collectives the cost
    model says take less time (latency included: tau small Allreduces can cost more than two
    larger Alltoallv), unless only the other fits the rank's memory (`node`); rows when they tie
    (K = 1); outputs when p is not a multiple of K."""
    cost = plan_costs(cfg, ranks)
    costs = ", ".join(f"{plan} {b / 1e6:.3g} MB and {t * 1e6:.3g} us" for plan, (b, t) in cost.items())
    costs += " per rank per round (sent + received; alpha-beta model)"
    if cfg.train.plan != "auto":
        return cfg.train.plan, f"as set ({costs})"
    if cfg.masks.subnets % ranks:
        return "outputs", f"auto: {cfg.masks.subnets} subnetwork(s) over {ranks} ranks need plan outputs ({costs})"
    plan = "outputs" if cost["outputs"][1] < cost["rows"][1] else "rows"
    other = "rows" if plan == "outputs" else "outputs"
    avail = node.available(cfg) if node is not None else None
    if node is not None and avail is not None:
        need = {p: sum(memory_per_rank(cfg, ranks, node.workers(cfg, ranks), resuming, p).values()) for p in cost}
        if need[plan] > avail >= need[other]:
            return other, (f"auto: {plan} would be faster by the model but needs {need[plan] / 2**30:.2f} GiB per "
                           f"rank where {avail / 2**30:.2f} GiB is available; {other} needs "
                           f"{need[other] / 2**30:.2f} GiB ({costs})")
    return plan, f"auto: the faster by the model ({costs})"


def memory_available(ranks_on_node: int) -> int | None:
    """Bytes one rank may use: what the node (or the job's cgroup) has available, split between the
    ranks on it. None where it cannot be told."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # a batch job's limit (Slurm's cgroup), cgroup v2
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            free = max(0, int(limit) - used)
            avail = free if avail is None else min(avail, free)
    except (OSError, ValueError):
        pass
    return None if avail is None else avail // max(1, ranks_on_node)


def check_memory(cfg: Config, ranks: int, node: Node, resuming: bool = False) -> None:
    limit_mb, ranks_on_node, workers = cfg.train.memory_limit_mb, node.ranks, node.workers(cfg, ranks)
    avail = node.available(cfg)
    if avail is None:
        return
    need = memory_per_rank(cfg, ranks, workers, resuming)
    total = sum(need.values())
    if total <= avail:
        return
    gib = 2**30
    by_limit = bool(limit_mb) and avail == limit_mb * 2**20
    source = f"train.memory_limit_mb = {limit_mb} allows {avail / gib:.2f} GiB" if by_limit else \
        f"this node has {avail * ranks_on_node / gib:.2f} GiB available for its {ranks_on_node} rank(s), " \
        f"{avail / gib:.2f} GiB each"
    split = ", ".join(f"{name} {v / gib:.2f}" for name, v in need.items())
    fits = _widest_that_fits(cfg, ranks, workers, resuming, avail)
    if fits:
        fit = f"at most model.width = {fits} fits"
    else:
        fit = "not even the narrowest network fits (the libraries and the data alone need more)"
    more = _fewest_ranks_that_fit(cfg, ranks, workers, resuming, avail)
    if more:
        fit += f", or with mpirun -n {more} (each rank holds 1/K of W) on nodes with this much memory per rank"
    if by_limit:
        fit += "; or raise train.memory_limit_mb"
    raise UserError(f"model.width = {cfg.model.width} needs about {total / gib:.2f} GiB per rank ({split} GiB), "
                    f"but {source}; {fit}")


def _widest_that_fits(cfg, ranks, workers, resuming, avail) -> int:
    def need(m):
        return sum(memory_per_rank(cfg.replace({"model.width": m}), ranks, workers, resuming).values())

    lo, hi = 0, cfg.model.width  # need(hi) > avail
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if need(mid) <= avail else (lo, mid)
    return lo if lo >= cfg.masks.subnets else 0


def _fewest_ranks_that_fit(cfg, ranks, workers, resuming, avail) -> int | None:
    """The fewest ranks above `ranks` (up to 4096) at which one rank's share fits `avail`: divisors
    of p, or any K when p is one per rank (then p = K); None if none does."""
    p, kind = cfg.masks.subnets, KINDS[cfg.masks.kind]
    for K in range(ranks + 1, 4097):
        trial = cfg
        if p == ranks and not kind.keep_settable and kind.auto_subnets(K) == K:   # one subnetwork per rank
            trial = cfg.replace({"masks.subnets": K, "masks.keep": kind.keep(K)})
        elif p % K:
            continue
        if sum(memory_per_rank(trial, K, workers, resuming).values()) <= avail:
            return K
    return None
