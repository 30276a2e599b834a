"""`mpisub-bench`: where a round's time goes, the bytes it moves and each rank's peak memory, for
the built-in cases (with --scaling: as the ranks grow, measured and modelled; mpisub.bench.scaling).

Each case runs `mpirun -n K mpisub-train` exactly as a user runs it (HDF5 writes and checkpoints
included) and reads its numbers from the run file it writes. Comparisons with plain numpy and
PyTorch, and the project's speed targets, are in benchmarks/peers.py (docs/design.md, section 9).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time

import numpy as np

from mpisub import config
from mpisub._util.errors import Parser, UserError, command
from mpisub.io.readback import read_run
from mpisub.study.launch import executables, set_args, thread_env
from mpisub.train.resolve import cost_eval_every, settle

# the cases of the performance issue; lr only needs to keep the few rounds finite
CASES = {
    "theory-small": dict(n=200, d=20, m=2000, p=4, tau=10, kind="bernoulli", keep=0.5),
    "paper": dict(n=1000, d=2048, m=500, p=10, tau=10, kind="bernoulli", keep=0.5),
    "wide-ist": dict(n=2000, d=128, m=16384, p=4, tau=5, kind="partition", keep=0.25),
    "dropout": dict(n=2000, d=256, m=8192, p=1, tau=1, kind="bernoulli", keep=0.5),
    "multisample": dict(n=2000, d=256, m=8192, p=4, tau=1, kind="bernoulli", keep=0.5),
}
QUICK = {  # the same cases, small enough for the test suite
    "theory-small": dict(n=60, d=8, m=400, p=4, tau=3, kind="bernoulli", keep=0.5),
    "paper": dict(n=100, d=128, m=64, p=2, tau=3, kind="bernoulli", keep=0.5),
    "wide-ist": dict(n=100, d=16, m=1024, p=4, tau=2, kind="partition", keep=0.25),
    "dropout": dict(n=100, d=16, m=512, p=1, tau=1, kind="bernoulli", keep=0.5),
    "multisample": dict(n=100, d=16, m=512, p=4, tau=1, kind="bernoulli", keep=0.5),
}
# measured rounds, after one warm-up round
ROUNDS = {"theory-small": 20, "paper": 3, "wide-ist": 5, "dropout": 41, "multisample": 21}
LR = 0.5


def cores() -> int:
    return len(os.sched_getaffinity(0))


def run_mpisub(case: dict, ranks: int, dtype: str, rounds: int, folder: str, threads: int = 0) -> dict:
    """Train `case` as a user would; returns its run file's contents. threads 0: mpisub's choice."""
    values = {"data.n": case["n"], "data.d": case["d"], "model.width": case["m"], "masks.kind": case["kind"],
              "masks.subnets": case["p"], "train.local_steps": case["tau"], "train.rounds": rounds,
              "train.lr": LR, "model.dtype": dtype, "output.dir": folder, "output.log_every": rounds}
    if case["kind"] == "bernoulli":
        values["masks.keep"] = case["keep"]
    # the cadence of a long run (the 5% rule): these runs are a few rounds, and a short run's
    # auto cadence (at least 20 evaluations) would evaluate every round
    given = config.build(overrides=set_args(values)[1::2])
    values["output.eval_every"] = cost_eval_every(settle(given, ranks, (case["n"], case["d"], 1))[0])
    mpirun, train = executables()
    r = subprocess.run([mpirun, "-n", str(ranks), train, *set_args(values)], capture_output=True, text=True,
                       env=thread_env(threads), timeout=1800)
    if r.returncode:
        raise RuntimeError(f"mpisub-train failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return read_run(folder)


def mpisub_numbers(run: dict) -> dict:
    """Seconds per round (median after the warm-up round), the time split, bytes and peak memory."""
    m = {k: v[1:] for k, v in run["metrics"].items() if isinstance(v, np.ndarray)}
    wall, compute, comm = m["seconds_wall"], m["seconds_compute"], m["seconds_comm"]
    evaluated = np.isin(run["metrics"]["round"], run["eval"]["round"])   # the last round at least
    every = json.loads(run["attrs"]["config"])["output"]["eval_every"]
    return {
        "seconds": float(np.median(wall)),
        "split": {"local steps": float(np.mean(m["seconds_local"])),
                  "masks, gather/scatter, combine": float(np.mean(compute - m["seconds_local"] - m["seconds_loss"])),
                  "MPI collectives": float(np.mean(comm)),
                  "full-loss evaluation": float(np.mean(m["seconds_loss"])),
                  "HDF5 writes, log": float(np.mean(np.maximum(wall - compute - comm, 0.0)))},
        # the evaluations' share of the training at the run's cadence: an evaluation's seconds, once
        # every eval_every rounds (a short run may hold only the last round's evaluation)
        "evaluation_share": float(np.mean(run["metrics"]["seconds_loss"][evaluated]) / (every * np.median(wall))),
        "bytes_per_round": float(np.mean(m["bytes_comm"])),
        "model_bytes": run["model/W"].nbytes,
        "peak_rss_mb": [float(x) for x in run["attrs"].get("peak_rss_mb", [])],
    }


def split_line(label: str, numbers: dict) -> str:
    split = "  ".join(f"{k} {v:.4f}" for k, v in numbers["split"].items())
    sent = numbers["bytes_per_round"]
    return (f"{label}: {split}; sent {sent / numbers['model_bytes']:.2f}x the model ({sent / 1e6:.2f} MB); "
            f"peak RSS {', '.join(f'{x:.0f}' for x in numbers['peak_rss_mb'])} MB")


def second_launch(folder: str) -> float:
    """Seconds for a second launch of a 1-round job (the kernels are in numba's cache by now)."""
    small = dict(n=64, d=8, m=256, p=2, tau=1, kind="partition", keep=0.5)
    run_mpisub(small, 2, "float64", 1, os.path.join(folder, "launch1"))
    t0 = time.perf_counter()
    run_mpisub(small, 2, "float64", 1, os.path.join(folder, "launch2"))
    return time.perf_counter() - t0


# the options: (flags, keywords of add_argument)
OPTIONS = (
    (("--ranks",), dict(type=int, nargs="+", metavar="K", help="ranks to run each case on (default: 1 2; with "
                        "--scaling: 1 2 4 8 for its traffic and memory table)")),
    (("--rounds",), dict(type=int, default=0, help="measured rounds per case after one warm-up (default: 20 "
                         "theory-small, 3 paper, 5 wide IST)")),
    (("--quick",), dict(action="store_true", help="tiny shapes (a smoke test, not a measurement)")),
    (("--json",), dict(metavar="FILE", help="also write every number as JSON")),
    (("--scaling",), dict(action="store_true", help="instead: memory and bytes per rank at K = 1, 2, 4, 8 "
                          "measured and projected to K = 1024 (mpisub.bench.scaling); the same job in 2, 64, 512 "
                          "subnetworks; strong scaling of IST to K = 1024 (mpisub.bench.strong)")),
    (("--width",), dict(type=int, default=262144, help="--scaling: model.width of the traffic table "
                        "(default 262144)")),
    (("--strong-width",), dict(type=int, default=2**20, help="--scaling: model.width of the subnetwork and "
                               "strong-scaling tables (default 1048576)")),
)


@command("mpisub-bench")
def bench_main(argv: list[str] | None = None) -> None:
    summary = " ".join(__doc__.split("\n\n")[0].split()).replace("`", "")   # the docstring's first paragraph
    parser = Parser(prog="mpisub-bench", description=summary)
    for flags, keywords in OPTIONS:
        parser.add_argument(*flags, **keywords)
    args = parser.parse_args(argv)
    numbers = _scaling(args) if args.scaling else _cases(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(numbers, f, indent=1)


def _scaling(args) -> dict:
    # lazy, for start-up time: the scaling tables load MPI and numba, which the other benchmarks do not
    from mpisub.bench.cluster import cluster_main
    from mpisub.bench.scaling import CASE, MEASURED, scaling_main
    from mpisub.bench.strong import strong_main

    p = CASE["masks.subnets"]
    odd = [K for K in args.ranks or [] if K < 1 or p % K]
    if odd:
        raise UserError(f"--ranks {odd[0]}: the scaling case trains masks.subnets = {p} under plan rows "
                        f"at every K; give ranks that divide {p} (e.g. --ranks 1 2 4 8)")
    numbers = {**scaling_main(args.width, tuple(args.ranks or MEASURED)), **strong_main(args.strong_width)}
    return {**numbers, **cluster_main(numbers["strong"], args.strong_width)}


def _cases(args) -> dict:
    cases = QUICK if args.quick else CASES
    print(f"# mpisub-bench on {cores()} core(s): seconds per round (rank 0), split by where they go; "
          f"bytes sent per round against the model's size; peak memory per rank", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="mpisub-bench-") as tmp:
        for name, case in cases.items():
            for K in args.ranks or [1, 2]:
                rounds = 1 + (args.rounds or ROUNDS[name])
                run = run_mpisub(case, K, "float64", rounds, os.path.join(tmp, f"{name}-{K}"))
                results[f"{name} K={K}"] = numbers = mpisub_numbers(run)
                print(f"{name} K={K}: {numbers['seconds']:.4f} s/round; " + split_line("split", numbers), flush=True)
        launch = second_launch(tmp)
    print(f"second launch of a 1-round job (mpirun -n 2, kernels cached): {launch:.2f} s")
    return {"results": results, "second_launch_seconds": launch}
