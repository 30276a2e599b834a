"""Launching mpisub-train under mpirun with a hard timeout, jobs in the background, and the
machine-changing tests' gate: what the tests under tests/mpi and tests/system share."""
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import pytest

from helpers import ROOT  # noqa: F401 (the checkout, for the tests that run its files)
from mpisub._util.errors import UserError
from mpisub.study.launch import executables, set_args

BIN = os.path.dirname(sys.executable)
try:
    MPIRUN, TRAIN = executables()
except UserError:  # the tests that need mpirun say so
    MPIRUN, TRAIN = None, os.path.join(BIN, "mpisub-train")


def mpirun(ranks: int, *args: str, cwd, timeout: float = 180, env: dict | None = None,
           program: tuple = (TRAIN,)) -> subprocess.CompletedProcess:
    """Run `mpirun -n ranks mpisub-train args...` (or another program); a hang fails the test (the
    whole process group is killed at the timeout) instead of freezing the suite. `env` adds
    environment variables."""
    assert MPIRUN, "mpirun not found: pip install -e '.[mpi]' (or put a system MPI on PATH)"
    cmd = [MPIRUN, "-n", str(ranks), *program, *args]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout}s: {' '.join(cmd)}\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


# Tests that change the machine (apt-get installs, mounts, a second Python environment) run only
# when asked: .ci/run sets MPISUB_SYSTEM_TESTS=1; a plain `pytest` skips them, saying how to run them.
SYSTEM_TESTS = os.environ.get("MPISUB_SYSTEM_TESTS") == "1"
system_test = pytest.mark.skipif(not SYSTEM_TESTS, reason="changes the machine (root, apt-get, mounts or a new "
                                                          "environment): set MPISUB_SYSTEM_TESTS=1 to run it")


def debian_packages(binaries: list[str], packages: list[str]) -> str | None:
    """None when the binaries are there, installing the Debian packages if need be (root, apt-get,
    with services kept from starting); else why they cannot be had."""
    if all(shutil.which(b) or os.path.exists(f"/usr/sbin/{b}") for b in binaries):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"{', '.join(binaries)} not installed, and apt-get as root is not available here"
    policy = "/usr/sbin/policy-rc.d"
    with open(policy, "w") as f:
        f.write("#!/bin/sh\nexit 101\n")
    os.chmod(policy, 0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if r.returncode:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=600)
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    finally:
        os.remove(policy)
    return None if r.returncode == 0 else f"apt-get install {' '.join(packages)} failed: {r.stderr[-300:]}"


# BLAS (OpenBLAS included) rounds differently with a different number of threads, so runs whose
# bits are compared across K give every rank the same thread count
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def sets(**values) -> list[str]:
    """sets(train__lr=0.5) -> ['--set', 'train.lr=0.5']"""
    return set_args({key.replace("__", "."): value for key, value in values.items()})


# jobs that run in the background while a test acts on them (signals, kills, readers)

def start_job(ranks: int, folder, *args: str, env: dict | None = None) -> subprocess.Popen:
    log = os.path.join(folder, f"log-{len(os.listdir(folder))}.txt")
    with open(log, "w") as out:
        proc = subprocess.Popen([MPIRUN, "-n", str(ranks), TRAIN, *args], cwd=folder, stdout=out,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                env={**os.environ, **ONE_THREAD, **(env or {})})
    proc.log = log
    return proc


def wait_job(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"mpirun did not end within {timeout} s")


def job_log(proc) -> str:
    with open(proc.log) as f:
        return f.read()


def rows_on_disk(path) -> int:
    """Rounds on disk, read the way another user's process would while the run goes on."""
    try:
        with h5py.File(path, "r") as f:
            return f["metrics/round"].shape[0]
    except (OSError, KeyError):
        return 0


def wait_for_rows(proc, path, rows: int, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while rows_on_disk(path) < rows:
        assert proc.poll() is None, job_log(proc)
        assert time.monotonic() - t0 < timeout, f"no {rows} rounds after {timeout} s"
        time.sleep(0.05)


def rank_pids(marker: str) -> list[int]:
    """The mpisub-train processes (not mpirun, not the launcher's proxy) whose command line has marker."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if marker in " ".join(cmd) and any(c.endswith("mpisub-train") for c in cmd[:2]) and \
                not any(os.path.basename(c) in ("mpirun", "mpiexec", "mpiexec.hydra") for c in cmd[:1]):
            pids.append(int(pid))
    return pids


