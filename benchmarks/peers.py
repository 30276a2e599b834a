"""mpisub against its peers: the same rounds in plain numpy and in PyTorch, and the project's speed
targets (docs/design.md, section 9). Not part of the package: run it from a checkout,

    python benchmarks/peers.py [--quick] [--no-torch] [--rounds N] [--json FILE]

Every case runs the same rounds three ways, in this one command:
  mpisub  `mpirun -n K mpisub-train` as a user runs it (HDF5 writes and checkpoints included);
          its seconds and split come from the run file it writes (mpisub.bench.cases)
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
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from mpisub.bench.cases import CASES, QUICK, ROUNDS, cores, mpisub_numbers, run_mpisub, second_launch, split_line
from mpisub.nn import masks


@dataclass(frozen=True)
class Target:
    """A row of the table: mpisub on `case` at K ranks (dtype, BLAS threads per rank, 0 = auto)
    against a baseline, with the ratio it must reach (<= for peers, 'faster' for mpisub variants)."""
    name: str
    case: str
    K: int
    against: str                 # "numpy", "torch", or another mpisub run: "mpisub K=1" (auto threads),
    target: float                # "mpisub K=1 1 thread", "mpisub float64"
    dtype: str = "float64"
    threads: int = 0

    @property
    def peer(self) -> bool:
        return self.against in ("numpy", "torch", "torch nn.Dropout")

    @property
    def baseline_key(self) -> tuple:
        """The mpisub run the ratio divides by (for a peer: the run whose rounds the peer replays)."""
        return (self.case, 1, "float64", 1 if self.against == "mpisub K=1 1 thread" else 0)


TARGETS = [
    Target("theory-small", "theory-small", 1, "torch", 0.33),
    Target("theory-small", "theory-small", 1, "numpy", 0.5),
    Target("theory-small, one rank per core", "theory-small", 2, "torch", 0.33),
    Target("paper (Fig. 2a)", "paper", 1, "numpy", 1.0),
    Target("wide IST", "wide-ist", 1, "torch", 0.6),
    Target("wide IST, K=2 vs K=1", "wide-ist", 2, "mpisub K=1", 1 / 1.6),
    Target("wide IST, K=2 vs K=1 on one thread", "wide-ist", 2, "mpisub K=1 1 thread", 1 / 1.6),
    Target("paper, float32 vs float64", "paper", 1, "mpisub float64", 1 / 1.4, dtype="float32"),
    Target("dropout preset", "dropout", 1, "torch nn.Dropout", 1.0),
]
BARE_TARGET = 1.3  # the paper case's local steps against their two bare products per step
# a whole round of the dropout presets against its essential products (two GEMMs per subnetwork
# step on the kept rows), and the share of a round the instruments (evaluations) may take
ROUND_TARGETS = {"dropout": 1.2, "multisample": 1.2}
INSTRUMENTS_SHARE = 0.05


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


def torch_dropout(run: dict, rounds: int) -> dict:
    """PyTorch's own dropout training of the same network at the same keep: dense, nn.Dropout on
    the hidden layer, autograd, one SGD step per round (its own masks, so only seconds compare)."""
    import torch
    torch.set_num_threads(cores())
    cfg, X, Y, a, W = _setup(run)
    X, Y, a = (torch.from_numpy(v) for v in (X, Y, a))
    W = torch.from_numpy(W).requires_grad_(True)
    drop = torch.nn.Dropout(p=1 - cfg["masks"]["keep"]).train()
    opt = torch.optim.SGD([W], lr=cfg["train"]["lr"])
    m = W.shape[0]
    seconds = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = 0.5 * ((drop(torch.relu(X @ W.T)) @ a / math.sqrt(m) - Y) ** 2).sum() / X.shape[0]
        loss.backward()
        opt.step()
        seconds.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(seconds[1:])}


def run_baseline(how: str, run: dict, rounds: int) -> dict:
    cfg, X, Y, a, W = _setup(run)
    mk, tr = cfg["masks"], cfg["train"]
    step = numpy_round
    if how == "torch":
        import functools

        import torch
        torch.set_num_threads(cores())
        X, Y, a, W = (torch.from_numpy(v) for v in (X, Y, a, W))
        step = functools.partial(torch_round, torch)
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


def measure(cases: dict, rounds: int, torch_ok: bool) -> tuple[dict, float]:
    """Every mpisub run the targets need, each once, and the peers' rounds of the K = 1 runs."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="mpisub-peers-") as tmp:
        for t in TARGETS:
            for key in (t.baseline_key, (t.case, t.K, t.dtype, t.threads)):
                if key in results:
                    continue
                case, K, dtype, threads = key
                n_rounds = 1 + (rounds or ROUNDS[case])
                print(f"# running {case} with mpisub: mpirun -n {K}, {dtype}, {threads or 'auto'} thread(s) "
                      f"per rank, {n_rounds} rounds ...", flush=True)
                run = run_mpisub(cases[case], K, dtype, n_rounds, os.path.join(tmp, "-".join(map(str, key))), threads)
                results[key] = {"mpisub": mpisub_numbers(run)}
                if key == (case, 1, "float64", 0):
                    print(f"# running {case} with numpy{' and torch' if torch_ok else ''} ...", flush=True)
                    results[key]["numpy"] = run_baseline("numpy", run, n_rounds)
                    results[key]["bare products"] = bare_products(run)
                    if torch_ok:
                        results[key]["torch"] = run_baseline("torch", run, n_rounds)
                        if case == "dropout":
                            results[key]["torch nn.Dropout"] = torch_dropout(run, n_rounds)
        for case in ROUND_TARGETS:   # the cases whose whole round is measured against its products
            key = (case, 1, "float64", 0)
            if key not in results:
                n_rounds = 1 + (rounds or ROUNDS[case])
                print(f"# running {case} with mpisub: mpirun -n 1, float64, auto thread(s) per rank, "
                      f"{n_rounds} rounds ...", flush=True)
                run = run_mpisub(cases[case], 1, "float64", n_rounds, os.path.join(tmp, f"{case}-round"))
                results[key] = {"mpisub": mpisub_numbers(run), "bare products": bare_products(run)}
        launch = second_launch(tmp)
    return results, launch


def table(cases: dict, results: dict, torch_note: str | None) -> tuple[list[str], list[bool]]:
    rows = ["| case | n, d, m, p, tau, masks | mpisub s/round | against | its s/round | ratio | target | met |",
            "|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for t in TARGETS:
        c = cases[t.case]
        mine = results[(t.case, t.K, t.dtype, t.threads)]["mpisub"]["seconds"]
        base = results[t.baseline_key]
        if t.peer and t.against not in base:
            rows.append(f"| {t.name} | | {mine:.4f} | {t.against} | {torch_note} | | | |")
            continue
        other = base[t.against]["seconds"] if t.peer else base["mpisub"]["seconds"]
        ratio = mine / other
        verdicts.append(ratio <= t.target)
        desc = f"{c['n']}, {c['d']}, {c['m']}, {c['p']}, {c['tau']}, {c['kind']}" + \
               (f" {c['keep']:g}" if c["kind"] == "bernoulli" else "") + (f", K={t.K}" if t.K > 1 else "") + \
               (f", {t.dtype}" if t.dtype != "float64" else "")
        shown = f"<= {t.target:.2f}x" if t.peer else f">= {1 / t.target:.1f}x faster"
        got = f"{ratio:.2f}x" if t.peer else f"{1 / ratio:.2f}x faster"
        rows.append(f"| {t.name} | {desc} | {mine:.4f} | {t.against} | {other:.4f} | {got} | {shown} | "
                    f"{'yes' if verdicts[-1] else 'NO'} |")
    paper = results[("paper", 1, "float64", 0)]
    local = paper["mpisub"]["split"]["local steps"]
    ratio = local / paper["bare products"]
    verdicts.append(ratio <= BARE_TARGET)
    rows.append(f"| paper: local steps vs two bare products | per round | {local:.4f} | 2 GEMMs x p x tau | "
                f"{paper['bare products']:.4f} | {ratio:.2f}x | <= {BARE_TARGET:.2f}x | "
                f"{'yes' if verdicts[-1] else 'NO'} |")
    for case, target in ROUND_TARGETS.items():
        res = results[(case, 1, "float64", 0)]
        mine, bare = res["mpisub"]["seconds"], res["bare products"]
        verdicts.append(mine / bare <= target)
        rows.append(f"| {case}: whole round vs its products | per round | {mine:.4f} | 2 GEMMs x p x tau | "
                    f"{bare:.4f} | {mine / bare:.2f}x | <= {target:.2f}x | {'yes' if verdicts[-1] else 'NO'} |")
    for (case, K, dtype, threads), res in sorted(results.items()):
        if K != 1 or dtype != "float64" or threads:
            continue
        share = res["mpisub"]["evaluation_share"]
        verdicts.append(share <= INSTRUMENTS_SHARE)
        rows.append(f"| {case}: evaluations (loss, held-out, diagnostics) | default cadence | | time share "
                    f"of the rounds | | {share:.3f} | <= {INSTRUMENTS_SHARE:.2f} | {'yes' if verdicts[-1] else 'NO'} |")
    return rows, verdicts


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=0, help="measured rounds per case after one warm-up "
                   "(default: 20 theory-small, 3 paper, 5 wide IST)")
    p.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test, not a measurement)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    p.add_argument("--json", metavar="FILE", help="also write every number as JSON")
    args = p.parse_args(argv)
    cases = QUICK if args.quick else CASES
    torch_note = "skipped (--no-torch)" if args.no_torch else None
    if torch_note is None:
        try:
            import torch  # noqa: F401
        except ImportError:
            torch_note = "skipped: torch is not installed (pip install torch==2.13.0 for the CPU build)"
    print(f"# benchmarks/peers.py on {cores()} core(s); medians of seconds per round after one warm-up round",
          flush=True)
    results, launch = measure(cases, args.rounds, torch_note is None)
    rows, verdicts = table(cases, results, torch_note)
    print("\n".join(rows))
    print(f"\nsecond launch of a 1-round job (mpirun -n 2, kernels cached): {launch:.2f} s (target < 3 s)")
    print("\ntime split of an mpisub round (seconds per round, rank 0), bytes sent per round / model size, "
          "peak memory per rank:")
    for (case, K, dtype, threads), res in sorted(results.items()):
        agree = "; ".join(f"{k} agrees to {res[k]['agrees']:.1e}" for k in ("numpy", "torch") if k in res)
        print("  " + split_line(f"{case} K={K} {dtype} {threads or 'auto'} thread(s)", res["mpisub"])
              + (f"; {agree}" if agree else ""))
    if torch_note:
        print(f"torch: {torch_note}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": {f"{k[0]} K={k[1]} {k[2]} threads={k[3] or 'auto'}": v for k, v in results.items()},
                       "second_launch_seconds": launch, "table": rows}, f, indent=1)
    print(f"\n{sum(verdicts)} of {len(verdicts)} targets met")


if __name__ == "__main__":
    main()
