"""The exchange plan of owner storage, against an independent simulation of the two Alltoallv."""
import numpy as np
import pytest

from mpisub import shard
from mpisub.layout import Layout


@pytest.mark.parametrize("kind,p,K", [("bernoulli", 4, 2), ("bernoulli", 6, 3), ("partition", 8, 4),
                                      ("categorical", 4, 4)])
def test_the_exchange_plan_moves_every_row_where_the_algorithm_needs_it(kind, p, K):
    """Simulate the two Alltoallv with the plans of all K ranks: every rank receives exactly its
    subnetworks' rows, and every owner receives each copy of its rows, in subnet order."""
    from mpisub import masks
    m = 50
    M = masks.sample(kind, p, 0.5 if kind == "bernoulli" else 1 / p, m, 7, 3)
    rows = [np.flatnonzero(M[l]) for l in range(p)]
    plans = [shard.Exchange(rows.__getitem__, Layout(m, K, k, p)) for k in range(K)]
    bounds = [Layout(m, K, k, p).owned_by(k) for k in range(K)]
    W = np.arange(m, dtype=float)[:, None] * np.ones((1, 2))           # row r holds the value r
    # pull: what rank j sends to rank k is the slice k of j's send buffer
    for k, plan in enumerate(plans):
        got = []
        for j, sender in enumerate(plans):
            lo = bounds[j][0]
            send = W[lo:bounds[j][1]][sender.pull_index]
            start = sum(sender.pull_send[:k])
            got.append(send[start:start + sender.pull_send[k]])
        pulled = np.concatenate(got)
        for l in Layout(m, K, k, p).subnets_of(k):
            np.testing.assert_array_equal(pulled[plan.position[l], 0], rows[l])
    # push: every owner's received copies, in order, are the segments' neurons
    for j, owner in enumerate(plans):
        lo = bounds[j][0]
        received = []
        for sender in plans:
            trained = {l: W[rows[l]] for l in sender.subnets}
            send = np.concatenate([trained[l][a:b] for l, a, b in sender.push_slices] or [np.zeros((0, 2))])
            start = sum(sender.push_send[:j])
            received.append(send[start:start + sender.push_send[j]])
        received = np.concatenate(received)
        expected = np.concatenate([idx + lo for _, idx in owner.segments])
        np.testing.assert_array_equal(received[:, 0], expected)
        assert [l for l, _ in owner.segments] == list(range(p))        # subnet order


def test_the_layout_owns_every_neuron_once_and_trains_every_subnetwork_once():
    for m, K, p in ((50, 4, 8), (7, 3, 3), (1000, 16, 32)):
        layouts = [Layout(m, K, k, p) for k in range(K)]
        assert [n for lay in layouts for n in range(lay.lo, lay.hi)] == list(range(m))
        assert [l for lay in layouts for l in lay.my_subnets] == list(range(p))
        lay = layouts[0]
        np.testing.assert_array_equal(lay.owners(np.arange(m)), [k for k in range(K) for _ in range(*lay.owned_by(k))])
        np.testing.assert_array_equal(lay.trainer_of(np.arange(p)), [k for k in range(K) for _ in lay.subnets_of(k)])
