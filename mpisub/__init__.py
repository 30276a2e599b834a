"""mpisub: train an over-parameterized one-hidden-layer ReLU network by masked subnetworks over MPI.

Importing mpisub touches neither MPI nor numba; training does (mpisub.cli, mpisub.train).
"""
__version__ = "0.4.0"   # the one place it is written (pyproject.toml reads it); CHANGELOG.md


def __getattr__(name):
    # the notebook API, loaded on first use: `import mpisub` stays light
    if name in ("open_run", "open_runs"):
        from . import analysis
        return getattr(analysis, name)
    raise AttributeError(f"module 'mpisub' has no attribute {name!r}")
