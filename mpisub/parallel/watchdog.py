"""No job hangs (docs/design.md, section 6, "No hang"): a thread on every rank that gives a sign of
life twice a second on its node's pulse board (comm.Comm.board) and watches the collective its
rank waits in. When the wait passes the bound, max(train.watchdog_seconds, 10 x the slowest wait so
far), it reads the node's board. A rank of the node that gave no sign of life for
train.watchdog_seconds has stopped (SIGSTOP, a debugger, a node's hiccup: its watchdog gives signs
while it waits, and between the slices of a long write) and the job is aborted with one line
naming it (exit 4). A rank that lives but has not reached this collective is busy (reading data,
writing a checkpoint), and the wait goes on. When every rank of the node lives and has arrived,
the missing one is on another node: the job is aborted after three bounds. The last checkpoint
stays whole (a torn temporary file never replaces it)."""
from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from typing import TYPE_CHECKING

from mpisub._util.errors import EXIT_HUNG

if TYPE_CHECKING:  # types only: never imported at run time
    from mpisub.parallel.comm import Comm

TICK = 0.5          # seconds between signs of life
FACTOR = 10         # the bound: this many times the slowest wait so far, at least the floor
GRACE = 5.0         # seconds the other ranks of a node give the first of them to report


class Watchdog(threading.Thread):
    def __init__(self, comm: Comm, floor: float = 60.0):
        super().__init__(name="mpisub-watchdog", daemon=True)
        self.comm, self.floor, self.folder = comm, floor, ""
        self.halt = threading.Event()

    def __enter__(self) -> "Watchdog":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.halt.set()      # before MPI finalizes: the board is its shared memory
        self.join()

    def run(self) -> None:
        while not self.halt.wait(TICK):
            self.comm.beat()
            wait = self.comm.wait
            if wait is not None:
                self.check(*wait)

    def check(self, name: str, since: float) -> None:
        waited = time.monotonic() - since
        bound = max(self.floor, FACTOR * self.comm.slowest)
        if waited < bound:
            return
        board, now, me = self.comm.board.copy(), time.time(), self.comm.node_rank
        # a rank's watchdog gives signs of life also while it waits: one without any has stopped
        stopped = [i for i in range(len(board)) if now - board[i, 0] > self.floor]
        alive = [i for i in range(len(board)) if i not in stopped]
        if me != min(alive) and waited < bound + GRACE:
            return                                           # the node's first live rank reports
        behind = [i for i in alive if board[i, 1] < board[me, 1]]   # busy, not yet in this collective
        if stopped:
            ranks = ", ".join(str(self.comm.node_world[i]) for i in stopped)
            silent = max(now - board[i, 0] for i in stopped)
            self.abort(f"rank {ranks} stopped answering ({silent:.0f} s without a sign of life) while the other ranks "
                       f"waited {waited:.0f} s in the {name}")
        elif not behind and waited > 3 * bound:
            self.abort(f"a rank on another node did not reach the {name} this rank has waited in for {waited:.0f} s")

    def abort(self, why: str) -> None:
        resume = f"continue with: mpirun -n {self.comm.size} mpisub-train --resume {self.folder}" if self.folder else \
            "start it again"
        print(f"mpisub-train: {why}; aborting the job (exit {EXIT_HUNG}, train.watchdog_seconds = {self.floor:g}); "
              f"the last checkpoint is whole: {resume}", file=sys.stderr, flush=True)
        self.halt.set()
        self.comm.abort(EXIT_HUNG)


def watch_the_end(floor: float) -> None:
    """MPI_Finalize waits for every rank, after the watchdog stopped (the board is MPI's memory): a
    rank stopped in that instant would hang the job. Finalized here, before mpi4py would at exit,
    under a timer that ends this rank after `floor` seconds (mpirun then ends the others)."""
    global _FLOOR
    if _FLOOR is None:
        atexit.register(_finalize)   # after mpi4py's: runs before it
    _FLOOR = floor


_FLOOR: float | None = None


def _finalize() -> None:
    from mpi4py import MPI  # lazy: mpisub-train initialises MPI itself, after the thread variables (cli)

    if MPI.Is_finalized():
        return
    timer = threading.Timer(_FLOOR or 0.0, _give_up, args=(MPI.COMM_WORLD.Get_rank(),))
    timer.daemon = True
    timer.start()
    MPI.Finalize()
    timer.cancel()


def _give_up(rank: int) -> None:
    print(f"mpisub-train: rank {rank}: the job's end waited {_FLOOR:g} s for the other ranks (one of them stopped "
          f"answering); exiting (exit {EXIT_HUNG}): the last checkpoint is whole", file=sys.stderr, flush=True)
    os._exit(EXIT_HUNG)
