"""Who holds which rows of W (docs/design.md, section 3): plain-numpy bookkeeping, no MPI.

Rank k owns the fixed contiguous block of neurons `owned(m, K, k)` for the whole run: its rows of
W live there and nowhere else between rounds. Each round, every rank works out from the masks
(which every rank knows) the same exchange plan, with no communication:

- pull: rank k receives, from their owners, the rows its subnetworks hold, each once per rank even
  when several of its subnetworks hold it;
- push: rank k sends each trained row of each of its subnetworks, in subnetwork order, to the
  row's owner; the owner averages the copies it receives in subnetwork order (so the result has
  the same bits for every K dividing p), and keeps a row no subnetwork held.
"""
import numpy as np


def _counts(sorted_rows: np.ndarray, bounds: list[int]) -> list[int]:
    """How many of the sorted neuron indices each rank owns."""
    return np.diff(np.searchsorted(sorted_rows, bounds)).tolist()


class Exchange:
    """One round's row traffic for this rank of `layout`, from `rows(l)` (subnetwork l's active
    neurons, sorted)."""

    def __init__(self, rows, layout):
        p, ranks = layout.subnets, layout.ranks
        lo, hi = layout.lo, layout.hi
        self.bounds = layout.bounds.tolist()
        self.subnets = layout.my_subnets

        # pull: the union of this rank's subnetworks' rows, sorted, hence grouped by owner
        def needed(k):
            mine = [rows(l) for l in layout.subnets_of(k)]
            return np.unique(np.concatenate(mine)) if len(mine) > 1 else (mine[0] if mine else np.zeros(0, np.int64))

        self.need = needed(layout.rank)
        self.pull_recv = _counts(self.need, self.bounds)
        send = [needed(k) for k in range(ranks)]
        send = [r[np.searchsorted(r, lo): np.searchsorted(r, hi)] for r in send]
        self.pull_send = [len(r) for r in send]
        self.pull_index = np.concatenate(send) - lo      # rows of the owned block, by destination
        # where each of this rank's subnetworks finds its rows in the pulled buffer
        self.position = {l: np.searchsorted(self.need, rows(l)) for l in self.subnets}

        # push: each subnetwork's rows, split by owner; for each destination in turn, the
        # subnetworks in order: (subnet, first, last) slices of its trained rows, in send order
        parts = {l: np.searchsorted(rows(l), self.bounds) for l in self.subnets}
        self.push_slices = [(l, int(parts[l][j]), int(parts[l][j + 1])) for j in range(ranks) for l in self.subnets]
        self.push_send = [sum(int(parts[l][j + 1] - parts[l][j]) for l in self.subnets) for j in range(ranks)]
        # what the owner receives: from ranks in order, each rank's subnetworks in order
        self.segments = []                               # (subnet, owned-block indices), in subnet order
        for l in range(p):
            r = rows(l)
            self.segments.append((l, r[np.searchsorted(r, lo): np.searchsorted(r, hi)] - lo))
        self.push_recv = [sum(len(seg) for l, seg in self.segments if l in layout.subnets_of(k))
                          for k in range(ranks)]


def combine(W_own: np.ndarray, pieces, disjoint: bool, counts: np.ndarray) -> None:
    """In place: each owned neuron becomes the mean of the trained copies of it in `pieces`, an
    iterable of (owned indices, their trained rows) in subnet order, summed in that order; a
    neuron held by no subnetwork keeps its row. `counts`: N_r for the owned neurons."""
    if disjoint or counts.max(initial=0) <= 1:  # one copy per neuron: it is the mean (x / 1 is x)
        for idx, rows in pieces:
            W_own[idx] = rows
        return
    held = np.flatnonzero(counts)
    at = np.empty(len(W_own), dtype=np.int64)   # an owned neuron's row in the sums of the held ones
    at[held] = np.arange(len(held))
    S = np.zeros((len(held), W_own.shape[1]), dtype=W_own.dtype)
    for idx, rows in pieces:
        S[at[idx]] += rows
    W_own[held] = S / counts[held, None].astype(W_own.dtype)


def received_pieces(received: np.ndarray, segments):
    """The (owned indices, rows) pieces of a push's receive buffer, in its (subnet) order."""
    at = 0
    for _, idx in segments:
        yield idx, received[at: at + len(idx)]
        at += len(idx)
