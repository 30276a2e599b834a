"""`mpisub-bench --scaling`: memory and traffic per rank as the ranks grow, measured here and
projected past this machine with the cost model (docs/design.md, section 3).

Measured: `mpirun -n K mpisub-train` for K = 1, 2, 4, 8 on one model (oversubscribed ranks are
fine: bytes and memory do not depend on cores), reading rank 0's bytes sent and received per
round and every rank's peak RSS from the run file.

Modelled, for partition masks (p subnetworks, a multiple of K), W_bytes = m d itemsize:
  owner storage (plan rows): a rank pulls the rows of its subnetworks that others own and pushes
    them back: sent = received = 2 (K-1)/K * W_bytes/K per round, one pairwise Alltoallv each
    way: 2 ((K-1) alpha + (K-1)/K * W_bytes/K * beta)
  replicated (mpisub before owner storage): every rank holds all of W and receives the others'
    trained rows by a ring Allgatherv: sent W_bytes/K, received (K-1)/K * W_bytes,
    (K-1) alpha + (K-1)/K * W_bytes * beta
with the alpha-beta costs of Thakur, Rabenseifner & Gropp (MPICH's collectives) for a 200 Gb/s
link: beta = 1/25 GB/s, alpha = 1.5 us. Both add an evaluation: an Allreduce of n c + 8 float64
and one of 1 (Rabenseifner: 2 log K alpha + 2 (K-1)/K bytes beta).
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from typing import TYPE_CHECKING, Any

import numpy as np

from mpisub import config
from mpisub.io.readback import read_run
from mpisub.parallel import costs, resources
from mpisub.study.launch import executables, set_args, thread_env
from mpisub.train.resolve import settle

if TYPE_CHECKING:  # types only: never imported at run time

    from mpisub.config import Config

MEASURED = (1, 2, 4, 8)
PROJECTED = (16, 64, 256, 1024)
# evaluated every round: the model counts one evaluation's Allreduce in every round's bytes
CASE: dict[str, Any] = {"model.width": 262144, "data.d": 256, "data.n": 256, "masks.kind": "partition",
                        "masks.subnets": 8, "train.local_steps": 2, "train.rounds": 3, "theory.max_n": 0,
                        "output.checkpoint_every": 1000,
        "output.eval_every": 1}


def model(K: int, W_bytes: float, loss_bytes: float) -> dict:
    """Bytes per rank per round and seconds per round of communication, both designs."""
    allreduce = costs.allreduce(K, loss_bytes)
    loss = loss_bytes if K > 1 else 0
    one_way = (K - 1) / K * W_bytes / K
    return {
        "rows_sent": 2 * one_way + loss, "rows_recv": 2 * one_way + loss,
        "rows_seconds": 2 * costs.alltoallv(K, one_way) + allreduce,
        "replicated_sent": (W_bytes / K + loss) if K > 1 else 0, "replicated_recv": ((K - 1) / K * W_bytes + loss),
        "replicated_seconds": costs.allgatherv(K, W_bytes) + allreduce,
    }


def replicated_memory(cfg: Config, K: int) -> float:
    """Peak bytes per rank of the replicated design: W_k, W_{k+1} and the gathered rows (3 W), the
    rank's subnetworks' rows and a local step's workspaces, libraries and data."""
    s = np.dtype(cfg.model.dtype).itemsize
    m, d, n, p = cfg.model.width, cfg.data.d, cfg.data.n, cfg.masks.subnets
    k = m // p
    return 3 * m * d * s + (p // K) * k * d * s + (n * k + k * d) * s + resources.BASE + n * d * 16


def _with_plan(cfg, plan: str):
    return cfg.replace({"train.plan": plan})


def measure(K: int, width: int, folder: str, plan: str = "rows") -> dict:
    mpirun, train = executables()
    values = {**CASE, "model.width": width, "output.dir": folder, "train.plan": plan}
    r = subprocess.run([mpirun, "-n", str(K), train, *set_args(values)], capture_output=True, text=True,
                       env=thread_env(1), timeout=1800)
    if r.returncode:
        raise RuntimeError(f"mpisub-train failed at K = {K}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    run = read_run(folder, arrays=False)
    m = run["metrics"]
    return {"sent": float(np.mean(m["bytes_comm"])), "recv": float(np.mean(m["bytes_recv"])),
            "peak_rss_mb": float(np.max(run["attrs"]["peak_rss_mb"]))}


def _ratio(measured: float | None, model: float) -> str:
    if measured is None:
        return "    -"
    return f"{measured / model:5.2f}" if measured and model else " 1.00"


def _case(width: int, K: int):
    """The case at K ranks under plan rows (past the measured range p grows with K: one subnetwork
    per rank)."""
    values = {**CASE, "model.width": width, "train.plan": "rows"}
    if CASE["masks.subnets"] % K:
        values["masks.subnets"] = K
    return settle(config.build(overrides=set_args(values)[1::2]), K)[0]


def scaling_main(width: int, measured: tuple[int, ...] = MEASURED) -> dict:
    from mpisub.train.evaluate import message_floats  # lazy, for start-up time: it loads numba

    cfg = _case(width, 1)
    s = np.dtype(cfg.model.dtype).itemsize
    W_bytes = width * cfg.data.d * s
    loss_bytes = message_floats(cfg.data.n, cfg.data.outputs) * 8 + 8   # an evaluation's Allreduce, and its max
    mib = 2**20
    print(f"# mpisub-bench --scaling: m = {width}, d = {cfg.data.d}, float64 (W = {W_bytes / mib:.0f} MiB), "
          f"n = {cfg.data.n}, partition p = {cfg.masks.subnets}, tau = {cfg.train.local_steps}; "
          f"measured with mpirun -n K here, "
          f"projected with alpha = {costs.ALPHA * 1e6:g} us, beta = 1/{1 / costs.BETA / 1e9:g} GB/s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mpisub-scaling-") as tmp:
        for K in sorted(set(measured) | set(PROJECTED)):
            c = _case(width, K)
            row = {"K": K, **model(K, W_bytes, loss_bytes),
                   "rows_memory": sum(resources.memory_per_rank(c, K).values()),
                   "replicated_memory": replicated_memory(c, K)}
            cost = resources.plan_costs(c, K)["outputs"]
            row.update(outputs_bytes=cost[0] + (2 * loss_bytes if K > 1 else 0), outputs_seconds=cost[1],
                       outputs_memory=sum(resources.memory_per_rank(_with_plan(c, "outputs"), K).values()))
            if K in measured:
                print(f"# measuring K = {K} (plans rows and outputs) ...", flush=True)
                row.update(measure(K, width, os.path.join(tmp, f"K{K}")))
                row.update({f"outputs_{k}": v for k, v in
                            measure(K, width, os.path.join(tmp, f"K{K}-outputs"), "outputs").items()})
            rows.append(row)
    print(f"\n{'K':>5} | {'sent+recv MB/round per rank':>27} | {'model':>8} | {'ratio':>5} | {'replicated':>10} | "
          f"{'peak MiB/rank':>13} | {'estimate':>8} | {'replicated':>10} | {'comm s/round':>12} | {'replicated':>10}")
    for r in rows:
        model_total = r["rows_sent"] + r["rows_recv"]
        moved = r["sent"] + r["recv"] if "sent" in r else None
        ratio = _ratio(moved, model_total)
        print(f"{r['K']:>5} | {moved / 1e6 if moved is not None else float('nan'):>27.1f} | "
              f"{model_total / 1e6:>8.1f} | {ratio} | {(r['replicated_sent'] + r['replicated_recv']) / 1e6:>10.1f} | "
              f"{r.get('peak_rss_mb', float('nan')):>13.0f} | {r['rows_memory'] / mib:>8.0f} | "
              f"{r['replicated_memory'] / mib:>10.0f} | {r['rows_seconds']:>12.5f} | {r['replicated_seconds']:>10.5f}")
    print(f"\nplan outputs (neurons never move; tau Allreduces of p x n x c per round):\n"
          f"{'K':>5} | {'sent+recv MB/round per rank':>27} | {'model':>8} | {'ratio':>5} | {'peak MiB/rank':>13} | "
          f"{'estimate':>8} | {'comm s/round':>12}")
    for r in rows:
        moved = r["outputs_sent"] + r["outputs_recv"] if "outputs_sent" in r else None
        model_total = r["outputs_bytes"]
        ratio = _ratio(moved, model_total)
        print(f"{r['K']:>5} | {moved / 1e6 if moved is not None else float('nan'):>27.3f} | "
              f"{model_total / 1e6:>8.3f} | {ratio} | {r.get('outputs_peak_rss_mb', float('nan')):>13.0f} | "
              f"{r['outputs_memory'] / mib:>8.0f} | {r['outputs_seconds']:>12.6f}")
    writes = checkpoint_writes(width, W_bytes)
    print("\nsent+recv: rank 0's bytes per round (measured: run file metrics bytes_comm + bytes_recv); model: "
          "owner storage; replicated: every rank holding all of W (before owner storage). peak: the largest "
          "rank's peak RSS (measured), the resources estimate, and the replicated design's estimate.")
    return {"traffic": rows, "writes": writes}


def checkpoint_writes(width: int, W_bytes: float, ranks: tuple[int, ...] = (1, 4)) -> list[dict]:
    """What each rank writes in a run with a checkpoint every round, measured (the run file's
    written_mb): at K ranks a rank should write W/K per checkpoint plus small metadata, rank 0
    too. Prints the table and returns its rows."""
    mpirun, train = executables()
    rounds, out = 3, []
    with tempfile.TemporaryDirectory(prefix="mpisub-writes-") as tmp:
        for K in ranks:
            folder = os.path.join(tmp, f"K{K}")
            values = {**CASE, "model.width": width, "output.dir": folder, "train.plan": "rows",
                      "train.rounds": rounds, "output.checkpoint_every": 1}
            job = subprocess.run([mpirun, "-n", str(K), train, *set_args(values)], capture_output=True, text=True,
                                 env=thread_env(1), timeout=1800)
            if job.returncode:
                raise RuntimeError(f"mpisub-train failed at K = {K}:\n{job.stdout[-2000:]}\n{job.stderr[-2000:]}")
            written = np.asarray(read_run(folder, arrays=False)["attrs"]["written_mb"], dtype=float) * 2**20
            out.append({"K": K, "rank0": float(written[0]), "others": float(written[1:].max()) if K > 1 else 0.0,
                        "shares": (rounds + 2) * W_bytes / K})   # W_init and rounds + 1 checkpoints of its rows
    mib, base = 2**20, out[0]["rank0"]
    print(f"\nbytes written per rank, {rounds} rounds with a checkpoint every round (and one before round 1; "
          f"W = {W_bytes / mib:.0f} MiB; measured: run file attr written_mb):\n"
          f"{'K':>5} | {'rank 0 MiB':>10} | {'vs K = 1':>8} | {'largest other MiB':>17} | "
          f"{'its rows: (rounds + 2) W/K MiB':>30} | {'rank 0 beyond its rows, MiB per checkpoint':>42}")
    for r in out:
        print(f"{r['K']:>5} | {r['rank0'] / mib:>10.1f} | {r['rank0'] / base:>8.2f} | {r['others'] / mib:>17.1f} | "
              f"{r['shares'] / mib:>30.1f} | {(r['rank0'] - r['shares']) / (rounds + 1) / mib:>42.2f}")
    return out
