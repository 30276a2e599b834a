"""mpisub: train an over-parameterized one-hidden-layer ReLU network by masked subnetworks over MPI.

The package is layered; each subpackage imports only from the ones before it (docs/design.md,
section 5; tests/contracts/test_layers.py checks it):

    _util -> nn -> config -> io, parallel -> train, analysis -> study -> bench

The public API is `__all__`: the notebook API (`open_run`, `open_runs`, `Run`, `Runs`), the error
every command reports as one line (`UserError`) and the version. Importing mpisub touches neither
MPI nor numba (nor numpy): the notebook API loads on first use, training loads MPI and numba
(`mpisub.train.cli`).
"""
from mpisub._util.errors import UserError
from mpisub._util.provenance import __version__

__all__ = ["Run", "Runs", "UserError", "__version__", "open_run", "open_runs"]

_NOTEBOOK_API = ("Run", "Runs", "open_run", "open_runs")   # mpisub.analysis.runs


def __getattr__(name: str) -> object:
    if name in _NOTEBOOK_API:
        # lazy, for start-up time: the notebook API needs numpy and h5py, which `import mpisub` does not load
        from mpisub.analysis import runs
        return getattr(runs, name)
    raise AttributeError(f"module 'mpisub' has no attribute {name!r}")
