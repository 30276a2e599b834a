"""Where the ranks meet: the MPI collectives of a run, timed and counted.

Buffer (upper-case) mpi4py methods on contiguous numpy arrays, no pickling in the round loop.
`seconds` and `bytes` accumulate what this rank spent in collectives and what it contributed to
them; the round loop reads and resets them once per round.
"""
import time

import numpy as np
from mpi4py import MPI


class Comm:
    def __init__(self, mpi_comm=None):
        self.mpi = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self.rank = self.mpi.Get_rank()
        self.size = self.mpi.Get_size()
        self.ranks_per_node = 1  # set by the launcher code, which splits the node's ranks anyway
        self.seconds = 0.0
        self.bytes = 0
        self.last_seconds = 0.0  # of the latest collective

    def library(self) -> str:
        # Open MPI's string ends in a NUL, which HDF5 strings cannot hold
        return " ".join(MPI.Get_library_version().replace("\0", "").split("\n")[0].split())

    def take_counters(self) -> tuple[float, int]:
        """(seconds, bytes) since the last call."""
        out = (self.seconds, self.bytes)
        self.seconds, self.bytes = 0.0, 0
        return out

    def _count(self, t0: float, nbytes: int) -> None:
        self.last_seconds = time.perf_counter() - t0
        self.seconds += self.last_seconds
        if self.size > 1:
            self.bytes += int(nbytes)

    def allgather_rows(self, mine: np.ndarray, counts: list[int], out: np.ndarray) -> None:
        """Rank k contributes `counts[k]` rows; `out` receives all of them in rank order."""
        t0 = time.perf_counter()
        width = out.shape[1]
        sizes = [c * width for c in counts]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
        self.mpi.Allgatherv(mine, [out, (sizes, offsets)])
        self._count(t0, mine.nbytes)

    def gather_rows(self, mine: np.ndarray, counts: list[int], out: np.ndarray | None) -> None:
        """Like allgather_rows, but only rank 0 receives (`out` is ignored elsewhere)."""
        t0 = time.perf_counter()
        width = mine.shape[1] if mine.ndim == 2 else 1
        sizes = [c * width for c in counts]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
        self.mpi.Gatherv(mine, [out, (sizes, offsets)] if self.rank == 0 else None, root=0)
        self._count(t0, mine.nbytes)

    def sum(self, buf: np.ndarray) -> None:
        """In place: every rank's buf becomes the elementwise sum over ranks."""
        t0 = time.perf_counter()
        self.mpi.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        self._count(t0, buf.nbytes)

    def barrier(self, poll_seconds: float = 0.01) -> None:
        """A barrier that sleeps while it waits: MPI_Barrier spins, and spinning ranks would take
        the cores from the rank they wait for (e.g. rank 0 compiling kernels)."""
        request = self.mpi.Ibarrier()
        while not request.Test():
            time.sleep(poll_seconds)

    def agree(self, value):
        """Rank 0's value on every rank (a small Python object, before training): lets a check that
        only rank 0 can make (the output folder) stop every rank the same way."""
        return self.mpi.bcast(value, root=0)

    def gather(self, value) -> list | None:
        """Every rank's small Python value, in rank order, on rank 0 (None elsewhere)."""
        return self.mpi.gather(value, root=0)

    def first_error(self, error: str | None) -> str | None:
        """The lowest rank's error message, or None when no rank has one (a small allgather,
        before training): lets every rank stop the same way on a check that failed on some."""
        return next((e for e in self.mpi.allgather(error) if e), None)

    def abort(self, code: int = 1) -> None:
        self.mpi.Abort(code)
