"""Reading runs: the notebook API (`open_run`, `open_runs`), `mpisub-inspect` and `mpisub-plot`.
No MPI, no numba: runs can be analysed anywhere h5py is installed.
"""
import glob as globbing
import json
import os
import sys
import time

import h5py
import numpy as np

from . import theory
from .config import flatten
from .errors import Parser, UserError, command
from .folders import FILENAME
from .readback import read_run


class Run:
    """One run file. Attributes, config and metrics are read at once (they are small); the
    arrays (W, W_init, a, X, Y, H, masks) are read when first asked for."""

    def __init__(self, path: str):
        if os.path.isdir(path):
            path = os.path.join(path, FILENAME)
        self.path = path
        self.folder = os.path.dirname(path)
        run = read_run(path, arrays=False)
        self.attrs, self.metrics, self.lambda0 = run["attrs"], run["metrics"], run.get("lambda0")
        self.eval = run["eval"]   # the full network's evaluations: rows `round`, `loss`
        loss_init = self.metrics.pop("loss_init", None)   # an attribute of /metrics, not a row
        self.loss_init = None if loss_init is None else float(loss_init)
        self.config = json.loads(self.attrs["config"])
        self.data_source = run["data"].get("source", "")     # "" for built-in data (then /data holds it)
        self.data_sha256 = run["data"].get("sha256", "")
        self.status = self.attrs["status"]

    def _array(self, name):
        with h5py.File(self.path, "r") as f:
            return f[name][()] if name in f else None

    W = property(lambda self: self._array("model/W"), doc="latest aggregated weights (m x d)")
    W_init = property(lambda self: self._array("model/W_init"), doc="initial weights (m x d)")
    a = property(lambda self: self._array("model/a"), doc="output weights (m x c)")
    X = property(lambda self: self._array("data/X"), doc="built-in training inputs (None for a data file)")
    Y = property(lambda self: self._array("data/Y"), doc="built-in training targets (None for a data file)")
    H = property(lambda self: self._array("theory/H"), doc="the data's NTK Gram matrix (None unless stored)")
    masks = property(lambda self: None if (M := self._array("masks")) is None else M[:len(self.metrics["round"])],
                     doc="rounds x p x m, with output.record_masks")

    def rows(self) -> list[dict]:
        """The per-round metrics as one dict per round (what --csv and --jsonl write)."""
        names = list(self.metrics)
        return [{name: self.metrics[name][i].item() for name in names} for i in range(len(self.metrics["round"]))]

    def to_dataframe(self):
        """The per-round metrics as a pandas DataFrame indexed by round (pandas is optional:
        pip install pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Run.to_dataframe needs pandas: pip install pandas") from None
        return pd.DataFrame({k: v for k, v in self.metrics.items() if k != "round"},
                            index=pd.Index(self.metrics["round"], name="round"))

    def rate(self) -> float | None:
        """Empirical per-round linear rate of the full-network loss (fit of log loss over rounds)."""
        done = self.eval["round"] > 0
        return theory.linear_rate(self.eval["loss"][done], self.eval["round"][done])

    def __repr__(self):
        mk = self.config["masks"]
        return (f"Run({self.folder!r}, {self.status}, {len(self.metrics['round'])}/{self.config['train']['rounds']} "
                f"rounds, {mk['kind']} p={mk['subnets']} keep={mk['keep']:g})")


def open_run(path: str) -> Run:
    """A run folder or its run.h5."""
    return Run(path)


def open_runs(pattern: str) -> list[Run]:
    """Every run matching a glob of folders or run.h5 files (e.g. "runs/sweep-*"), sorted by path."""
    paths = []
    for p in sorted(globbing.glob(pattern)):
        if os.path.isfile(p) or os.path.isfile(os.path.join(p, FILENAME)):
            paths.append(p)
    return [Run(p) for p in paths]


def flat_config(run: Run) -> dict:
    return flatten(run.config)


def differing_keys(runs: list[Run]) -> list[str]:
    """The config keys whose values are not the same in all runs (the output section aside: where
    and how often a run writes does not change what it computes)."""
    flats = [flat_config(r) for r in runs]
    keys = sorted(set().union(*flats))
    return [k for k in keys if not k.startswith("output.") and len({json.dumps(f.get(k)) for f in flats}) > 1]


def seed_groups(runs: list[Run]) -> list[list[Run]]:
    """The runs grouped by their config without train.seed (and the output section), in first-seen order:
    a group of several is one point of a sweep over seeds."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        flat = {k: v for k, v in flat_config(run).items() if k != "train.seed" and not k.startswith("output.")}
        groups.setdefault(json.dumps(flat, sort_keys=True), []).append(run)
    return list(groups.values())


def spread_table(runs: list[Run]) -> str | None:
    """One row per group of runs that differ only in train.seed: the seeds, and the mean +- std
    (min-max) over them of the final loss and, where recorded, the test loss and accuracy."""
    groups = [g for g in seed_groups(runs) if len(g) > 1]
    if not groups:
        return None
    keys = [k for k in differing_keys(runs) if k != "train.seed"]
    lines = ["runs that differ only in train.seed (mean +- std, min-max):"]
    for group in groups:
        flat = flat_config(group[0])
        name = ", ".join(f"{k}={flat.get(k)}" for k in keys) or "all"
        cells = []
        for column in ("loss", "test_loss", "test_acc"):
            values = np.array([r.eval[column][-1] for r in group if column in r.eval and len(r.eval[column])])
            values = values[np.isfinite(values)]
            if len(values):
                std = values.std(ddof=1) if len(values) > 1 else 0.0
                cells.append(f"final {column} {values.mean():.4g} +- {std:.2g} ({values.min():.4g}-{values.max():.4g})")
        lines.append(f"  {name}: {len(group)} seeds; " + "; ".join(cells))
    return "\n".join(lines)


def summary(run: Run) -> dict:
    """The facts a user checks first about a run, as plain values."""
    m, cfg = run.metrics, run.config
    loss = run.eval["loss"][run.eval["round"] > 0]
    done = len(m["round"])
    seconds = {k: float(m[f"seconds_{k}"].sum()) for k in ("compute", "comm", "wall")}
    for part in ("local", "loss"):
        if f"seconds_{part}" in m:
            seconds[part] = float(m[f"seconds_{part}"].sum())
    return {
        "path": run.folder,
        "status": run.status,
        "stale_seconds": stale_seconds(run),
        "ranks": int(run.attrs.get("ranks", 0)),
        "mpi_library": run.attrs.get("mpi_library", "unknown"),
        "mpisub_version": run.attrs.get("mpisub_version", "unknown"),
        "created": run.attrs.get("created", "unknown"),
        "masks": cfg["masks"],
        "model": cfg["model"],
        "data": {k: cfg["data"][k] for k in ("source", "n", "d", "outputs", "noise")},
        "train": cfg["train"],
        "rounds_done": done,
        "loss_init": run.loss_init,
        "loss_final": float(loss[-1]) if len(loss) else None,
        "loss_best": float(loss.min()) if len(loss) else None,
        "loss_final_round": int(run.eval["round"][-1]) if len(loss) else None,
        "sub_loss_final": float(m["sub_loss"][-1]) if done else None,
        "seconds": seconds,
        "bytes_comm": int(m["bytes_comm"].sum()),
        "lambda0": run.lambda0,
        "rate_per_round": run.rate(),   # a fit over the whole curve, plateau included
        **theory.curve_summary(run.eval["round"], run.eval["loss"]),
        "peak_rss_mb": [float(x) for x in run.attrs.get("peak_rss_mb", [])],
        "segments": json.loads(run.attrs.get("segments", "[]")),   # one per launch (mpisub 0.2 on)
        "eta_seconds": _eta(run, done),
        **regime(run),
    }


# the lazy (NTK) regime the theory covers: activation patterns barely change and H(W) stays near H
FLIPS_LIMIT = 0.10
LAMBDA_SHARE = 0.5


def regime(run: Run) -> dict:
    """The last evaluation's lazy-regime diagnostics, and a warning (None when within) when the run
    left the regime: over FLIPS_LIMIT of activation patterns flipped, or lambda_min(H(W_k)) below
    LAMBDA_SHARE x lambda_0. Runs before mpisub 0.2 have no diagnostics."""
    e = run.eval
    if "flips" not in e or not len(e["flips"]):
        return {}
    last = {name: float(e[name][-1]) if name in e else float("nan") for name in ("flips", "dw_rel", "dw_max",
                                                                                   "lambda_min")}
    why = []
    if last["flips"] > FLIPS_LIMIT:
        why.append(f"{100 * last['flips']:.1f}% of activation patterns flipped (over {100 * FLIPS_LIMIT:g}%)")
    if run.lambda0 and last["lambda_min"] == last["lambda_min"] and last["lambda_min"] < LAMBDA_SHARE * run.lambda0:
        why.append(f"lambda_min(H(W_k)) = {last['lambda_min']:.3e} < lambda_0 / 2 = {run.lambda0 / 2:.3e}")
    return {"lazy": last, "regime_warning": "; ".join(why) or None}


def _eta(run: Run, done: int) -> float | None:
    """Seconds left for a running run at the pace of its last 10 rounds."""
    wall = run.metrics["seconds_wall"][-10:]
    if run.status != "running" or not len(wall):
        return None
    return float(wall.mean()) * max(0, run.config["train"]["rounds"] - done)


def stale_seconds(run: Run) -> float | None:
    """For a run whose status says running: seconds since its file last changed, when that is far
    longer than its rounds take (rows land at least once a second), i.e. the job likely died."""
    if run.status != "running":
        return None
    age = time.time() - os.path.getmtime(run.path)
    wall = run.metrics["seconds_wall"]
    typical = float(wall.max()) if len(wall) else 0.0
    return age if age > max(120.0, 10 * typical) else None


def format_summary(s: dict) -> str:
    mk, tr = s["masks"], s["train"]
    status = s["status"]
    if s.get("stale_seconds"):
        status += (f" (but no new round for {s['stale_seconds'] / 60:.0f} min: the job may have died; "
                   f"continue it with mpirun -n K mpisub-train --resume {s['path']})")
    if s.get("eta_seconds") is not None and not s.get("stale_seconds"):
        status += f" (about {s['eta_seconds']:.0f} s left at the pace of the last rounds)"
    lines = [
        f"{s['path']}: {status}, {s['rounds_done']}/{tr['rounds']} rounds, {s['ranks']} rank(s), "
        f"mpisub {s['mpisub_version']}, {s['created']}",
        f"  masks {mk['kind']}  p={mk['subnets']}  keep={mk['keep']:g}   tau={tr['local_steps']}  lr={tr['lr']:g}  "
        f"batch={tr['batch_size'] or 'full'}   m={s['model']['width']}  {s['model']['dtype']}   "
        f"data {s['data']['source']} n={s['data']['n']} d={s['data']['d']} c={s['data']['outputs']}",
    ]
    if s["loss_final"] is not None:
        init = f"{s['loss_init']:.4e} -> " if s["loss_init"] is not None else ""
        at = f" at round {s['loss_final_round']}" if s.get("loss_final_round") not in (None, s["rounds_done"]) else ""
        lines.append(f"  loss {init}{s['loss_final']:.4e}{at} (best {s['loss_best']:.4e}); "
                     f"subnetwork loss {s['sub_loss_final']:.4e}")
    theory_line = []
    if s.get("early_rate") is not None:
        theory_line.append(f"early rate {s['early_rate']:.4f} per round (rounds 0-{s['early_until']}, before the "
                           f"loss comes within {theory.ABOVE_PLATEAU:g}x its plateau)")
    if s.get("plateau") is not None:
        state = "plateaued" if s["plateaued"] else "still falling"
        theory_line.append(f"plateau {s['plateau']:.3e} (geometric mean of the last quarter; {state})")
    if s["lambda0"] is not None:
        theory_line.append(f"NTK lambda_0 {s['lambda0']:.4e}")
    if theory_line:
        lines.append("  " + "; ".join(theory_line))
    if s.get("lazy"):
        z = s["lazy"]
        gram = f", lambda_min(H(W_k)) {z['lambda_min']:.3e}" if z["lambda_min"] == z["lambda_min"] else ""
        lines.append(f"  lazy regime: {100 * z['flips']:.2f}% of activation patterns flipped, ||W - W0|| / ||W0|| "
                     f"{z['dw_rel']:.3g}, max_r ||w_r - w_r(0)|| {z['dw_max']:.3g}{gram}")
    if s.get("regime_warning"):
        lines.append(f"  WARNING: this run left the lazy regime the theory covers: {s['regime_warning']}")
    sec = s["seconds"]
    split = ", ".join(f"{k} {sec[k]:.2f} s" for k in ("local", "loss") if k in sec)
    if len(s["segments"]) > 1 or any(seg.get("ended") not in (None, "completed") for seg in s["segments"]):
        lines.append(f"  {len(s['segments'])} launch(es):")
        lines += [f"    rounds {seg['first_round']}-{seg['last_round']}: {seg['ranks']} rank(s) on {seg['host']}, "
                  f"{seg['started']}, mpisub {seg['mpisub_version']} (code {seg['code_hash']}), "
                  f"{seg['mpi_library'].splitlines()[0][:40]}; {seg.get('ended', 'did not end cleanly')}"
                  for seg in s["segments"]]
    lines.append(f"  time {sec['wall']:.2f} s (compute {sec['compute']:.2f} s{': ' + split if split else ''}; "
                 f"comm {sec['comm']:.2f} s); rank 0 sent {s['bytes_comm'] / 1e6:.2f} MB"
                 + (f"; peak memory {max(s['peak_rss_mb']):.0f} MB per rank" if s["peak_rss_mb"] else ""))
    return "\n".join(lines)


def comparison_table(runs: list[Run], summaries: list[dict]) -> str:
    """One row per run: the config keys in which the runs differ, then the outcome."""
    keys = differing_keys(runs)
    head = ["run"] + keys + ["status", "rounds", "final loss", "best loss", "early rate", "plateau", "lambda_0",
                             "seconds"]
    rows = []
    for run, s in zip(runs, summaries):
        flat = flat_config(run)
        rows.append([run.folder] + [str(flat.get(k)) for k in keys] + [
            s["status"], str(s["rounds_done"]), _cell(s["loss_final"], ".4e"), _cell(s["loss_best"], ".4e"),
            _cell(s["early_rate"], ".4f"), _cell(s["plateau"], ".3e"), _cell(s["lambda0"], ".3e"),
            f"{s['seconds']['wall']:.1f}"])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    lines = [head, ["-" * w for w in widths]] + rows
    note = f"(config keys that differ: {', '.join(keys) or 'none'})"
    return "\n".join(["  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in lines] + [note])


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def open_all(paths: list[str]) -> list[Run]:
    """Runs from folders or run.h5 paths; a UserError names the first that cannot be read."""
    runs = []
    for path in paths:
        if not os.path.exists(path):
            raise UserError(f"{path!r} does not exist; give a run folder or its run.h5")
        try:
            runs.append(Run(path))
        except (OSError, KeyError, ValueError) as e:
            raise UserError(f"{path!r} is not a readable mpisub run file ({e})") from None
    return runs


def export(runs: list[Run], fmt: str, out) -> None:
    """Every run's per-round metrics to `out` as CSV (one header) or JSON lines."""
    import csv
    many = len(runs) > 1
    writer = None
    for run in runs:
        for row in run.rows():
            row = {"run": run.folder, **row} if many else row
            if fmt == "jsonl":
                out.write(json.dumps(row) + "\n")
                continue
            if writer is None:
                writer = csv.DictWriter(out, fieldnames=list(row), lineterminator="\n")
                writer.writeheader()
            writer.writerow(row)


def watch(paths: list[str], every: float) -> None:
    """The summaries, redrawn every `every` seconds while any run is running; the last view stays.
    Ctrl-C leaves (the command's one line and exit 130)."""
    clear = "\033[H\033[2J" if sys.stdout.isatty() else ""
    while True:
        try:
            runs = open_all(paths)
        except UserError as e:       # e.g. a run file not yet published: look again
            print(f"mpisub-inspect --watch: {e}; looking again in {every:g} s", flush=True)
            time.sleep(every)
            continue
        stamp = time.strftime("%H:%M:%S")
        print(f"{clear}mpisub-inspect --watch ({stamp}, every {every:g} s; Ctrl-C leaves)", flush=True)
        print("\n".join(format_summary(summary(r)) for r in runs), flush=True)
        if all(r.status != "running" or stale_seconds(r) for r in runs):
            return
        time.sleep(every)


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0."""
    import argparse
    import math
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0 (e.g. 5)")
    return value


@command("mpisub-inspect")
def inspect_main(argv=None) -> None:
    import signal
    # a pipe closed by the reader (mpisub-inspect ... | head) ends the output quietly, as cat does
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)

    p = Parser(prog="mpisub-inspect", description=(
        "Summarise mpisub runs (run folders or run.h5 files); with several, also a table of the "
        "config keys in which they differ."))
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="print the per-round metrics as CSV (a 'run' column "
                     "first when there are several runs)")
    out.add_argument("--jsonl", action="store_true", help="print the per-round metrics as JSON lines")
    out.add_argument("--watch", action="store_true", help="show the summary again every --every seconds "
                     "until the run stops running (Ctrl-C leaves)")
    p.add_argument("--every", type=seconds, default=5.0, help="--watch: seconds between refreshes (default 5)")
    args = p.parse_args(argv)
    runs = open_all(args.runs)
    if args.csv or args.jsonl:
        return export(runs, "csv" if args.csv else "jsonl", sys.stdout)
    if args.watch:
        return watch(args.runs, args.every)
    summaries = [summary(r) for r in runs]
    if args.json:
        print(json.dumps(summaries if len(summaries) > 1 else summaries[0], indent=1))
        return
    print("\n".join(format_summary(s) for s in summaries))
    if len(runs) > 1:
        print("\n" + comparison_table(runs, summaries))
        spreads = spread_table(runs)
        if spreads:
            print("\n" + spreads)
