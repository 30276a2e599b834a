"""`mpisub-bench`: seconds per round of mpisub against a plain numpy round and a PyTorch round.

Every case runs the same rounds three ways, in this one command:
  mpisub  `mpirun -n K mpisub-train` as a user runs it (HDF5 writes and checkpoints included);
          its seconds and split come from the run file it writes
  numpy   the round in plain numpy on the same BLAS: each local step is the two matrix products
          X W_l^T and D^T X plus a few element-wise array operations (the BLAS floor)
  torch   the round as a straightforward PyTorch CPU script: autograd + torch.optim.SGD on the
          gathered rows of each subnetwork (skipped when torch is not installed)
Medians over the rounds after a warm-up round. The baselines start from the run's W_init, data and
masks, and their final W is compared with mpisub's: the three compute the same thing.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np

from . import masks
from .store import read_run
from .sweep import executables

# (n, d, m, p, tau, kind, keep): the cases. lr only needs to keep the few rounds finite.
SHAPES = {
    "theory-small": dict(n=200, d=20, m=2000, p=4, tau=10, kind="bernoulli", keep=0.5),
    "paper": dict(n=1000, d=2048, m=500, p=10, tau=10, kind="bernoulli", keep=0.5),
    "wide-ist": dict(n=2000, d=128, m=16384, p=4, tau=5, kind="partition", keep=0.25),
}
QUICK = {  # the same cases, small enough for the test suite
    "theory-small": dict(n=60, d=8, m=400, p=4, tau=3, kind="bernoulli", keep=0.5),
    "paper": dict(n=100, d=128, m=64, p=2, tau=3, kind="bernoulli", keep=0.5),
    "wide-ist": dict(n=100, d=16, m=1024, p=4, tau=2, kind="partition", keep=0.25),
}
# (row name, shape, K, dtype, BLAS threads per rank (0 = auto), compared with, target ratio)
ROWS = [
    ("theory-small", "theory-small", 1, "float64", 0, "torch", 0.33),
    ("theory-small", "theory-small", 1, "float64", 0, "numpy", 0.5),
    ("theory-small, one rank per core", "theory-small", 2, "float64", 0, "torch", 0.33),
    ("paper (Fig. 2a)", "paper", 1, "float64", 0, "numpy", 1.0),
    ("wide IST", "wide-ist", 1, "float64", 0, "torch", 0.6),
    ("wide IST, K=2 vs K=1", "wide-ist", 2, "float64", 0, "mpisub K=1", 1 / 1.6),
    ("wide IST, K=2 vs K=1 on one thread", "wide-ist", 2, "float64", 0, "mpisub K=1 1 thread", 1 / 1.6),
    ("paper, float32 vs float64", "paper", 1, "float32", 0, "mpisub float64", 1 / 1.4),
]
LR = 0.5


def cores() -> int:
    return len(os.sched_getaffinity(0))


# ---- mpisub, as a user runs it ----------------------------------------------------------------

def run_mpisub(shape: dict, ranks: int, dtype: str, rounds: int, folder: str, threads: int = 0) -> dict:
    mpirun, train = executables()
    values = {"data.n": shape["n"], "data.d": shape["d"], "model.width": shape["m"], "masks.kind": shape["kind"],
              "masks.subnets": shape["p"], "train.local_steps": shape["tau"], "train.rounds": rounds,
              "train.lr": LR, "model.dtype": dtype, "output.dir": folder, "output.log_every": rounds}
    if shape["kind"] == "bernoulli":
        values["masks.keep"] = shape["keep"]
    args = [a for k, v in values.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    thread_vars = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in thread_vars}  # 0: mpisub's own choice
    env.update({k: str(threads) for k in thread_vars} if threads else {})
    r = subprocess.run([mpirun, "-n", str(ranks), train, *args], capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode:
        raise RuntimeError(f"mpisub-train failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return read_run(folder)


def mpisub_numbers(run: dict) -> dict:
    m = {k: v[1:] for k, v in run["metrics"].items() if isinstance(v, np.ndarray)}  # after the warm-up round
    wall, compute, comm = m["seconds_wall"], m["seconds_compute"], m["seconds_comm"]
    W = run["model/W"]
    return {
        "seconds": float(np.median(wall)),
        "split": {"local steps": float(np.mean(m["seconds_local"])),
                  "masks, gather/scatter, combine": float(np.mean(compute - m["seconds_local"] - m["seconds_loss"])),
                  "MPI collectives": float(np.mean(comm)),
                  "full-loss evaluation": float(np.mean(m["seconds_loss"])),
                  "HDF5 writes, log": float(np.mean(np.maximum(wall - compute - comm, 0.0)))},
        "bytes_per_round": float(np.mean(m["bytes_comm"])),
        "model_bytes": W.nbytes,
        "peak_rss_mb": [float(x) for x in run["attrs"].get("peak_rss_mb", [])],
    }


# ---- the same round in plain numpy and in PyTorch ---------------------------------------------

def _setup(run: dict):
    cfg = json.loads(run["attrs"]["config"])
    X, Y, a = run["data/X"], run["data/Y"], run["model/a"]
    return cfg, X, Y, a, run["model/W_init"].copy()


def numpy_round(W, a, X, Y, M, keep, lr, tau):
    """One round: every subnetwork's tau steps on its gathered rows, then the per-neuron mean."""
    n, m = X.shape[0], W.shape[0]
    scale = 1.0 / (keep * math.sqrt(m))
    S, trained = np.zeros_like(W), {}
    for l in range(M.shape[0]):
        rows = np.flatnonzero(M[l])
        W_l, a_l = W[rows], a[rows]
        for _ in range(tau):
            Z = X @ W_l.T                                   # product 1
            R = scale * (np.maximum(Z, 0) @ a_l) - Y
            D = (R @ a_l.T) * (Z > 0)
            W_l -= (lr * scale / n) * (D.T @ X)             # product 2
        S[rows] += W_l
        trained[l] = W_l
    N = M.sum(axis=0)
    W_next = W.copy()
    held = N > 0
    W_next[held] = S[held] / N[held, None]
    loss = 0.5 * np.mean(np.sum((np.maximum(X @ W_next.T, 0) @ a / math.sqrt(m) - Y) ** 2, axis=1))
    return W_next, loss


def torch_round(torch, W, a, X, Y, M, keep, lr, tau):
    n, m = X.shape[0], W.shape[0]
    scale = 1.0 / (keep * math.sqrt(m))
    S = torch.zeros_like(W)
    for l in range(M.shape[0]):
        rows = torch.from_numpy(np.flatnonzero(M[l]))
        W_l = W[rows].clone().requires_grad_(True)
        a_l = a[rows]
        opt = torch.optim.SGD([W_l], lr=lr)
        for _ in range(tau):
            opt.zero_grad()
            out = scale * torch.relu(X @ W_l.T) @ a_l
            loss = 0.5 * ((out - Y) ** 2).sum() / n
            loss.backward()
            opt.step()
        S.index_add_(0, rows, W_l.detach())
    N = torch.from_numpy(M.sum(axis=0).astype(np.float64)).to(W.dtype)
    held = N > 0
    W_next = W.clone()
    W_next[held] = S[held] / N[held, None]
    with torch.no_grad():
        full = 0.5 * ((torch.relu(X @ W_next.T) @ a / math.sqrt(m) - Y) ** 2).sum(dim=1).mean()
    return W_next, float(full)


def run_baseline(how: str, run: dict, rounds: int) -> dict:
    cfg, X, Y, a, W = _setup(run)
    mk, tr = cfg["masks"], cfg["train"]
    step = numpy_round
    if how == "torch":
        import torch
        torch.set_num_threads(cores())
        X, Y, a, W = (torch.from_numpy(v) for v in (X, Y, a, W))
        step = lambda *args: torch_round(torch, *args)  # noqa: E731
    seconds = []
    for k in range(rounds):
        t0 = time.perf_counter()
        M = masks.sample(mk["kind"], mk["subnets"], mk["keep"], W.shape[0], tr["seed"], k)
        W, _ = step(W, a, X, Y, M, mk["keep"], tr["lr"], tr["local_steps"])
        seconds.append(time.perf_counter() - t0)
    W = W.numpy() if how == "torch" else W
    diff = float(np.max(np.abs(W - run["model/W"])) / np.max(np.abs(run["model/W"])))
    return {"seconds": statistics.median(seconds[1:]), "agrees": diff}


def bare_products(run: dict, repeats: int = 5) -> float:
    """Seconds per round of nothing but each local step's two matrix products, for the shapes of
    round 1's subnetworks, into preallocated outputs."""
    cfg, X, Y, a, W = _setup(run)
    mk, tau = cfg["masks"], cfg["train"]["local_steps"]
    M = masks.sample(mk["kind"], mk["subnets"], mk["keep"], W.shape[0], cfg["train"]["seed"], 0)
    best = math.inf
    for _ in range(repeats):
        total = 0.0
        for l in range(M.shape[0]):
            W_l = W[np.flatnonzero(M[l])]
            Z, G = np.empty((X.shape[0], W_l.shape[0]), W.dtype), np.empty_like(W_l)
            t0 = time.perf_counter()
            for _ in range(tau):
                np.dot(X, W_l.T, Z)
                np.dot(Z.T, X, G)
            total += time.perf_counter() - t0
        best = min(best, total)
    return best


def second_launch(folder: str) -> float:
    """Seconds for a second launch of a 1-round job (the kernels are in numba's cache by now)."""
    small = dict(n=64, d=8, m=256, p=2, tau=1, kind="partition", keep=0.5)
    run_mpisub(small, 2, "float64", 1, os.path.join(folder, "launch1"))
    t0 = time.perf_counter()
    run_mpisub(small, 2, "float64", 1, os.path.join(folder, "launch2"))
    return time.perf_counter() - t0


# ---- the command --------------------------------------------------------------------------------

def bench_main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="mpisub-bench", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=0, help="measured rounds per case after one warm-up "
                   "(default: 20 theory-small, 3 paper, 5 wide IST)")
    p.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test, not a measurement)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    p.add_argument("--json", metavar="FILE", help="also write every number as JSON")
    p.add_argument("--scaling", action="store_true", help="instead: memory and bytes per rank at K = 1, 2, 4, "
                   "8 measured here and projected to K = 1024 with the cost model (mpisub.scaling)")
    p.add_argument("--width", type=int, default=262144, help="--scaling: model.width (default 262144)")
    args = p.parse_args(argv)
    if args.scaling:
        from .scaling import scaling_main
        return scaling_main(args.width, args.json)

    shapes = QUICK if args.quick else SHAPES
    default_rounds = {"theory-small": 20, "paper": 3, "wide-ist": 5}
    torch_note = None
    if args.no_torch:
        torch_note = "skipped (--no-torch)"
    else:
        try:
            import torch  # noqa: F401
        except ImportError:
            torch_note = "skipped: torch is not installed (pip install torch==2.13.0 for the CPU build)"
    print(f"# mpisub-bench on {cores()} core(s); medians of seconds per round after one warm-up round", flush=True)
    results, runs = {}, {}
    with tempfile.TemporaryDirectory(prefix="mpisub-bench-") as tmp:
        for name, shape, K, dtype, threads, against, _ in ROWS:
            keys = [(shape, 1, "float64", 0), (shape, K, dtype, threads)]
            if against.endswith("1 thread"):
                keys.append((shape, 1, "float64", 1))
            for key in keys:
                if key in runs:
                    continue
                rounds = 1 + (args.rounds or default_rounds[shape])
                print(f"# running {shape} with mpisub: mpirun -n {key[1]}, {key[2]}, "
                      f"{key[3] or 'auto'} thread(s) per rank, {rounds} rounds ...", flush=True)
                folder = os.path.join(tmp, "-".join(map(str, key)))
                runs[key] = run_mpisub(shapes[shape], key[1], key[2], rounds, folder, key[3])
                results[key] = {"mpisub": mpisub_numbers(runs[key])}
            base = results[keys[0]]
            if "numpy" not in base:
                run = runs[keys[0]]
                rounds = len(run["metrics"]["round"])
                print(f"# running {shape} with numpy ...", flush=True)
                base["numpy"] = run_baseline("numpy", run, rounds)
                base["bare products"] = bare_products(run)
                if torch_note is None:
                    print(f"# running {shape} with torch ...", flush=True)
                    base["torch"] = run_baseline("torch", run, rounds)
        launch = second_launch(tmp)

    table = ["| case | n, d, m, p, tau, masks | mpisub s/round | against | its s/round | ratio | target | met |",
             "|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for name, shape, K, dtype, threads, against, target in ROWS:
        s = shapes[shape]
        mine = results[(shape, K, dtype, threads)]["mpisub"]["seconds"]
        base = results[(shape, 1, "float64", 0)]
        if against in ("numpy", "torch"):
            if against not in base:
                table.append(f"| {name} | | {mine:.4f} | {against} | {torch_note} | | | |")
                continue
            other = base[against]["seconds"]
        else:
            other = results[(shape, 1, "float64", 1 if against.endswith("1 thread") else 0)]["mpisub"]["seconds"]
        ratio = mine / other
        met = ratio <= target
        verdicts.append(met)
        desc = f"{s['n']}, {s['d']}, {s['m']}, {s['p']}, {s['tau']}, {s['kind']}" + \
               (f" {s['keep']:g}" if s["kind"] == "bernoulli" else "") + (f", K={K}" if K > 1 else "") + \
               (f", {dtype}" if dtype != "float64" else "")
        shown = f"<= {target:.2f}x" if against in ("numpy", "torch") else f">= {1 / target:.1f}x faster"
        got = f"{ratio:.2f}x" if against in ("numpy", "torch") else f"{1 / ratio:.2f}x faster"
        table.append(f"| {name} | {desc} | {mine:.4f} | {against} | {other:.4f} | {got} | {shown} | "
                     f"{'yes' if met else 'NO'} |")
    paper = results[("paper", 1, "float64", 0)]
    local = paper["mpisub"]["split"]["local steps"]
    ratio = local / paper["bare products"]
    table.append(f"| paper: local steps vs two bare products | per round | {local:.4f} | 2 GEMMs x p x tau | "
                 f"{paper['bare products']:.4f} | {ratio:.2f}x | <= 1.30x | {'yes' if ratio <= 1.3 else 'NO'} |")
    verdicts.append(ratio <= 1.3)
    print("\n".join(table))
    print(f"\nsecond launch of a 1-round job (mpirun -n 2, kernels cached): {launch:.2f} s (target < 3 s)")

    print("\ntime split of an mpisub round (seconds per round, rank 0), bytes sent per round / model size, "
          "peak memory per rank:")
    for (shape, K, dtype, threads), res in sorted(results.items()):
        r = res["mpisub"]
        split = "  ".join(f"{k} {v:.4f}" for k, v in r["split"].items())
        agree = "; ".join(f"{k} agrees to {res[k]['agrees']:.1e}" for k in ("numpy", "torch") if k in res)
        print(f"  {shape} K={K} {dtype} {threads or 'auto'} thread(s): {split}; sent {r['bytes_per_round'] / r['model_bytes']:.2f}x the model "
              f"({r['bytes_per_round'] / 1e6:.2f} MB); peak RSS {', '.join(f'{x:.0f}' for x in r['peak_rss_mb'])} MB"
              + (f"; {agree}" if agree else ""))
    if torch_note:
        print(f"torch: {torch_note}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": {f"{k[0]} K={k[1]} {k[2]} threads={k[3] or 'auto'}": v for k, v in results.items()},
                       "second_launch_seconds": launch, "table": table}, f, indent=1)
    print(f"\n{sum(verdicts)} of {len(verdicts)} targets met")
