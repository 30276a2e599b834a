"""Many runs from one Python script (the examples, a user's sweep): each run is its own
`mpirun -n K mpisub-train`, prints one line when it ends, and is reused when the script runs again.
"""
import argparse
import os
import subprocess
import time

from .analysis import Run, open_run
from .launch import executables, set_args
from .store import CHECKPOINT, FILENAME


class RunFailed(RuntimeError):
    """mpisub-train ended with an error; the message holds its stderr."""


def _same_settings(run: Run, settings: dict) -> bool:
    return all(run.config[k.split(".")[0]][k.split(".")[1]] == v for k, v in settings.items())


def launch(folder: str, settings: dict, ranks: int = 2, tag: str = "") -> Run:
    """Train into `folder` with `settings` ({"section.key": value}) on `ranks` ranks, unless a
    completed run with the same settings is already there. An interrupted one is resumed."""
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
        args += set_args({**settings, "output.dir": folder})
    mpirun, train = executables()
    r = subprocess.run([mpirun, "-n", str(ranks), train, *args], capture_output=True, text=True)
    if r.returncode:
        raise RunFailed(f"{tag}{folder}: mpisub-train failed (exit {r.returncode}):\n{r.stderr.strip()}")
    run = open_run(folder)
    print(f"{tag}{folder}: {action} in {time.perf_counter() - t0:.1f} s ({_outcome(run)})", flush=True)
    return run


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
