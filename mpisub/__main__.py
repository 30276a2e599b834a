"""`python -m mpisub` is `mpisub-train`; so is `mpirun -n K python -m mpi4py -m mpisub`, which
mpi4py recommends so that an uncaught exception on one rank aborts them all."""
from mpisub.train.cli import train_main

if __name__ == "__main__":
    train_main()
