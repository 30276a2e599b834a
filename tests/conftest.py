"""The tiers, chosen by folder: `pytest -m "not slow"` runs tests/unit (in process, one folder per
subpackage of mpisub) and tests/contracts (the docs, the layers, the linter and the type checker) in
seconds; tests/mpi (jobs under mpirun) and tests/system (job scripts, Slurm, Open MPI, faults) are
`slow`. Plain `pytest`, what CI runs, runs every test. A new test lands in its tier by where it is put."""
import pathlib

import numpy as np
import pytest
from helpers.jobs import ONE_THREAD, mpirun, sets

SLOW_FOLDERS = {"mpi", "system"}
FAST_FOLDERS = {"unit", "contracts"}
TESTS = pathlib.Path(__file__).parent


def pytest_collection_modifyitems(items):
    for item in items:
        folder = pathlib.Path(item.fspath).relative_to(TESTS).parts[0]
        assert folder in SLOW_FOLDERS | FAST_FOLDERS, f"{item.nodeid}: a test belongs in one of the tier folders"
        if folder in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Jobs trained once per session and shared by the tests that only read them:
    trained(ranks, **settings) -> the run folder (settings as sets() takes them; one BLAS thread
    per rank). A test must not change the folder."""
    done = {}

    def get(ranks: int, **settings):
        key = (ranks, tuple(sorted(settings.items())))
        if key not in done:
            folder = tmp_path_factory.mktemp("job")
            r = mpirun(ranks, *sets(output__dir="run", **settings), cwd=folder, env=ONE_THREAD)
            assert r.returncode == 0, r.stdout + r.stderr
            done[key] = folder / "run"
        return done[key]
    return get


@pytest.fixture(scope="session", autouse=True)
def compiled_kernels():
    """Compile (or load from numba's cache) every kernel signature once, before any MPI run."""
    from mpisub.nn import kernels
    for dtype in (np.float64, np.float32):
        kernels.compile_for(dtype)
