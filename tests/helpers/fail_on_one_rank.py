"""Run mpisub-train with one rank failing in the middle of training (used by test_failures.py).

usage: mpirun -n K python fail_on_one_rank.py RANK CALL raise|exit [mpisub-train args...]
At its CALL-th local-steps call, rank RANK raises a RuntimeError or calls sys.exit(5).
"""
import sys

from mpisub.nn import kernels
from mpisub.train import cli

fail_rank, fail_call, how = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
calls = {"n": 0}
local_steps = kernels.local_steps


def failing_local_steps(*args):
    from mpi4py import MPI
    calls["n"] += 1
    if MPI.COMM_WORLD.rank == fail_rank and calls["n"] == fail_call:
        if how == "exit":
            sys.exit(5)
        raise RuntimeError("injected failure")
    return local_steps(*args)


kernels.local_steps = failing_local_steps
cli.train_main(sys.argv[4:])
