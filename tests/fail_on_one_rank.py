"""Run mpisub-train with one rank raising in the middle of training (used by test_failures.py).

usage: mpirun -n K python fail_on_one_rank.py RANK ROUND [mpisub-train args...]
"""
import sys

from mpisub import cli, kernels

fail_rank, fail_round = int(sys.argv[1]), int(sys.argv[2])
calls = {"n": 0}
local_steps = kernels.local_steps


def failing_local_steps(*args):
    from mpi4py import MPI
    calls["n"] += 1
    if MPI.COMM_WORLD.rank == fail_rank and calls["n"] == fail_round:
        raise RuntimeError("injected failure")
    return local_steps(*args)


kernels.local_steps = failing_local_steps
cli.train_main(sys.argv[3:])
