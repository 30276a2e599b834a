"""mpisub: train an over-parameterized one-hidden-layer ReLU network by masked subnetworks over MPI.

Importing mpisub touches neither MPI nor numba; training does (mpisub.cli, mpisub.train).
"""
__version__ = "0.1.0"
