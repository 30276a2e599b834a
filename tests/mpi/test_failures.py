"""A failure on one rank ends the whole job quickly; importing mpisub needs no MPI."""
import os
import subprocess
import sys
import time

import h5py
import pytest
from helpers import ROOT
from helpers.jobs import MPIRUN, sets


@pytest.mark.parametrize("how,cause", [("raise", "RuntimeError: injected failure"), ("exit", "SystemExit: 5")])
def test_exception_or_exit_on_one_rank_aborts_every_rank(tmp_path, how, cause):
    script = os.path.join(ROOT, "tests", "helpers", "fail_on_one_rank.py")
    # rows reach the file at every checkpoint: one each round, so rounds 1-2 are on disk before the failure
    args = sets(output__dir="out", train__rounds=50, masks__subnets=4, model__width=256, data__n=64,
                output__log_every=1, output__checkpoint_every=1)
    t0 = time.monotonic()
    r = subprocess.run([MPIRUN, "-n", "4", sys.executable, script, "2", "3", how, *args], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t0 < 30
    assert r.returncode != 0
    assert f"rank 2 failed: {cause}; aborting all ranks" in r.stderr
    # rank 0 was killed mid-run and the file still opens (once the killed process is gone: mpirun
    # may return while the kill is still being delivered, and the file lock goes with the process)
    for _ in range(50):
        try:
            with h5py.File(tmp_path / "out" / "run.h5", "r") as f:
                assert f.attrs["status"] == "running" and f["metrics/round"].shape[0] >= 1
            break
        except BlockingIOError:
            time.sleep(0.1)
    else:
        raise AssertionError("run.h5 stayed locked after the job ended")


def test_import_and_read_without_mpi_or_numba():
    code = ("import sys, mpisub, mpisub.analysis.runs, mpisub.config, mpisub.io.store; "
            "assert 'mpi4py' not in sys.modules and 'numba' not in sys.modules, sorted(sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
