"""Many runs: `mpisub-sweep SWEEP.toml` (cases times a grid of config values times seeds) and the
Each point is its own `mpirun -n K mpisub-train` (point.Point), prints
one line when it ends, is reused when the sweep runs again and its run is still the point's
(identity.py), and resumed when it was interrupted.

SWEEP.toml (docs/design.md, section 4, "Sweeps"):

    out = "runs/keep-sweep"     # the sweep's folder: one run folder per point and seed in it
    ranks = 2                   # mpirun -n for every run (a case may set its own)
    seeds = 3                   # train.seed = 0, 1, 2 at every point (default 1)
    config = "job.toml"         # optional: a base config file (relative to SWEEP.toml)
    preset = "ist"              # optional: a base preset (a case or the grid may set its own)
    minutes = 10                # optional: the most a point takes, for --slurm (default 10; a case may set its own)
    task_minutes = 60           # optional: --slurm packs points into array tasks of at most this long (default 60)
    [set]                       # optional: base values, as --set would give them
    "train.budget" = 200
    [grid]                      # every combination of these values (preset = [...] too)
    "masks.keep" = [0.25, 0.5, 0.75]
    [[case]]                    # optional: cases, each its own values (name, preset, ranks, minutes, keys)
    name = "gd"
    preset = "gd"

The points are every case times every grid combination times every seed; a value of the grid
overrides the case's, which overrides [set]. `--slurm` prints the sbatch command of a job array
whose tasks each run several points (slurm.py); a stop signal (USR1, TERM) is passed on to the
running point, which checkpoints, and the sweep ends with exit 3.
"""
from __future__ import annotations

import itertools
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from mpisub._util.errors import EXIT_INTERRUPTED, Parser, UserError, command
from mpisub.analysis.runs import Run
from mpisub.config import parse
from mpisub.study import slurm
from mpisub.study.launch import STOPS
from mpisub.study.sweep_point import Point, RunFailed, RunStopped

# the sweep file's entries: (types, what it must be)
ENTRIES: dict[str, tuple[tuple[Any, ...], str]] = {
    "out": ((str,), "a folder name"), "ranks": ((int,), "a whole number of at least 1"),
           "seeds": ((int,), "a whole number of at least 1"), "config": ((str,), "a config file's path"),
           "preset": ((str,), "a preset's name"), "minutes": ((int, float), "a number of minutes above 0"),
           "task_minutes": ((int, float), "a number of minutes above 0"),
           "set": ((dict,), "a table of config keys and values"), "grid": ((dict,), "a table of config keys and lists"),
           "case": ((list,), "a list of [[case]] tables")}
# what a [[case]] table or the grid may name besides config keys
POINT_ENTRIES = ("name", "preset", "ranks", "minutes")


@dataclass
class Sweep:
    path: str                  # the sweep file
    out: str
    points: list[Point]
    task_minutes: float = 60.0  # --slurm: the most one array task runs


def _entries(path: str, spec: dict) -> None:
    """Every entry of the sweep file is one it takes, of its type."""
    unknown = set(spec) - set(ENTRIES)
    if unknown:
        raise UserError(f"sweep file {path!r}: unknown entr{'ies' if len(unknown) > 1 else 'y'} "
                        f"{', '.join(sorted(unknown))}; it takes {', '.join(ENTRIES)}")
    for name in spec:
        value: Any = spec[name]
        kinds, what = ENTRIES[name]
        if not isinstance(value, kinds) or isinstance(value, bool) or (int in kinds and value <= 0) or \
                (str in kinds and not value.strip()):
            raise UserError(f"sweep file {path!r}: {name} = {value!r} must be {what}")
    if not all(isinstance(v, list) and v for v in spec.get("grid", {}).values()):
        raise UserError(f"sweep file {path!r}: [grid] must map config keys to non-empty lists of values")
    if not all(isinstance(c, dict) and c for c in spec.get("case", [])):
        raise UserError(f"sweep file {path!r}: every [[case]] must be a table of config keys and values")


def _cases(path: str, spec: dict) -> list[dict]:
    """The [[case]] tables (one empty case without them), each with a unique name."""
    cases = spec.get("case") or [{}]
    named = []
    for i, case in enumerate(cases):
        name = case.get("name") or "-".join(f"{k.split('.')[-1]}={v}" for k, v in case.items())
        if not isinstance(name, str) or (len(cases) > 1 and not name):
            raise UserError(f"sweep file {path!r}: [[case]] {i + 1} needs a name = \"...\" (a string)")
        named.append({**case, "name": name})
    names = [c["name"] for c in named]
    if len(set(names)) < len(names):
        raise UserError(f"sweep file {path!r}: two [[case]] tables are both named {_twice(names)!r}; name them apart")
    return named


def _twice(names: list[str]) -> str:
    return next(n for n in names if names.count(n) > 1)


def read_sweep(path: str) -> Sweep:
    """The sweep file and its points, checked: its entries' types, and every point's config (every
    key it sets a known key with a value of the right type, presets known). A train.seed in [set],
    [grid] or a case gives the seeds itself: then `seeds` must not be more than 1."""
    spec = parse.read_toml(path, what="sweep file")
    _entries(path, spec)
    base_file = spec.get("config")
    if base_file:
        base_file = os.path.join(os.path.dirname(os.path.abspath(path)), base_file)
    seeds = spec.get("seeds", 1)
    given_seed = any("train.seed" in t for t in [spec.get("set", {}), spec.get("grid", {}), *spec.get("case", [])])
    if seeds > 1 and given_seed:
        raise UserError(f"sweep file {path!r}: seeds = {seeds} and train.seed in [set], [grid] or a [[case]] both "
                        f"give the seeds; set one of them")
    defaults = {"preset": spec.get("preset"), "ranks": spec.get("ranks", 2), "minutes": spec.get("minutes", 10.0)}
    out = spec.get("out", os.path.splitext(path)[0])
    todo = points(out, _cases(path, spec), spec.get("grid", {}), {**spec.get("set", {})}, defaults, seeds, base_file)
    for point in todo:
        try:
            point.given()
        except UserError as e:
            raise UserError(f"sweep file {path!r}, point {os.path.basename(point.folder)}: {e}") from None
    return Sweep(path, out, todo, float(spec.get("task_minutes", 60.0)))


def points(out: str, cases: list[dict], grid: dict, values: dict, defaults: dict, seeds: int,
           base_file: str | None) -> list[Point]:
    """Every case times every grid combination times every seed, in order: [set] < case < grid."""
    keys, todo = list(grid), []
    for case, combo in itertools.product(cases, itertools.product(*(grid[k] for k in keys))):
        chosen = {**values, **case, **dict(zip(keys, combo))}
        parts = [case["name"]] if case["name"] else []
        name = "-".join(parts + [f"{k.split('.')[-1]}={v}" for k, v in zip(keys, combo)]) or "base"
        extra = {k: chosen.pop(k, defaults.get(k)) for k in POINT_ENTRIES}
        for seed in ([chosen["train.seed"]] if "train.seed" in chosen else range(seeds)):
            folder = name if "train.seed" in {**values, **case, **grid} else f"{name}-seed{seed}"
            todo.append(Point(os.path.join(out, folder), {**chosen, "train.seed": seed}, _ranks(extra["ranks"]),
                              extra["preset"], base_file, _minutes(extra["minutes"])))
    return todo


def _ranks(value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"ranks = {value!r} in a [[case]] or [grid] must be a whole number of at least 1")
    return value


def _minutes(value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < float("inf"):
        raise UserError(f"minutes = {value!r} in a [[case]] or [grid] must be a number of minutes above 0")
    return float(value)


def run_sweep(sweep: Sweep) -> list[Run]:
    """Every point, one after another (Point.run: reused, resumed or trained); one line per point
    with the count and the time left at the pace of the points trained so far. A point whose
    mpisub-train fails is reported and the others go on; the failures end the sweep in one line."""
    todo, runs, failed = sweep.points, [], []
    spent, trained = 0.0, 0
    for i, point in enumerate(todo):
        if STOPS.received:
            raise RunStopped(f"stopped by a signal before {point.folder}; the sweep continues when run again")
        t0 = time.perf_counter()
        eta = f", about {spent / trained * (len(todo) - i):.0f} s left" if trained else ""
        try:
            runs.append(point.run(tag=f"[{i + 1}/{len(todo)}{eta}] "))
        except RunStopped:
            raise
        except RunFailed as e:
            failed.append(point.folder)
            print(str(e).splitlines()[0] + " " + str(e).strip().splitlines()[-1], flush=True)
        if time.perf_counter() - t0 > 1.0:  # trained or resumed, not reused
            spent, trained = spent + time.perf_counter() - t0, trained + 1
    if failed:
        raise UserError(f"{len(failed)} of {len(todo)} point(s) failed ({', '.join(failed)}); the lines above say "
                        f"why; run the sweep again to retry them (finished points are reused)")
    return runs


@command("mpisub-sweep")
def sweep_main(argv: list[str] | None = None) -> None:
    p = Parser(prog="mpisub-sweep", description="Run a grid of configs times seeds (SWEEP.toml; "
                                "see the module's docstring or the README), reusing finished runs.")
    p.add_argument("sweep", metavar="SWEEP.toml")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--slurm", action="store_true", help="instead of running: print the sbatch command of a job "
                     "array whose tasks each train several points (at most task_minutes of them), all paths absolute")
    how.add_argument("--task", metavar="I/N", help="train only array task I of N's points (what --slurm's job runs)")
    args = p.parse_args(argv)
    sweep = read_sweep(args.sweep)
    if args.slurm:
        print(slurm.sbatch_command(sweep.path, sweep.out, sweep.points, sweep.task_minutes))
        return
    if args.task:
        sweep.points = slurm.task_points(args.task, sweep.points, sweep.task_minutes)
    try:
        with STOPS:
            runs = run_sweep(sweep)
    except RunStopped as e:
        print(e, flush=True)
        sys.exit(EXIT_INTERRUPTED)
    print(f"{len(runs)} run(s) in {sweep.out}: mpisub-inspect {sweep.out}/* ; mpisub-plot {sweep.out}/* "
          f"(runs that differ only in train.seed become one curve with a band)")
