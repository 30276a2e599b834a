"""Masks: each kind's definition, and streams keyed by (seed, round[, subnet]) alone."""
import numpy as np

from mpisub.nn import masks


def test_partition_is_a_balanced_random_partition():
    M = masks.sample("partition", 4, 0.25, 10, seed=3, k=0)
    assert M.dtype == np.uint8 and M.shape == (4, 10)
    assert np.all(M.sum(axis=0) == 1)
    assert sorted(M.sum(axis=1)) == [2, 2, 3, 3]
    assert not np.array_equal(M, masks.sample("partition", 4, 0.25, 10, seed=3, k=1))


def test_categorical_gives_each_neuron_one_uniform_subnet():
    M = masks.sample("categorical", 5, 0.2, 20000, seed=1, k=2)
    assert np.all(M.sum(axis=0) == 1)
    np.testing.assert_allclose(M.mean(axis=1), 0.2, atol=0.01)


def test_bernoulli_entries_are_independent_with_probability_keep():
    M = masks.sample("bernoulli", 3, 0.3, 50000, seed=0, k=0).astype(float)
    np.testing.assert_allclose(M.mean(axis=1), 0.3, atol=0.01)
    assert abs(np.corrcoef(M)[0, 1]) < 0.02


def test_full_is_all_ones():
    assert np.all(masks.sample("full", 1, 1.0, 7, seed=0, k=5) == 1)


def test_same_key_same_stream_other_key_other_stream():
    a = masks.sample("bernoulli", 4, 0.5, 100, seed=7, k=3)
    np.testing.assert_array_equal(a, masks.sample("bernoulli", 4, 0.5, 100, seed=7, k=3))
    assert not np.array_equal(a, masks.sample("bernoulli", 4, 0.5, 100, seed=8, k=3))
    # subnet l's row depends on (seed, round, l) only, not on how many subnets there are
    np.testing.assert_array_equal(a[:2], masks.sample("bernoulli", 2, 0.5, 100, seed=7, k=3))


def test_minibatches_are_distinct_indices_per_step():
    b = masks.minibatches(50, 10, 3, seed=0, k=1, subnet=2)
    assert b.shape == (3, 10)
    assert all(len(set(row)) == 10 and row.max() < 50 for row in b)
    assert masks.minibatches(50, 0, 3, seed=0, k=1, subnet=2).shape == (3, 0)


def test_each_kind_draws_from_the_streams_design_md_names():
    """An independent statement of the streams (docs/design.md, section 3): partition and
    categorical from one stream per round (seed, MASK, round), as in mpisub 0.2; bernoulli from a
    Philox stream per subnetwork keyed by that round's SeedSequence words 2l, 2l + 1."""
    seed, k, m, p = 5, 9, 257, 4
    rng = lambda: np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(masks.MASK, k)))  # noqa: E731
    expected = np.zeros((p, m), np.uint8)
    for l, part in enumerate(np.array_split(rng().permutation(m), p)):
        expected[l, part] = 1
    np.testing.assert_array_equal(masks.sample("partition", p, 1 / p, m, seed, k), expected)
    expected = np.zeros((p, m), np.uint8)
    expected[rng().integers(p, size=m), np.arange(m)] = 1
    np.testing.assert_array_equal(masks.sample("categorical", p, 1 / p, m, seed, k), expected)
    words = np.random.SeedSequence(seed, spawn_key=(masks.MASK, k)).generate_state(2 * p, np.uint64)
    expected = np.array([np.random.Generator(np.random.Philox(key=words[2 * l: 2 * l + 2])).random(m) < 0.3
                         for l in range(p)], dtype=np.uint8)
    np.testing.assert_array_equal(masks.sample("bernoulli", p, 0.3, m, seed, k), expected)
