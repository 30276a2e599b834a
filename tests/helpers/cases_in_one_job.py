"""Run many mpisub-train command lines in one MPI job (used by test_bad_input.py): mpirun starts,
and numpy, numba and h5py load, once for all of them instead of once per case.

usage: mpirun -n K python cases_in_one_job.py CASES.json RESULTS.json
CASES.json holds [[folder, [args...]], ...]. Every rank runs each case in its folder through
cli.train_main, the function behind `mpisub-train args...`, and records its exit code, stdout and
stderr; rank 0 writes every rank's records to RESULTS.json ([rank][case]).
"""
import contextlib
import io
import json
import os
import sys

from mpi4py import MPI

from mpisub.train import cli

with open(sys.argv[1]) as f:
    cases = json.load(f)
records = []
for folder, args in cases:
    os.chdir(folder)
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.train_main(args)
        except SystemExit as e:
            code = e.code
    records.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
every = MPI.COMM_WORLD.gather(records, root=0)
if MPI.COMM_WORLD.rank == 0:
    with open(sys.argv[2], "w") as f:
        json.dump(every, f)
