"""Where the ranks meet: the MPI collectives of a run, timed, counted and watched.

Buffer (upper-case) mpi4py methods on contiguous numpy arrays, no pickling in the round loop.
`seconds` and `bytes` accumulate what this rank spent in collectives and what it contributed to
them; the round loop reads and resets them once per round. Every collective step is counted on a
board in the node's shared memory, beside each rank's last sign of life, and the wait it is in is
noted: the watchdog (watchdog.py) reads them to tell a rank that stopped from one that is busy.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING

import numpy as np
from mpi4py import MPI
from mpi4py.util.dtlib import from_numpy_dtype

from mpisub._util.errors import UserError, env_number
from mpisub.parallel.counters import Counted

if TYPE_CHECKING:  # types only: never imported at run time
    from collections.abc import Callable, Iterator, Sequence
    from typing import Any

# the most elements one collective call carries (counts are C ints); MPISUB_MAX_COUNT lowers it so
# that tests run the chunked path with small buffers (a bad value is reported by errors.env_problem)
MAX_COUNT = 2**31 - 1
with contextlib.suppress(UserError):
    MAX_COUNT = env_number("MPISUB_MAX_COUNT", MAX_COUNT)


def _offsets(counts: list[int]) -> list[int]:
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64).tolist()


class Comm(Counted):
    def __init__(self, mpi_comm: Any = None, node: Any = None):
        self.mpi = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self.node = self.mpi.Split_type(MPI.COMM_TYPE_SHARED) if node is None else node  # this rank's node
        self.rank = self.mpi.Get_rank()
        self.size = self.mpi.Get_size()
        self.ranks_per_node = self.node.Get_size()
        self.nodes = self.mpi.allreduce(int(self.node.Get_rank() == 0))
        self._windows: list[Any] = []  # shared-memory windows, alive as long as the arrays that map them
        self._row_types: dict[tuple[str, int], Any] = {}
        self.node_rank, self.node_world = self.node.Get_rank(), self.node.allgather(self.rank)
        self.board = self._board()  # per rank of the node: its last sign of life, the collective steps it entered
        self.steps, self.slowest = 0, 0.0
        self.wait: tuple[str, float] | None = None

    def _board(self) -> np.ndarray:
        """The node's pulse board (an MPI-3 shared window, n x 3 float64): each rank writes its own
        row (its last sign of life, the collective steps it entered, its PID), anyone reads it
        without an MPI call, even while ranks sit in a collective."""
        n, leader = self.node.Get_size(), self.node.Get_rank() == 0
        win = MPI.Win.Allocate_shared(n * 3 * 8 if leader else 0, 8, comm=self.node)  # type: ignore[arg-type]
        self._windows.append(win)
        board = np.ndarray(buffer=win.Shared_query(0)[0], dtype=np.float64, shape=(n, 3))  # type: ignore[arg-type]
        board[self.node_rank] = (time.time(), 0, os.getpid())
        self.node.Barrier()
        return board

    def beat(self) -> None:
        """A sign of life (the watchdog's thread gives one twice a second)."""
        self.board[self.node_rank, 0] = time.time()

    def arrive(self) -> None:
        """This rank entered the next collective step (every rank counts the same steps)."""
        self.steps += 1
        self.board[self.node_rank, 1] = self.steps

    @contextlib.contextmanager
    def waiting(self, name: str, arrive: bool = True) -> Iterator[None]:
        """Around the blocking part of a collective step: the watchdog sees what this rank waits
        in and since when; the slowest wait so far sets its bound."""
        if arrive:
            self.arrive()
        t0 = time.monotonic()
        self.wait = (name, t0)
        try:
            yield
        finally:
            self.wait = None
            self.slowest = max(self.slowest, time.monotonic() - t0)

    def library(self) -> str:
        # Open MPI's string ends in a NUL, which HDF5 strings cannot hold
        return " ".join(MPI.Get_library_version().replace("\0", "").split("\n")[0].split())

    def _rows(self, A: np.ndarray):
        """An MPI datatype of one row of A: counts and offsets are in rows, so no count nears a C
        int's 2^31 limit however many elements W has (m d > 2^31 is a real size)."""
        key = (A.dtype.char, A.shape[1])
        if key not in self._row_types:
            self._row_types[key] = from_numpy_dtype(A.dtype).Create_contiguous(A.shape[1]).Commit()
        return self._row_types[key]

    def alltoall_rows(self, send: np.ndarray, send_counts: list[int], out: np.ndarray, recv_counts: list[int]) -> None:
        """Rank k sends rows send[offset_j : offset_j + send_counts[j]] to each rank j and receives
        recv_counts[j] rows from rank j into `out`, in rank order (one Alltoallv)."""
        t0 = time.perf_counter()
        send_counts, recv_counts = np.asarray(send_counts).tolist(), np.asarray(recv_counts).tolist()
        if self.size == 1:
            out[...] = send
        elif out.shape[1]:
            row = self._rows(out)
            with self.waiting("exchange of rows (Alltoallv)"):
                self.mpi.Alltoallv([send, (send_counts, _offsets(send_counts)), row],
                                   [out, (recv_counts, _offsets(recv_counts)), row])
        else:
            self.arrive()
        row = out.dtype.itemsize * out.shape[1]
        self._count(t0, (sum(send_counts) - send_counts[self.rank]) * row,
                    (sum(recv_counts) - recv_counts[self.rank]) * row)

    def gather_rows(self, mine: np.ndarray, counts: list[int], out: np.ndarray | None) -> None:
        """Rank k contributes `counts[k]` rows; rank 0 receives all of them in rank order into `out`
        (ignored elsewhere)."""
        t0 = time.perf_counter()
        row = self._rows(mine)  # counts in rows: n x n elements can pass 2^31
        with self.waiting("gather of the Gram matrix's rows"):
            self.mpi.Gatherv([mine, len(mine), row],
                             [out, (counts, _offsets(counts)), row] if self.rank == 0 else None, root=0)
        received = (sum(counts) - counts[self.rank]) * mine[:1].nbytes if self.rank == 0 else 0
        self._count(t0, mine.nbytes, received)

    def share_on_node(self, arrays: Any) -> tuple:
        """One copy per node of read-only arrays: the node's first rank passes (*arrays, tag), the
        others None; every rank gets numpy views of one MPI-3 shared-memory window, and `tag`."""
        leader = self.node.Get_rank() == 0
        with self.waiting("sharing the data on the node"):
            meta = self.node.bcast([(A.shape, A.dtype.str) for A in arrays[:-1]] + [arrays[-1]] if leader else None)
        *shapes, tag = meta
        dtype = np.dtype(shapes[0][1])
        sizes = [int(np.prod(shape)) for shape, _ in shapes]
        win = MPI.Win.Allocate_shared(sum(sizes) * dtype.itemsize if leader else 0, dtype.itemsize,
                                      comm=self.node)  # type: ignore[arg-type]
        self._windows.append(win)
        buffer, _ = win.Shared_query(0)
        flat = np.ndarray(buffer=buffer, dtype=dtype, shape=(sum(sizes),))  # type: ignore[arg-type]
        views = [flat[b:e].reshape(shape) for (shape, _), b, e in
                 zip(shapes, np.cumsum([0] + sizes[:-1]).tolist(), np.cumsum(sizes).tolist())]
        if leader:
            for view, A in zip(views, arrays[:-1]):
                view[...] = A
        with self.waiting("sharing the data on the node"):
            self.node.Barrier()  # the copy is there before anyone reads it
        return (*views, tag)

    def sum(self, buf: np.ndarray) -> None:
        """In place: every rank's buf becomes the elementwise sum over ranks. A buffer of more than
        MAX_COUNT elements (p x n x c can pass a C int's 2^31) goes in pieces; every rank's buffer
        has the same size, so all cut it the same way."""
        t0 = time.perf_counter()
        flat = buf.reshape(-1)
        with self.waiting("sum over the ranks (Allreduce)"):
            for lo in range(0, max(flat.size, 1), MAX_COUNT):
                self.mpi.Allreduce(MPI.IN_PLACE, flat[lo: lo + MAX_COUNT], op=MPI.SUM)
        self._count(t0, buf.nbytes)

    def sums(self, values: Sequence[float]) -> np.ndarray:
        """The sums over ranks of a few numbers (float64)."""
        buf = np.array(values, dtype=np.float64)
        self.sum(buf)
        return buf

    def maxima(self, values: Sequence[float]) -> np.ndarray:
        """The maxima over ranks of a few numbers (float64)."""
        t0 = time.perf_counter()
        buf = np.array(values, dtype=np.float64)
        with self.waiting("maximum over the ranks (Allreduce)"):
            self.mpi.Allreduce(MPI.IN_PLACE, buf, op=MPI.MAX)
        self._count(t0, buf.nbytes)
        return buf

    def barrier(self, poll_seconds: float = 0.01) -> None:
        """A barrier that sleeps while it waits: MPI_Barrier spins, and spinning ranks would take
        the cores from the rank they wait for (e.g. rank 0 compiling kernels)."""
        with self.waiting("barrier"):
            request = self.mpi.Ibarrier()
            while not request.Test():
                time.sleep(poll_seconds)

    def from_root(self, value: Any) -> Any:
        """Rank 0's value on every rank (a small Python object, before training): lets a check that
        only rank 0 can make (the output folder) stop every rank the same way."""
        with self.waiting("broadcast from rank 0"):
            return self.mpi.bcast(value, root=0)

    def gather(self, value: Any) -> list | None:
        """Every rank's small Python value, in rank order, on rank 0 (None elsewhere)."""
        with self.waiting("gather at rank 0"):
            return self.mpi.gather(value, root=0)

    def collective_check(self, check: Callable[..., Any], *args: Any, who: str = "all") -> Any:
        """check(*args) on the ranks `who` names ("all", "root": rank 0, "node": each node's first
        rank), then every rank raises the lowest rank's UserError if any of them raised one (a small
        allgather, before training), so a check that fails on some ranks stops every rank the same
        way instead of leaving the others in a collective. Returns check's result (None on the ranks
        that did not run it)."""
        runs = {"all": True, "root": self.rank == 0, "node": self.node.Get_rank() == 0}[who]
        result, error = None, None
        if runs:
            try:
                result = check(*args)
            except UserError as e:
                error = e
        first = self.first_error(str(error) if error else None)
        if first:
            raise UserError(first) from error
        return result

    def first_error(self, error: str | None) -> str | None:
        """The lowest rank's error message, or None when no rank has one (a small allgather,
        before training): lets every rank stop the same way on a check that failed on some."""
        with self.waiting("agreement on the first error (allgather)"):
            return next((e for e in self.mpi.allgather(error) if e), None)

    def abort(self, code: int = 1) -> None:
        """Ends every rank. A rank of this node that is stopped (SIGSTOP) is continued first, so
        that the launcher's signals reach it: a stopped process would keep mpirun waiting."""
        for pid in self.board[:, 2].astype(int):
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{pid}/stat") as f:
                    if pid != os.getpid() and f.read().rsplit(")", 1)[1].split()[0] in "Tt":
                        os.kill(pid, signal.SIGCONT)
        self.mpi.Abort(code)
