"""K ranks in one process: a thread per rank, each with a communicator that has comm.Comm's
collectives (what train.run, the plans and the evaluation call), done through shared memory. The
round loop runs under it exactly as under MPI, in well under a second, so the fast tier tests
the loop at K > 1 without mpirun. Sums go in rank order; bytes are counted as comm.Comm counts them."""
import threading
import time

import numpy as np

from mpisub.parallel.counters import Counted


class World:
    """What the K ranks share: a barrier and one slot per rank."""

    def __init__(self, size: int):
        self.size, self.barrier, self.slots = size, threading.Barrier(size, timeout=60), [None] * size

    def allgather(self, rank: int, value) -> list:
        self.slots[rank] = value
        self.barrier.wait()
        every = list(self.slots)
        self.barrier.wait()      # nobody writes the next round's slot before all have read this one
        return every


class SimComm(Counted):
    def __init__(self, world: World, rank: int):
        self.world, self.rank, self.size = world, rank, world.size
        self.nodes, self.ranks_per_node = 1, world.size

    def library(self) -> str:
        return "simulated"

    def alltoall_rows(self, send, send_counts, out, recv_counts) -> None:
        t0 = time.perf_counter()
        send_counts, recv_counts = np.asarray(send_counts).tolist(), np.asarray(recv_counts).tolist()
        cuts = np.concatenate([[0], np.cumsum(send_counts)]).astype(int)
        every = self.world.allgather(self.rank, [send[cuts[j]:cuts[j + 1]].copy() for j in range(self.size)])
        got = [every[j][self.rank] for j in range(self.size)]
        assert [len(g) for g in got] == list(recv_counts), (got, recv_counts)
        out[...] = np.concatenate(got) if got else out
        row = out.dtype.itemsize * out.shape[1]
        self._count(t0, (sum(send_counts) - send_counts[self.rank]) * row,
                    (sum(recv_counts) - recv_counts[self.rank]) * row)

    def sum(self, buf) -> None:
        t0 = time.perf_counter()
        every = self.world.allgather(self.rank, buf.copy())
        total = every[0].copy()
        for part in every[1:]:
            total += part
        buf[...] = total
        self._count(t0, buf.nbytes)

    def sums(self, values):
        buf = np.array(values, dtype=np.float64)
        self.sum(buf)
        return buf

    def maxima(self, values):
        t0 = time.perf_counter()
        buf = np.max(self.world.allgather(self.rank, np.array(values, dtype=np.float64)), axis=0)
        self._count(t0, buf.nbytes)
        return buf

    def gather_rows(self, mine, counts, out) -> None:
        every = self.world.allgather(self.rank, mine.copy())
        if self.rank == 0:
            out[...] = np.concatenate(every)

    def gather(self, value):
        every = self.world.allgather(self.rank, value)
        return every if self.rank == 0 else None

    def from_root(self, value):
        return self.world.allgather(self.rank, value)[0]

    def barrier(self) -> None:
        self.world.allgather(self.rank, None)


def run_ranks(size: int, work) -> list:
    """work(comm) on `size` simulated ranks, each in its own thread; their results in rank order.
    An exception on any rank is raised here (the others are released from their barrier)."""
    world, results, errors = World(size), [None] * size, []

    def one(rank):
        try:
            results[rank] = work(SimComm(world, rank))
        except BaseException as e:  # noqa: BLE001 (re-raised below, after every rank ended)
            errors.append(e)
            world.barrier.abort()

    threads = [threading.Thread(target=one, args=(rank,)) for rank in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
    return results
