"""Who sends which rows of W to whom in a round (docs/design.md, section 3): plain-numpy
bookkeeping, no MPI.

Rank k owns the fixed contiguous block of neurons layout.lo:layout.hi for the whole run: its rows
of W live there and nowhere else between rounds. Each round it works out its own part of the
exchange from what it knows, with no communication and without simulating the other ranks:

- pull: it receives, from their owners, the rows its subnetworks hold (each once, even when
  several of its subnetworks hold it), and sends each rank the rows it owns that the other
  rank's subnetworks hold (it knows which subnetworks hold its neurons: masks.RoundMasks.held_*);
- push: it sends each trained row of each of its subnetworks to the row's owner, destination by
  destination and in subnetwork order; it receives the trained copies of its own rows from the
  ranks in order, each rank's subnetworks in order, which is the order of masks.RoundMasks's
  (subnet, neuron) pairs, so the owner sums the copies in subnet order (the same bits for every
  K dividing p), and keeps a row no subnetwork held.

Every array here is O(m p / K) (a rank's subnetworks' rows and its neurons' holders) or K long
(the counts of the two Alltoallv); there is no loop over ranks.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # types only: never imported at run time
    from collections.abc import Iterable

    from mpisub.nn.masks import RoundMasks
    from mpisub.parallel.layout import Layout


def gather(A: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A[rows], a copy (numpy's take: a few times faster than fancy indexing for narrow rows)."""
    return np.take(A, rows, axis=0)


def scatter(A: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """A[rows] = values, each row moved as one item where both are contiguous (narrow rows move
    twice as fast)."""
    if A.flags.c_contiguous and values.flags.c_contiguous and A.dtype == values.dtype and A.ndim == 2 and A.shape[1]:
        item = np.dtype((np.void, A.shape[1] * A.itemsize))
        A.view(item)[:, 0][rows] = values.view(item)[:, 0]
    else:
        A[rows] = values


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """The distinct values, ascending (a sort and a comparison: numpy's unique hashes, slower here)."""
    values = np.sort(values)
    return values[np.concatenate([[True], values[1:] != values[:-1]])] if len(values) else values


def _per_rank(sorted_values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """How many of the sorted values fall in each [bounds[j], bounds[j+1])."""
    return np.diff(np.searchsorted(sorted_values, bounds))


class Exchange:
    """One round's row traffic for the rank of `layout`, from `masks` (a masks.RoundMasks).

    The pulled buffer holds this rank's subnetworks' rows by owner, then subnet, then neuron: the
    layout the push sends in, so each subnetwork's rows move out of it and back into the send
    buffer by runs (one subnetwork: its rows are the buffer, sent as it is). When the rank's
    subnetworks share neurons (bernoulli, several subnetworks per rank), a row shared by several
    of them is pulled once instead: the buffer is the union of their rows, by neuron."""

    def __init__(self, masks: RoundMasks, layout: Layout):
        lo, owned, ranks = layout.lo, max(1, layout.owned), layout.ranks
        self.subnets = layout.my_subnets
        rows = [masks.rows(l) for l in self.subnets]
        self.shared = not masks.disjoint and len(rows) > 1

        # push: the trained rows in send order, by destination (owner), then subnet, then neuron
        cut = np.array([np.searchsorted(r, layout.bounds) for r in rows])   # subnet x (K + 1): where owners change
        per = np.diff(cut, axis=1)                                          # subnet x K: rows for each owner
        self.push_send = per.sum(axis=0)
        start = (np.cumsum(per.T.ravel()) - per.T.ravel()).reshape(ranks, len(rows)).T   # each block's place
        self.push_at = [np.repeat(start[i] - cut[i, :-1], per[i]) + np.arange(len(r)) for i, r in enumerate(rows)]
        # what it receives: the copies of its rows that each rank's subnetworks trained, in pair order
        trainers = layout.trainer_of(masks.held_subnets)
        self.push_recv = _per_rank(trainers, np.arange(ranks + 1))
        self.received = masks.held_neurons - lo                  # the owned neuron of each received row

        # pull: what it sends is its neurons' (subnet, neuron) pairs, by destination rank: in pair
        # order (the push's layout) or, when the receiver pulls shared rows once, once each by neuron
        sends = trainers * owned + (masks.held_neurons - lo)
        if self.shared:
            sends = _sorted_unique(sends)
        self.pull_index = sends % owned                          # rows of the owned block, by destination
        self.pull_send = _per_rank(sends, np.arange(ranks + 1) * owned)
        if self.shared:
            self.need = _sorted_unique(np.concatenate(rows))
            self.pull_recv = _per_rank(self.need, layout.bounds)
            self.position = self._places(rows, layout.width)
        else:
            self.pull_recv = self.push_send
            self.position = dict(zip(self.subnets, [None] if len(rows) == 1 else self.push_at))

    def _places(self, rows: list, m: int) -> dict:
        """Each subnetwork's rows' places in the union, through a map of the neurons (m of them)."""
        place = np.empty(m, dtype=np.int32 if len(self.need) < 2**31 else np.int64)
        place[self.need] = np.arange(len(self.need))
        return {l: place[r] for l, r in zip(self.subnets, rows)}

    @property
    def pulled_rows(self) -> int:
        return int(self.pull_recv.sum())

    def rows_of(self, pulled: np.ndarray, l: int) -> np.ndarray:
        """Subnetwork l's rows of the pulled buffer: a view when they are all of it (one
        subnetwork per rank) or one run of it, else a copy."""
        at = self.position[l]
        if at is None:
            return pulled
        if len(at) and at[-1] - at[0] + 1 == len(at):
            return pulled[at[0]: at[-1] + 1]
        return gather(pulled, at)

    def send_buffer(self, trained: dict) -> np.ndarray:
        """The push's send buffer from each subnetwork's trained rows (one subnetwork: its rows,
        already in send order)."""
        first = trained[self.subnets[0]]
        if len(self.subnets) == 1:
            return first
        send = np.empty((int(self.push_send.sum()), first.shape[1]), dtype=first.dtype)
        for at, l in zip(self.push_at, self.subnets):
            scatter(send, at, trained[l])
        return send


def combine(W_own: np.ndarray, pieces: Iterable[tuple[np.ndarray, np.ndarray]], disjoint: bool,
            counts: np.ndarray) -> None:
    """In place: each owned neuron becomes the mean of the trained copies of it in `pieces`, an
    iterable of (owned indices, their trained rows) in subnet order (a piece may hold several
    subnetworks' rows, in subnet order), summed in that order; a neuron held by no subnetwork keeps
    its row. `counts`: N_r for the owned neurons."""
    if disjoint or counts.max(initial=0) <= 1:  # one copy per neuron: it is the mean (x / 1 is x)
        for idx, rows in pieces:
            scatter(W_own, idx, rows)
        return
    held = np.flatnonzero(counts)
    at = np.empty(len(W_own), dtype=np.int64)   # an owned neuron's row in the sums of the held ones
    at[held] = np.arange(len(held))
    S = np.zeros((len(held), W_own.shape[1]), dtype=W_own.dtype)
    for idx, rows in pieces:
        np.add.at(S, at[idx], rows)             # in the pieces' order, a copy after another
    W_own[held] = S / counts[held, None].astype(W_own.dtype)
