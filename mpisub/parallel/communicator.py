"""What a rank's communicator offers, as two Protocols: `RowExchange`, what a round's plan needs
(parallel.plans), and `Communicator`, what the round loop and the evaluation need besides
(train.loop, train.evaluate, io.loggers). `comm.Comm` (MPI) satisfies both; so do the tests'
simulated ranks (tests/helpers/simcomm.py) and, for RowExchange, the benchmarks' stand-in
(bench.strong.StubComm). The start of a job and the watchdog use `comm.Comm` itself: they need MPI
(the node's shared memory, the cross-rank error protocol, MPI_Abort)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class RowExchange(Protocol):
    """Rows of W between ranks, and a sum over them: what a round's steps 1 and 2 call."""

    rank: int
    size: int

    def alltoall_rows(self, send: np.ndarray, send_counts: list[int], out: np.ndarray,
                      recv_counts: list[int]) -> None:
        """Send send_counts[j] rows to rank j (in rank order) and receive recv_counts[j] from it into `out`.

        Args:
            send: the rows to send, rank 0's first.
            send_counts: rows for each rank.
            out: where the received rows go, rank 0's first.
            recv_counts: rows from each rank.
        """

    def sum(self, buf: np.ndarray) -> None:
        """Sum `buf` over the ranks, in place, in rank order (the same bits on every rank).

        Args:
            buf: this rank's part; every rank's sum afterwards.
        """


@runtime_checkable
class Communicator(RowExchange, Protocol):
    """What the round loop, the evaluation and rank 0's loggers call on top of a RowExchange."""

    nodes: int
    ranks_per_node: int
    seconds: float

    def library(self) -> str:
        """The MPI library, for the run file.

        Returns:
            Its one-line name.
        """

    def sums(self, values: Sequence[float]) -> np.ndarray:
        """The sums over the ranks of a few numbers.

        Args:
            values: this rank's numbers.

        Returns:
            Their sums (float64), the same on every rank.
        """

    def maxima(self, values: Sequence[float]) -> np.ndarray:
        """The maxima over the ranks of a few numbers.

        Args:
            values: this rank's numbers.

        Returns:
            Their maxima (float64), the same on every rank.
        """

    def gather_rows(self, mine: np.ndarray, counts: list[int], out: np.ndarray | None) -> None:
        """Every rank's rows into rank 0's `out`, in rank order.

        Args:
            mine: this rank's rows.
            counts: the rows of each rank.
            out: rank 0's buffer for all of them (None elsewhere).
        """

    def gather(self, value: Any) -> list[Any] | None:
        """A small Python object from every rank.

        Args:
            value: this rank's.

        Returns:
            On rank 0 the list of every rank's value; None elsewhere.
        """

    def from_root(self, value: Any) -> Any:
        """Rank 0's value on every rank (a broadcast of a small Python object).

        Args:
            value: rank 0's value (ignored elsewhere).

        Returns:
            Rank 0's value.
        """

    def barrier(self) -> None:
        """Wait until every rank is here."""

    def take_counters(self) -> tuple[float, int, int]:
        """The collectives' counters since the last call (counters.Counted), which it resets.

        Returns:
            (seconds, bytes sent, bytes received).
        """
