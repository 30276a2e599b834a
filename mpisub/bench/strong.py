"""`mpisub-bench --scaling`, the strong-scaling half: the same work on more ranks (docs/design.md,
section 3, "Who computes what").

Two reports:
- subnets: one job (partition, plan rows) at K = 2 with p = 2, 64, 512 subnetworks: the same work
  in more, smaller subnetworks. Measured with `mpirun -n 2 mpisub-train`: seconds of compute per
  round and peak memory per rank, from the run file.
- strong: IST (p = K) on named cases, K = 1 ... 1024: one rank's round, split into
    local steps   modelled from a measured speed: the kernel (one thread, as a rank of a full
                  node has) timed on a rank's share at the largest K, its flop rate applied to
                  the share at each K;
    bookkeeping   measured: one rank's real round code (masks.RoundMasks, shard.Exchange, the plan's
                  gathers, scatters and combine) run here in process for that K, with the
                  collectives stubbed and the kernel left out; its masks and plan also by memory.
                  Where the rank's block of W would not fit here, its row movement is modelled
                  from the measured seconds per byte of the smallest K measured ("~");
    collectives   modelled: the alpha-beta costs (mpisub/costs.py) of the round's two Alltoallv
                  and its Allreduce of the flags;
  the efficiency T(1) / (K T(K)) and resources' peak memory estimate per rank.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from typing import TYPE_CHECKING

import numpy as np

from mpisub import config
from mpisub.io.data import Sets
from mpisub.io.readback import read_run
from mpisub.nn import kernels, masks, model
from mpisub.parallel import costs, resources
from mpisub.parallel.counters import Counted
from mpisub.parallel.exchange import Exchange
from mpisub.parallel.layout import Layout
from mpisub.parallel.plans import RowsPlan
from mpisub.study.launch import executables, set_args, thread_env
from mpisub.train.evaluate import FLAGS
from mpisub.train.resolve import settle

if TYPE_CHECKING:  # types only: never imported at run time
    from mpisub.config import Config

CASES = {"ist": dict(d=512, n=1024, tau=5), "moonshot": dict(d=3072, n=1024, tau=5)}
RANKS = (1, 4, 16, 64, 256, 1024)
SUBNETS = (2, 64, 512)
MOVE_BYTES = 2**30     # a rank's block of W up to this size has its row movement measured here


class StubComm(Counted):
    """Rank `rank` of `size`, alone: a collective moves nothing (the receive buffers keep what
    they hold) and its time is counted as the collectives', not the bookkeeping's."""

    def __init__(self, rank: int, size: int):
        self.rank, self.size = rank, size

    def alltoall_rows(self, send: np.ndarray, send_counts: list[int], out: np.ndarray, recv_counts: list[int]) -> None:
        self._count(time.perf_counter(), 0)

    def sum(self, buf: np.ndarray) -> None:
        self._count(time.perf_counter(), 0)


def case_config(width: int, ranks: int, d: int, n: int, tau: int) -> Config:
    """IST at `ranks` ranks: partition, one subnetwork per rank, plan rows."""
    values = {"model.width": width, "data.d": d, "data.n": n, "train.local_steps": tau, "masks.kind": "partition",
              "masks.subnets": ranks, "train.plan": "rows", "theory.max_n": 0}
    return settle(config.build(overrides=set_args(values)[1::2]), ranks, (n, d, 1))[0]


def step_seconds(n: int, d: int, k: int, repeats: int = 2) -> float:
    """Seconds of one full-batch local step of a subnetwork of k rows (the kernel alone)."""
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((n, d)), rng.standard_normal((n, 1))
    W, a = rng.standard_normal((k, d)) / np.sqrt(d), np.sign(rng.standard_normal((k, 1)))
    batches = np.zeros((1, 0), np.int64)
    kernels.local_steps(W, a, X, Y, 1e-3, 1e-3, batches)       # compiled, workspaces warm
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        kernels.local_steps(W, a, X, Y, 1e-3, 1e-3, batches)
        best = min(best, time.perf_counter() - t)
    return best


def bookkeeping(cfg: Config, K: int, move: bool) -> dict:
    """One rank's round for K ranks, in process: the seconds and peak bytes of its masks and
    exchange plan, and (with `move`) the seconds of the whole round's code without the kernel
    and the collectives."""
    layout = Layout.of(cfg, StubComm(0, K))
    t = time.perf_counter()
    Exchange(masks.RoundMasks.of(cfg, layout, 1), layout)
    plan_seconds = time.perf_counter() - t
    tracemalloc.start()                                      # again, by memory (tracemalloc slows it)
    Exchange(masks.RoundMasks.of(cfg, layout, 1), layout)
    out = {"plan_seconds": plan_seconds, "plan_mib": tracemalloc.get_traced_memory()[1] / 2**20}
    tracemalloc.stop()
    if move:
        comm = StubComm(0, K)
        zeros = np.zeros((cfg.data.n, cfg.data.d))
        sets = Sets(zeros, zeros[:, :1], zeros[:0], zeros[:0, :1])
        plan = RowsPlan(cfg, layout, comm, sets, model.output_weights(cfg))
        plan.steps = lambda *args: 0.0                      # the kernel is the local steps' part
        W = np.ones((layout.owned, cfg.data.d))              # a rank's block, in memory as in a run
        for k in (1, 2):                                     # the second round: pages mapped as in a run
            comm.take_counters()
            t = time.perf_counter()
            plan.round(W, masks.RoundMasks.of(cfg, layout, k), lambda l: np.zeros((1, 0), np.int64))
            out["round_seconds"] = time.perf_counter() - t - comm.take_counters()[0]
    return out


def strong_rows(width: int, name: str, ranks: tuple[int, ...] = RANKS) -> list[dict]:
    """The strong-scaling table of one case (run it with one thread per process)."""
    c = CASES[name]
    s = 8
    W_bytes = width * c["d"] * s
    top = max(ranks)
    local = step_seconds(c["n"], c["d"], width // top)       # the kernel on the largest K's share
    rate = 4 * c["n"] * c["d"] * (width // top) / local      # flop/s
    rows, per_byte = [], None
    for K in sorted(ranks, reverse=True):     # smallest blocks first: their per-byte time models the larger
        cfg = case_config(width, K, c["d"], c["n"], c["tau"])
        move = W_bytes / K <= MOVE_BYTES
        b = bookkeeping(cfg, K, move)
        if move:
            per_byte = (b["round_seconds"] - b["plan_seconds"]) / (W_bytes / K)
            book = b["round_seconds"]
        else:
            book = b["plan_seconds"] + per_byte * W_bytes / K  # type: ignore[operator]  # set by a smaller block
        one_way = (K - 1) / K * W_bytes / K
        rows.append({"case": name, "K": K, "local": 4 * c["n"] * c["d"] * c["tau"] * (width / K) / rate,
                     "bookkeeping": book, "book_measured": move, "plan_seconds": b["plan_seconds"],
                     "plan_mib": b["plan_mib"], "comm": 2 * costs.alltoallv(K, one_way) + costs.allreduce(K, FLAGS * 8),
                     "memory_mib": sum(resources.memory_per_rank(cfg, K).values()) / 2**20})
    rows.sort(key=lambda r: r["K"])
    t1 = rows[0]["local"] + rows[0]["bookkeeping"] + rows[0]["comm"]
    for r in rows:
        r["seconds"] = r["local"] + r["bookkeeping"] + r["comm"]
        r["efficiency"] = t1 / (r["K"] * r["seconds"]) if rows[0]["K"] == 1 else float("nan")
    return rows


def subnets_rows(width: int, folder: str, subnets: tuple[int, ...] = SUBNETS) -> list[dict]:
    """The same job at K = 2 with more, smaller subnetworks, as a user runs it."""
    mpirun, train = executables()
    out = []
    for p in subnets:
        values = {"model.width": width, "data.d": 8, "data.n": 16, "train.local_steps": 1, "masks.kind": "partition",
                  "masks.subnets": p, "train.plan": "rows", "train.rounds": 8, "train.lr": 0.5,
                  "train.lr_scaling": "keep", "theory.max_n": 0, "output.dir": os.path.join(folder, f"p{p}")}
        r = subprocess.run([mpirun, "-n", "2", train, *set_args(values)], capture_output=True, text=True,
                           env=thread_env(1), timeout=1800)
        if r.returncode:
            raise RuntimeError(f"mpisub-train failed at p = {p}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        run = read_run(str(values["output.dir"]), arrays=False)
        m = run["metrics"]
        out.append({"p": p, "compute": float(np.median(m["seconds_compute"][1:])),
                    "local": float(np.median(m["seconds_local"][1:])),
                    "peak_rss_mb": float(np.max(run["attrs"]["peak_rss_mb"]))})
    return out


def strong_main(width: int) -> dict:
    """Both reports, printed and returned; the strong tables measured in a child process of one thread."""
    print(f"\n# the same work in more subnetworks: m = {width}, d = 8, n = 16, tau = 1, partition, plan rows, "
          f"mpirun -n 2 (measured)", flush=True)
    with tempfile.TemporaryDirectory(prefix="mpisub-strong-") as tmp:
        sweep = subnets_rows(width, tmp)
    base = sweep[0]
    print(f"{'p':>5} | {'compute s/round':>15} | {'ratio':>5} | {'local steps':>11} | {'peak MiB/rank':>13} | "
          f"{'vs p=' + str(base['p']):>8}")
    for r in sweep:
        print(f"{r['p']:>5} | {r['compute']:>15.4f} | {r['compute'] / base['compute']:>5.2f} | {r['local']:>11.4f} | "
              f"{r['peak_rss_mb']:>13.0f} | {r['peak_rss_mb'] - base['peak_rss_mb']:>+8.0f}")
    child = subprocess.run([sys.executable, "-m", "mpisub.bench.strong", str(width)], capture_output=True, text=True,
                           env=thread_env(1), timeout=3600)
    if child.returncode:
        raise RuntimeError(f"the strong-scaling measurement failed:\n{child.stderr[-3000:]}")
    strong = json.loads(child.stdout)
    for name in CASES:
        _print_strong(width, name, [r for r in strong if r["case"] == name])
    return {"subnets": sweep, "strong": strong}


def _print_strong(width: int, name: str, rows: list) -> None:
    c = CASES[name]
    print(f"\n# strong scaling, {name}: m = {width}, d = {c['d']}, n = {c['n']}, tau = {c['tau']}, float64 "
          f"(W = {width * c['d'] * 8 / 2**30:.2f} GiB), partition p = K, plan rows; one rank's round in seconds "
          f"(local steps: modelled from the kernel's measured speed; bookkeeping: measured, ~ row movement "
          f"modelled; collectives: alpha-beta model)")
    print(f"{'K':>5} | {'local steps':>11} | {'bookkeeping':>12} | {'masks+plan':>10} | {'MiB':>5} | "
          f"{'collectives':>11} | {'round':>9} | {'efficiency':>10} | {'peak MiB/rank (est.)':>20}")
    for r in rows:
        mark = " " if r["book_measured"] else "~"
        print(f"{r['K']:>5} | {r['local']:>11.4f} | {mark}{r['bookkeeping']:>11.4f} | {r['plan_seconds']:>10.4f} | "
              f"{r['plan_mib']:>5.1f} | {r['comm']:>11.5f} | {r['seconds']:>9.4f} | {r['efficiency']:>10.1%} | "
              f"{r['memory_mib']:>20.0f}")


if __name__ == "__main__":   # the child process of strong_main: one thread, JSON on stdout
    print(json.dumps([row for name in CASES for row in strong_rows(int(sys.argv[1]), name)]))
