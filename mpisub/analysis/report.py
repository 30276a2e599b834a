"""`mpisub-inspect`: what a user checks first about runs (a summary each, the scores' final and
best values, the lazy-regime check, where the time went), a table of the keys in which several runs
differ, spreads over seeds, the tables as CSV or JSON lines, and a view that follows running jobs.
Reads runs through analysis.py; no MPI, no numba."""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import sys
import time
from typing import TextIO

import numpy as np

from mpisub import config
from mpisub._util.errors import Parser, UserError, command
from mpisub.analysis.runs import Run, flat_config, label_keys, open_all, seed_groups
from mpisub.config import from_dict
from mpisub.io import schema
from mpisub.nn import theory


def spread_table(runs: list[Run]) -> str | None:
    """One row per group of runs that differ only in train.seed: the seeds, and the mean +- std
    (min-max) over them of each score's final value (the loss, and where recorded the held-out
    loss and the accuracies)."""
    groups = [g for g in seed_groups(runs) if len(g) > 1]
    if not groups:
        return None
    keys = label_keys(runs)
    lines = ["runs that differ only in train.seed (mean +- std, min-max):"]
    for group in groups:
        flat = flat_config(group[0])
        name = ", ".join(f"{k}={flat.get(k)}" for k in keys) or "all"
        cells = []
        for column in [c for c in schema.SCORES if c != "sub_loss"]:
            values = np.array([r.scores()[column]["final"] for r in group if column in r.scores()])
            if len(values):
                std = values.std(ddof=1) if len(values) > 1 else 0.0
                cells.append(f"final {column} {values.mean():.4g} +- {std:.2g} ({values.min():.4g}-{values.max():.4g})")
        cells.append(plateau_interval([r.plateau()["plateau"] for r in group]))
        lines.append(f"  {name}: {len(group)} seeds; " + "; ".join(c for c in cells if c))
    return "\n".join(lines)


def plateau_interval(values: list[float | None]) -> str:
    """The seeds' plateau estimates as a mean with its 95% confidence interval (Student's t)."""
    x = np.array([v for v in values if v is not None], dtype=np.float64)
    if len(x) < 2:
        return ""
    from scipy.stats import t  # lazy, for start-up time: scipy.stats takes ~0.3 s to import
    half = t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return f"plateau {x.mean():.4g} (95% CI {x.mean() - half:.4g} to {x.mean() + half:.4g})"


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
        "init_from": {"run": cfg["model"].get("init_from", ""), "round": run.attrs.get("init_round"),
                      "sha256": run.attrs.get("init_sha256")} if cfg["model"].get("init_from") else None,
        "rounds_done": done,
        "loss_init": run.loss_init,
        "loss_final": float(loss[-1]) if len(loss) else None,
        "loss_best": float(loss.min()) if len(loss) else None,
        "loss_final_round": int(run.eval["round"][-1]) if len(loss) else None,
        "sub_loss_final": float(m["sub_loss"][-1]) if done else None,
        "scores": run.scores(),          # every score's final and best value, and its round
        "compute": float(m["compute"][-1]) if done else 0.0,
        "seconds": seconds,
        "bytes_comm": int(m["bytes_comm"].sum()),
        "lambda0": run.lambda0,
        "rate_per_round": run.rate(),   # a fit over the whole curve, plateau included
        **theory.curve_summary(run.eval["round"], run.eval["loss"]),
        **{f"plateau_{k}" if k != "plateau" else k: v for k, v in run.plateau().items()},
        "lambda_max": run.lambda_max,
        "step_number": step_number(run),
        "peak_rss_mb": [float(x) for x in run.attrs.get("peak_rss_mb", [])],
        "segments": json.loads(run.attrs.get("segments", "[]")),   # one per launch (mpisub 0.2 on)
        "eta_seconds": _eta(run, done),
        **regime(run),
    }


# the lazy (NTK) regime the theory covers: activation patterns barely change and H(W) stays near H
FLIPS_LIMIT = 0.10
LAMBDA_SHARE = 0.5


def step_number(run: Run) -> float | None:
    """The run's local steps' step-stability number, lr lambda_max / (n keep) (theory.step_number)."""
    if run.lambda_max is None:
        return None
    cfg = from_dict(run.config)
    return theory.step_number(config.ntk_lr(cfg), run.lambda_max, cfg.data.n, cfg.masks.keep)


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


def _theory_parts(s: dict) -> list[str]:
    """The summary's theory line: the early rate, the plateau, lambda_0, lambda_max and the step number."""
    parts = []
    if s.get("early_rate") is not None:
        parts.append(f"early rate {s['early_rate']:.4f} per round (rounds 0-{s['early_until']}, before the "
                     f"loss comes within {theory.ABOVE_PLATEAU:g}x its plateau)")
    if s.get("plateau") is not None:
        state = "plateaued" if s["plateaued"] else "still falling by more than 1% a round"
        if s.get("plateau_stopped_at") is not None:
            state = f"the rule stopped the run in round {s['plateau_stopped_at']}"
        parts.append(f"plateau {s['plateau']:.3e} ({s.get('plateau_how', 'geometric mean of the last quarter')}; "
                     f"{state})")
    if s["lambda0"] is not None:
        parts.append(f"NTK lambda_0 {s['lambda0']:.4e}")
    if s.get("lambda_max") is not None:
        parts.append(f"lambda_max {s['lambda_max']:.4e}, step number {s['step_number']:.3g}"
                     + (f" (above {theory.STABLE_STEP:g}!)" if s["step_number"] > theory.STABLE_STEP else ""))
    return parts


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
    if s.get("init_from"):
        lines.append(f"  started from the weights of {s['init_from']['run']} (its round {s['init_from']['round']}, "
                     f"W and a sha256 {str(s['init_from']['sha256'])[:16]})")
    if s["loss_final"] is not None:
        init = f"{s['loss_init']:.4e} -> " if s["loss_init"] is not None else ""
        at = f" at round {s['loss_final_round']}" if s.get("loss_final_round") not in (None, s["rounds_done"]) else ""
        best = s["scores"].get("loss", {}).get("best_round")
        lines.append(f"  loss {init}{s['loss_final']:.4e}{at} (best {s['loss_best']:.4e} at round {best}); "
                     f"subnetwork loss {s['sub_loss_final']:.4e}; {s['compute']:.4g} full gradients of compute")
    held = [f"{name} {v['final']:{_form(name)}} (best {v['best']:{_form(name)}} at round {v['best_round']})"
            for name, v in s["scores"].items() if name not in ("loss", "sub_loss")]
    if held:
        lines.append("  " + "; ".join(held))
    theory_line = _theory_parts(s)
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
    """One row per run: the config keys that tell the runs apart, then the outcome: the final and
    best value of every score any of them has."""
    keys = label_keys(runs) + (["train.seed"] if len({flat_config(r)["train.seed"] for r in runs}) > 1 else [])
    scores = [c for c in schema.SCORES if c != "sub_loss" and any(c in s["scores"] for s in summaries)]
    head = ["run"] + keys + ["status", "rounds"] + [f"{w} {c}" for c in scores for w in ("final", "best")] + \
        ["early rate", "plateau", "lambda_0", "seconds"]
    rows = []
    for run, s in zip(runs, summaries):
        flat = flat_config(run)
        cells = [_cell(s["scores"].get(c, {}).get(w), _form(c))
                 for c in scores for w in ("final", "best")]
        rows.append([run.folder] + [str(flat.get(k)) for k in keys] + [s["status"], str(s["rounds_done"])] + cells +
                    [_cell(s["early_rate"], ".4f"), _cell(s["plateau"], ".3e"), _cell(s["lambda0"], ".3e"),
                     f"{s['seconds']['wall']:.1f}"])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    lines = [head, ["-" * w for w in widths]] + rows
    note = f"(config keys that differ: {', '.join(keys) or 'none'})"
    return "\n".join(["  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in lines] + [note])


def _form(score: str) -> str:
    """How a score's values print: losses in exponent form, accuracies as fractions."""
    return ".4e" if schema.SCORES.get(score) == "min" else ".4f"


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)




def export(runs: list[Run], fmt: str, out: TextIO) -> None:
    """Both tables of every run to `out` as CSV (one header) or JSON lines: a `table` column
    (metrics: one row per round; eval: one per evaluation of the full network), a `run` column first
    when there are several runs, then round and every column (empty where a table has none)."""
    many = len(runs) > 1
    columns = ["round"] + [c for c in {**schema.METRICS, **schema.EVAL} if c != "round"]
    writer = None
    for run in runs:
        for table in schema.TABLES:
            for row in run.rows(table):
                row = {**({"run": run.folder} if many else {}), "table": table, **row}
                if fmt == "jsonl":
                    out.write(json.dumps(row) + "\n")
                    continue
                if writer is None:
                    names = (["run"] if many else []) + ["table"] + columns
                    writer = csv.DictWriter(out, fieldnames=names, lineterminator="\n", extrasaction="ignore")
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
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0 (e.g. 5)")
    return value


@command("mpisub-inspect")
def inspect_main(argv: list[str] | None = None) -> None:
    # a pipe closed by the reader (mpisub-inspect ... | head) ends the output quietly, as cat does
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)

    p = Parser(prog="mpisub-inspect", description=(
        "Summarise mpisub runs (run folders or run.h5 files); with several, also a table of the "
        "config keys in which they differ."))
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="print both tables (per-round metrics and evaluations) as "
                     "CSV: a 'table' column says which, a 'run' column comes first when there are several runs")
    out.add_argument("--jsonl", action="store_true", help="print both tables as JSON lines (as --csv)")
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
