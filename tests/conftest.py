"""Helpers shared by the tests: launching mpisub-train under mpirun with a hard timeout."""
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

BIN = os.path.dirname(sys.executable)
MPIRUN = shutil.which("mpirun", path=BIN + os.pathsep + os.environ.get("PATH", ""))
TRAIN = os.path.join(BIN, "mpisub-train")


def mpirun(ranks: int, *args: str, cwd, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `mpirun -n ranks mpisub-train args...`; a hang fails the test (the whole process group
    is killed at the timeout) instead of freezing the suite. `env` adds environment variables."""
    assert MPIRUN, "mpirun not found: pip install -e '.[mpi]' (or put a system MPI on PATH)"
    cmd = [MPIRUN, "-n", str(ranks), TRAIN, *args]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout}s: {' '.join(cmd)}\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


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
    args = []
    for key, value in values.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, str):
            value = f'"{value}"'
        args += ["--set", f"{key.replace('__', '.')}={value}"]
    return args


@pytest.fixture(scope="session", autouse=True)
def compiled_kernels():
    """Compile (or load from numba's cache) every kernel signature once, before any MPI run."""
    from mpisub import kernels
    for dtype in (np.float64, np.float32):
        kernels.compile_for(dtype)
