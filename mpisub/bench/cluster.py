"""`mpisub-bench --scaling`, the cluster half: a round of IST (partition, p = K, plan rows) on a
cluster that shares what clusters share, with checkpoints on (docs/design.md, section 3).

A round at K ranks, nodes of `ranks_per_node` ranks, one NIC per node:
  local steps    4 n d (m / K) tau flops at the kernel's measured rate (one thread; a rank of a
                 full node), times 1 + jitter sqrt(2 ln K): a synchronous round waits for the slowest
                 of K ranks (stragglers, as a stated jitter)
  bookkeeping    measured here (bench.strong: one rank's round code in process)
  two exchanges  flat Alltoallv of W/K (K-1)/K bytes per rank: the bytes that leave a node cross
                 its one NIC, shared by its ranks; the rest are copies in memory; a latency per
                 non-empty destination (min(K - 1, m / K), since a rank's m/K rows spread over the
                 owners), inter-node `alpha`, intra-node `alpha_node`
  the flags      an Allreduce of FLAGS float64 (Rabenseifner)
  evaluation     EVAL_OVERHEAD x its two products (4 n d m / K flops) and an Allreduce of n c, once
                 every eval_every rounds (the default cadence, resolve.auto_eval_every)
  checkpoint     once every checkpoint_every rounds (the default, 10): sharded and asynchronous (0.6),
                 a copy of the rank's rows at memory speed, and its write, in the background, blocks
                 only where it outlasts the rounds until the next one (the shards share the file
                 system's bandwidth `fs`); before 0.6, rank 0 wrote all of W into the checkpoint and
                 the run file, and hashed it, at its measured speed, while the others waited.
Each input is named measured (here, by calibrate(); the machine's load is printed) or assumed.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np

from mpisub.bench.strong import CASES, case_config
from mpisub.io import shards
from mpisub.io.readback import read_run
from mpisub.parallel import costs
from mpisub.study.launch import executables, set_args, thread_env
from mpisub.train.evaluate import FLAGS
from mpisub.train.resolve import EVAL_OVERHEAD, cost_eval_every


@dataclass(frozen=True)
class Cluster:
    """The cluster the model runs on: what is assumed, and what calibrate() measures here."""
    ranks_per_node: int = 64          # assumed: 64 single-thread ranks a node
    nic: float = 25e9                 # assumed: one HDR InfiniBand NIC (200 Gb/s) a node, bytes/s
    alpha: float = 1.5e-6             # assumed: seconds per message between nodes
    fs: float = 50e9                  # assumed: the parallel file system's bandwidth for all ranks, bytes/s
    jitter: float = 0.02              # assumed: a rank's round varies by 2 % (sd)
    alpha_node: float = 1e-6          # measured: seconds per message within a node (ping-pong)
    copy: float = 5e9                 # measured: bytes/s of a large message within a node
    write: float = 1e9                # measured: bytes/s of one rank's shard write (HDF5, sha256, fsync)
    flops: float = 2e10               # measured: the kernel's flop/s on one thread

    def inputs(self) -> str:
        """The inputs, each labelled measured or assumed."""
        measured = ("alpha_node", "copy", "write", "flops")
        return "; ".join(f"{k} = {v:.3g} ({'measured' if k in measured else 'assumed'})"
                         for k, v in asdict(self).items())


@dataclass(frozen=True)
class Case:
    """The modelled job: IST at m neurons, d inputs, n samples, tau local steps, float64."""
    m: int = 2**20
    d: int = 512
    n: int = 1024
    tau: int = 5
    c: int = 1
    eval_every: int = 12              # resolve.auto_eval_every of IST at n = 1024
    checkpoint_every: int = 10        # output.checkpoint_every's default

    @property
    def W_bytes(self) -> float:
        return 8.0 * self.m * self.d


def exchange(cl: Cluster, K: int, one_way: float, destinations: int) -> float:
    """Seconds of one flat Alltoallv in which each rank sends (and receives) `one_way` bytes spread
    evenly over `destinations` partners: a node's off-node bytes share its NIC."""
    if K == 1:
        return 0.0
    local = min(K, cl.ranks_per_node)
    off = (K - local) / (K - 1)                      # the share of a rank's partners on other nodes
    wire = local * one_way * off / cl.nic            # the node's NIC carries all its ranks' off-node bytes
    copies = one_way * (1 - off) / cl.copy
    latency = destinations * (off * cl.alpha + (1 - off) * cl.alpha_node)
    return latency + wire + copies


def round_seconds(cl: Cluster, case: Case, K: int, bookkeeping: float, sharded: bool = True) -> dict:
    """One rank's round at K ranks, by part (seconds), checkpoints and evaluations spread over the
    rounds between them."""
    rows = case.m / K
    local = 4 * case.n * case.d * rows * case.tau / cl.flops * (1 + cl.jitter * math.sqrt(2 * math.log(K)))
    one_way = (K - 1) / K * case.W_bytes / K
    comm = 2 * exchange(cl, K, one_way, int(min(K - 1, rows))) + costs.allreduce(K, FLAGS * 8)
    evaluation = (EVAL_OVERHEAD * 4 * case.n * case.d * rows / cl.flops
                  + costs.allreduce(K, case.n * case.c * 8)) / case.eval_every
    busy = local + bookkeeping + comm + evaluation
    if sharded:
        write = case.W_bytes / K / min(cl.write, cl.fs / K)
        checkpoint = case.W_bytes / K / cl.copy + max(0.0, write - case.checkpoint_every * busy)
    else:
        checkpoint = 2 * case.W_bytes / cl.write    # rank 0: W into the checkpoint and the run file
    parts = {"local": local, "bookkeeping": bookkeeping, "comm": comm, "evaluation": evaluation,
             "checkpoint": checkpoint / case.checkpoint_every}
    return {**parts, "round": sum(parts.values())}


def efficiency(cl: Cluster, case: Case, books: dict, sharded: bool = True) -> dict:
    """{K: (the round's parts, T(1) / (K T(K)))} for the K of `books` (K: measured bookkeeping)."""
    one = round_seconds(cl, case, 1, books[1], sharded)["round"]
    out = {}
    for K, book in sorted(books.items()):
        r = round_seconds(cl, case, K, book, sharded)
        out[K] = (r, one / (K * r["round"]))
    return out


PINGPONG = r"""
import sys, time
import numpy as np
from mpi4py import MPI
c = MPI.COMM_WORLD
out = {}
for size in (8, 64 * 2**20):
    buf = np.zeros(size // 8)
    reps = 200 if size < 1024 else 5
    c.Barrier(); t = time.perf_counter()
    for _ in range(reps):
        if c.rank == 0:
            c.Send(buf, 1); c.Recv(buf, 1)
        else:
            c.Recv(buf, 0); c.Send(buf, 0)
    out[size] = (time.perf_counter() - t) / reps / 2
if c.rank == 0:
    print(out[8], 64 * 2**20 / out[64 * 2**20])
"""


def calibrate(flops: float) -> Cluster:
    """The measured inputs, here: a ping-pong between two ranks (mpirun -n 2: latency and large-
    message bandwidth within the node), one shard write of 64 MiB (HDF5, sha256, fsync), and the
    kernel's flop rate (given, from bench.strong)."""
    mpirun, _ = executables()
    r = subprocess.run([mpirun, "-n", "2", sys.executable, "-c", PINGPONG], capture_output=True, text=True,
                       env=thread_env(1), timeout=600)
    if r.returncode:
        raise RuntimeError(f"the ping-pong failed:\n{r.stderr[-2000:]}")
    alpha_node, copy = (float(x) for x in r.stdout.split())
    rows = np.random.default_rng(0).standard_normal((2**13, 1024))
    with tempfile.TemporaryDirectory(prefix="mpisub-cluster-") as tmp:
        t = time.perf_counter()
        shards.write(tmp, shards.name("W", "00000000", 0, 1, 0), rows, 0)
        write = rows.nbytes / (time.perf_counter() - t)
    return Cluster(alpha_node=alpha_node, copy=copy, write=write, flops=flops)


def load() -> str:
    """The machine's load while it measured (the 1-minute load average, and its cores)."""
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


TARGET = 0.05          # time to a loss of 5 % of the initial one
LR = 1.0               # stable for every p here (4, the default, diverges at p = 2)
SUBNETS = (2, 4, 8, 16, 32, 64)


def rounds_to_target(folder: str, subnets: tuple[int, ...] = SUBNETS, rounds: int = 100) -> dict:
    """{p: rounds until the full network's loss is TARGET x its initial loss (None: not within
    `rounds`)}, measured with `mpirun -n 1 mpisub-train` on the reduced problem (the built-in
    synthetic data, m = 4096, IST with p subnetworks of keep 1/p, tau = 5, evaluated every round).
    K does not change the rounds (the bits are the same for any K), so one rank measures every p."""
    mpirun, train = executables()
    out = {}
    for p in subnets:
        values = {"masks.kind": "partition", "masks.subnets": p, "train.rounds": rounds, "train.lr": LR,
                  "output.eval_every": 1, "train.plan": "rows", "theory.max_n": 0,
                  "output.dir": os.path.join(folder, f"p{p}")}
        r = subprocess.run([mpirun, "-n", "1", train, *set_args(values)], capture_output=True, text=True,
                           env=thread_env(1), timeout=1800)
        if r.returncode:
            raise RuntimeError(f"mpisub-train failed at p = {p}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        ev = read_run(str(values["output.dir"]), arrays=False)["eval"]
        hit = np.flatnonzero(ev["loss"] <= TARGET * ev["loss"][0])
        out[p] = int(ev["round"][hit[0]]) if len(hit) else None
    return out


def cluster_main(strong: list[dict], width: int) -> dict:
    """The efficiency table with checkpoints on (sharded, and before 0.6 rank 0's), and the time
    to a target loss, from bench.strong's measured rows of case "ist" (its bookkeeping, and its
    local steps' flop rate); prints both and returns them."""
    rows = [r for r in strong if r["case"] == "ist"]
    c, top = CASES["ist"], max(rows, key=lambda r: r["K"])
    cl = calibrate(4 * c["n"] * c["d"] * c["tau"] * (width / top["K"]) / top["local"])   # the kernel's flop/s
    case = Case(m=width, d=c["d"], n=c["n"], tau=c["tau"],
                eval_every=cost_eval_every(case_config(width, 4, c["d"], c["n"], c["tau"])))
    books = {r["K"]: r["bookkeeping"] for r in rows}
    sharded, before = efficiency(cl, case, books), efficiency(cl, case, books, sharded=False)
    print(f"\n# a cluster's round (modelled; {load()} while measuring): IST m = {width}, d = {case.d}, n = {case.n}, "
          f"tau = {case.tau}, float64 (W = {case.W_bytes / 2**30:.1f} GiB), evaluations every {case.eval_every} "
          f"rounds, a checkpoint every {case.checkpoint_every}\n# inputs: {cl.inputs()}; bookkeeping: measured "
          f"(bench.strong)")
    print(f"{'K':>5} | {'nodes':>5} | {'local':>8} | {'book':>7} | {'comm':>7} | {'eval':>7} | {'ckpt':>8} | "
          f"{'round s':>8} | {'efficiency':>10} | {'rank 0 writes all of W (< 0.6)':>30}")
    for K, (r, eff) in sharded.items():
        nodes = -(-K // cl.ranks_per_node)
        print(f"{K:>5} | {nodes:>5} | {r['local']:>8.4f} | {r['bookkeeping']:>7.4f} | {r['comm']:>7.4f} | "
              f"{r['evaluation']:>7.4f} | {r['checkpoint']:>8.5f} | {r['round']:>8.4f} | {eff:>10.1%} | "
              f"{before[K][1]:>30.1%}")
    with tempfile.TemporaryDirectory(prefix="mpisub-target-") as tmp:
        needed = rounds_to_target(tmp)
    print(f"\n# time to a loss of {TARGET:g} x the initial (rounds: measured with mpirun -n 1 on the reduced problem, "
          f"m = 4096, n = 512, d = 16, tau = 5; seconds per round: the model above at K = p)")
    print(f"{'K = p':>5} | {'rounds':>7} | {'round s':>8} | {'time s':>8} | {'vs K = 1':>8}")
    base = None
    target = {}
    for p, n_rounds in needed.items():
        near = min(books, key=lambda K: (abs(math.log(K / p)), K))     # the measured K nearest p
        r = round_seconds(cl, case, p, books[near])["round"]
        time_s = n_rounds * r if n_rounds is not None else float("nan")
        base = time_s if base is None else base
        target[p] = {"rounds": n_rounds, "round_seconds": r, "seconds": time_s}
        print(f"{p:>5} | {n_rounds if n_rounds is not None else '> 100':>7} | {r:>8.4f} | {time_s:>8.2f} | "
              f"{time_s / base:>8.2f}")
    return {"cluster": {"inputs": asdict(cl), "sharded": {K: e for K, (_, e) in sharded.items()},
                        "before": {K: e for K, (_, e) in before.items()}, "target": target}}
