"""Many runs: `mpisub-sweep SWEEP.toml` (a grid of config values times seeds) and the examples'
Python scripts. Each run is its own `mpirun -n K mpisub-train`, prints one line when it ends, is
reused when the sweep runs again and resumed when it was interrupted.

SWEEP.toml (docs/design.md, section 4, "Sweeps"):

    out = "runs/keep-sweep"     # the sweep's folder: one run folder per point and seed in it
    ranks = 2                   # mpirun -n for every run
    seeds = 3                   # train.seed = 0, 1, 2 at every point (default 1)
    config = "job.toml"         # optional: a base config file (relative to SWEEP.toml)
    [set]                       # optional: base values, as --set would give them
    "train.rounds" = 200
    [grid]                      # the points: every combination of these values
    "masks.keep" = [0.25, 0.5, 0.75]
"""
import argparse
import itertools
import os
import shlex
import signal
import subprocess
import time

from . import config, sources
from .analysis import Run, open_run
from .errors import Parser, UserError, command
from .folders import CHECKPOINT, FILENAME
from .launch import executables, set_args


class RunFailed(RuntimeError):
    """mpisub-train ended with an error; the message holds its stderr."""


def _same_settings(run: Run, settings: dict) -> bool:
    flat = config.flatten(run.config)
    return all(flat.get(k) == v for k, v in settings.items())


def launch(folder: str, settings: dict, ranks: int = 2, tag: str = "", base_file: str | None = None) -> Run:
    """Train into `folder` with `settings` ({"section.key": value}, over the config file
    `base_file`) on `ranks` ranks, unless a completed run with the same settings is already there.
    An interrupted one is resumed."""
    t0 = time.perf_counter()
    path = os.path.join(folder, FILENAME)
    args = ["--set", "output.overwrite=true"]
    action = "trained"
    if os.path.exists(path):
        try:
            run = open_run(folder)
            if run.status == "completed" and _same_settings(run, settings):
                print(f"{tag}{folder}: reused ({_outcome(run)})", flush=True)
                return run
            if run.status in ("interrupted", "running") and _same_settings(run, settings) and \
                    os.path.exists(os.path.join(folder, CHECKPOINT)):
                args, action = ["--resume", folder], "resumed"
        except (OSError, KeyError, ValueError):
            pass  # unreadable: train again
    if args[0] != "--resume":
        args += (["--config", base_file] if base_file else []) + set_args({**settings, "output.dir": folder})
    code, err = _train(args, ranks)
    if code:
        raise RunFailed(f"{tag}{folder}: mpisub-train failed (exit {code}):\n{err.strip()}")
    run = open_run(folder)
    print(f"{tag}{folder}: {action} in {time.perf_counter() - t0:.1f} s ({_outcome(run)})", flush=True)
    return run


def _train(args: list[str], ranks: int) -> tuple[int, str]:
    """mpirun -n ranks mpisub-train args: its exit code and stderr. On Ctrl-C it is passed on to
    mpirun (which passes it to the ranks: they end) and waited for, then raised."""
    mpirun, train = executables()
    proc = subprocess.Popen([mpirun, "-n", str(ranks), train, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    return proc.returncode, err


def _outcome(run: Run) -> str:
    return f"{len(run.metrics['round'])} rounds, final loss {run.eval['loss'][-1]:.3e}"


def example_args(description: str) -> argparse.Namespace:
    """The options every example takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=os.path.join("examples", "out"),
                   help="folder for the runs and the PNG (default: examples/out)")
    p.add_argument("--ranks", type=int, default=2, help="MPI ranks per run (default 2)")
    p.add_argument("--quick", action="store_true", help="a tiny version (seconds), to check that it works")
    return p.parse_args()


def sklearn_data(name: str):
    """scikit-learn's bundled data set `name` (diabetes, digits: no download), for the examples;
    without scikit-learn, the example ends saying how to install it."""
    try:
        import sklearn.datasets
    except ImportError:
        raise SystemExit("this example needs scikit-learn: pip install scikit-learn") from None
    return getattr(sklearn.datasets, f"load_{name}")()


# the sweep file's entries: (type, what it must be)
ENTRIES = {"out": (str, "a folder name"), "ranks": (int, "a whole number of at least 1"),
           "seeds": (int, "a whole number of at least 1"), "config": (str, "a config file's path"),
           "set": (dict, "a table of config keys and values"), "grid": (dict, "a table of config keys and lists")}


def _entries(path: str, spec: dict) -> None:
    """Every entry of the sweep file is one it takes, of its type."""
    unknown = set(spec) - set(ENTRIES)
    if unknown:
        raise UserError(f"sweep file {path!r}: unknown entr{'ies' if len(unknown) > 1 else 'y'} "
                        f"{', '.join(sorted(unknown))}; it takes out, ranks, seeds, config, [set] and [grid]")
    for name, value in spec.items():
        kind, what = ENTRIES[name]
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 1) or \
                (kind is str and not value.strip()):
            raise UserError(f"sweep file {path!r}: {name} = {value!r} must be {what}")
    if not all(isinstance(v, list) and v for v in spec.get("grid", {}).values()):
        raise UserError(f"sweep file {path!r}: [grid] must map config keys to non-empty lists of values")


def read_sweep(path: str) -> dict:
    """The sweep file, checked: its entries' types, and every key it sets a config key with a
    value of the right type. A train.seed in [set] or [grid] gives the seeds itself: then `seeds`
    must not be more than 1."""
    spec = sources.read_toml(path, what="sweep file")
    _entries(path, spec)
    grid, values = spec.get("grid", {}), dict(spec.get("set", {}))
    base_file = spec.get("config")
    if base_file:
        base_file = os.path.join(os.path.dirname(os.path.abspath(path)), base_file)
    cfg = config.build(None, base_file, set_args(values)[1::2])   # the base, checked
    for key, options in grid.items():
        for value in options:
            config.set_value(cfg, key, value)                        # every grid value, checked
    seeds = spec.get("seeds", 1)
    if seeds > 1 and ("train.seed" in grid or "train.seed" in values):
        raise UserError(f"sweep file {path!r}: seeds = {seeds} and train.seed in [set] or [grid] both give the "
                        f"seeds; set one of them")
    return {"out": spec.get("out", os.path.splitext(path)[0]), "ranks": spec.get("ranks", 2), "seeds": seeds,
            "base_file": base_file, "set": values, "grid": grid}


def points(spec: dict) -> list[tuple[str, dict]]:
    """(run folder, settings) for every grid point and seed, in order."""
    keys = list(spec["grid"])
    out = []
    for combo in itertools.product(*(spec["grid"][k] for k in keys)):
        name = "-".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, combo)) or "base"
        chosen = {**spec["set"], **dict(zip(keys, combo))}
        for seed in ([chosen["train.seed"]] if "train.seed" in chosen else range(spec["seeds"])):
            settings = {**chosen, "train.seed": seed}
            folder = name if "train.seed" in keys else f"{name}-seed{seed}"
            out.append((os.path.join(spec["out"], folder), settings))
    return out


def run_sweep(spec: dict) -> list[Run]:
    """Every point, one after another: a finished run is reused, an interrupted one resumed; one
    line per run with the count and the time left at the pace of the runs trained so far."""
    todo = points(spec)
    runs, spent, trained = [], 0.0, 0
    for i, (folder, settings) in enumerate(todo):
        t0 = time.perf_counter()
        eta = f", about {spent / trained * (len(todo) - i):.0f} s left" if trained else ""
        run = launch(folder, settings, spec["ranks"], tag=f"[{i + 1}/{len(todo)}{eta}] ",
                     base_file=spec["base_file"])
        if time.perf_counter() - t0 > 1.0:  # trained or resumed, not reused
            spent, trained = spent + time.perf_counter() - t0, trained + 1
        runs.append(run)
    return runs


def slurm_points(spec: dict) -> str:
    """Writes <out>/points.txt for jobs/slurm-array.sbatch (one line per run: its folder and
    options); returns the sbatch command that runs them."""
    todo = points(spec)
    os.makedirs(spec["out"], exist_ok=True)
    path = os.path.join(spec["out"], "points.txt")
    with open(path, "w") as f:
        for folder, settings in todo:
            extra = ["--config", spec["base_file"]] if spec["base_file"] else []
            f.write(" ".join(shlex.quote(a) for a in [f"RUN_DIR={folder}", *extra, *set_args(settings)]) + "\n")
    return f"sbatch --array=0-{len(todo) - 1} jobs/slurm-array.sbatch {path}"


@command("mpisub-sweep")
def sweep_main(argv=None) -> None:
    p = Parser(prog="mpisub-sweep", description="Run a grid of configs times seeds (SWEEP.toml; "
                                "see the module's docstring or the README), reusing finished runs.")
    p.add_argument("sweep", metavar="SWEEP.toml")
    p.add_argument("--slurm", action="store_true", help="instead of running: write <out>/points.txt and print the "
                   "sbatch command of a job array that runs one point per task (jobs/slurm-array.sbatch)")
    args = p.parse_args(argv)
    spec = read_sweep(args.sweep)
    if args.slurm:
        print(slurm_points(spec))
        return
    try:
        runs = run_sweep(spec)
    except RunFailed as e:
        raise UserError(str(e)) from None
    print(f"{len(runs)} run(s) in {spec['out']}: mpisub-inspect {spec['out']}/* ; mpisub-plot {spec['out']}/* "
          f"(runs that differ only in train.seed become one curve with a band)")
