"""Starting `mpirun -n K mpisub-train` from Python (the sweeps, the benchmark, the scaling report,
the tests): the one place that knows how a config value goes on the command line, where mpirun
is, and which environment variables set the threads a rank's BLAS and numba use."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

from mpisub._util.errors import UserError
from mpisub.parallel.threads import THREAD_VARS

if TYPE_CHECKING:  # types only: never imported at run time
    from typing import Any

# read by OpenMP, OpenBLAS, MKL and numba when they load (docs/design.md, section 3, "Threads")


def set_args(values: dict) -> list[str]:
    """{"train.lr": 0.5, "output.dir": "a b"} -> ["--set", "train.lr=0.5", "--set", 'output.dir="a b"']:
    each value as JSON, which TOML reads back as the same number, string (quotes escaped) or bool."""
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def executables() -> tuple[str, str]:
    """mpirun (beside this Python first, then on PATH) and this environment's mpisub-train."""
    bin_dir = os.path.dirname(sys.executable)
    mpirun = shutil.which("mpirun", path=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    if mpirun is None:
        raise UserError("mpirun not found: pip install 'mpisub[mpi]' or load your MPI module")
    return mpirun, os.path.join(bin_dir, "mpisub-train")


def thread_env(threads: int, base: dict | None = None) -> dict:
    """The environment with every thread variable set to `threads`, or, for 0, removed (mpisub-train
    then gives each rank its share of the node's cores)."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in THREAD_VARS}
    return {**env, **({k: str(threads) for k in THREAD_VARS} if threads else {})}


class StopSignals:
    """USR1 and TERM (Slurm's warning before a time limit, a scheduler's stop) for a process that
    runs mpisub-train one job after another (a sweep): noted in `received`, and passed on to the job
    running now, which checkpoints and exits 3. Installed for a `with` block (main thread only)."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self):
        self.received, self.child, self.previous = [], None, {}

    def __enter__(self):
        self.previous = {s: signal.signal(s, self.note) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def note(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        self.pass_on()

    def pass_on(self) -> None:
        """USR1 to the job running now, for either signal: mpisub-train checkpoints on it, while
        mpirun may end its ranks at once on a TERM."""
        if self.received and self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGUSR1)


STOPS = StopSignals()


def train(args: list[str], ranks: int) -> tuple[int, str]:
    """mpirun -n ranks mpisub-train args: its exit code and stderr. A stop signal (STOPS, when
    installed) is passed on to it; on Ctrl-C it is passed on to mpirun (which passes it to the
    ranks: they end) and waited for, then raised."""
    mpirun, mpisub_train = executables()
    proc = subprocess.Popen([mpirun, "-n", str(ranks), mpisub_train, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    STOPS.child = proc
    STOPS.pass_on()     # a signal that came while it started
    try:
        _, err = proc.communicate()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    finally:
        STOPS.child = None
    return proc.returncode, err
