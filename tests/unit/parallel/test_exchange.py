"""The exchange plan of owner storage, against an independent simulation of the two Alltoallv."""
import numpy as np
import pytest

from mpisub.nn import masks
from mpisub.parallel import exchange
from mpisub.parallel.layout import Layout


def _alltoall(sends: list, counts: list) -> list:
    """What each rank receives when rank j sends sends[j] cut by counts[j] (an Alltoallv, in rank order)."""
    cuts = [np.concatenate([[0], np.cumsum(c)]) for c in counts]
    return [np.concatenate([sends[j][cuts[j][k]:cuts[j][k + 1]] for j in range(len(sends))])
            for k in range(len(sends))]


@pytest.mark.parametrize("kind,p,K", [("bernoulli", 4, 2), ("bernoulli", 6, 3), ("partition", 8, 4),
                                      ("categorical", 4, 4), ("partition", 16, 16), ("bernoulli", 8, 8)])
def test_the_exchange_plan_moves_every_row_where_the_algorithm_needs_it(kind, p, K):
    """Each rank plans from its own view of the round (masks.RoundMasks of its owned neurons); the two
    Alltoallv simulated with every rank's plan move each subnetwork's rows, as the whole mask
    matrix says, to the rank that trains it, and every trained copy to its owner in subnet order."""
    m, keep = 50, 0.5 if kind == "bernoulli" else 1 / p
    M = masks.sample(kind, p, keep, m, 7, 3)                            # the whole matrix, drawn apart
    rows = [np.flatnonzero(M[l]) for l in range(p)]
    layouts = [Layout(m, K, k, p) for k in range(K)]
    plans = [exchange.Exchange(masks.RoundMasks(kind, p, keep, m, 7, 3, lay.lo, lay.hi), lay) for lay in layouts]
    W = np.arange(m, dtype=float)[:, None] * np.ones((1, 2))           # row r holds the value r
    pulled = _alltoall([W[lay.lo:lay.hi][x.pull_index] for lay, x in zip(layouts, plans)],
                       [x.pull_send for x in plans])
    for lay, x, got in zip(layouts, plans, pulled):
        assert len(got) == x.pull_recv.sum()
        for l in lay.my_subnets:
            np.testing.assert_array_equal(x.rows_of(got, l)[:, 0], rows[l])
    # push: a trained row carries (its neuron, its subnetwork)
    sends = [x.send_buffer({l: np.stack([rows[l], np.full(len(rows[l]), l)], axis=1).astype(float)
                            for l in lay.my_subnets}) for lay, x in zip(layouts, plans)]
    received = _alltoall(sends, [x.push_send for x in plans])
    for lay, x, got in zip(layouts, plans, received):
        expected = [(r, l) for l in range(p) for r in rows[l] if lay.lo <= r < lay.hi]   # subnet order
        np.testing.assert_array_equal(got, np.array(expected, dtype=float).reshape(-1, 2))
        np.testing.assert_array_equal(x.received + lay.lo, got[:, 0])


@pytest.mark.parametrize("kind", ["bernoulli", "categorical", "partition", "full"])
def test_a_ranks_view_of_a_round_is_the_whole_matrix_restricted(kind):
    """What a rank derives alone (its subnetworks' rows, its neurons' holders and counts) is the
    whole matrix's, for any block of owned neurons."""
    p, m = (1, 300) if kind == "full" else (6, 300)
    keep = {"bernoulli": 0.3, "full": 1.0}.get(kind, 1 / p)
    M = masks.sample(kind, p, keep, m, 11, 5)
    for lo, hi in ((0, 300), (37, 101), (299, 300), (5, 5)):
        r = masks.RoundMasks(kind, p, keep, m, 11, 5, lo, hi)
        for l in range(p):
            np.testing.assert_array_equal(r.rows(l), np.flatnonzero(M[l]))
        subnets, neurons = np.nonzero(M[:, lo:hi])
        np.testing.assert_array_equal(r.held_subnets, subnets)
        np.testing.assert_array_equal(r.held_neurons, neurons + lo)
        np.testing.assert_array_equal(r.counts, M[:, lo:hi].sum(axis=0))
        assert [list(o) for o in r.owned_rows()] == [list(np.flatnonzero(M[l, lo:hi])) for l in range(p)]


def test_the_layout_owns_every_neuron_once_and_trains_every_subnetwork_once():
    for m, K, p in ((50, 4, 8), (7, 3, 3), (1000, 16, 32)):
        layouts = [Layout(m, K, k, p) for k in range(K)]
        assert [n for lay in layouts for n in range(lay.lo, lay.hi)] == list(range(m))
        assert [l for lay in layouts for l in lay.my_subnets] == list(range(p))
        lay = layouts[0]
        np.testing.assert_array_equal(lay.owners(np.arange(m)), [k for k in range(K) for _ in range(*lay.owned_by(k))])
        np.testing.assert_array_equal(lay.trainer_of(np.arange(p)), [k for k in range(K) for _ in lay.subnets_of(k)])
