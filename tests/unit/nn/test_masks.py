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


def _feistel(m: int, keys, x: int) -> int:
    """An independent statement of masks.Permutation in plain Python integers (docs/design.md,
    section 3): 8 Feistel rounds of splitmix64 over 2 x half bits, walked back into [0, m)."""
    half = (max(2, (m - 1).bit_length()) + 1) // 2
    low, full = (1 << half) - 1, (1 << 64) - 1

    def f(v, key):
        z = ((v ^ key) + 0x9E3779B97F4A7C15) & full
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & full
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & full
        return (z ^ (z >> 31)) & low
    while True:
        left, right = x >> half, x & low
        for key in keys:
            left, right = right, left ^ f(right, int(key))
        x = (left << half) | right
        if x < m:
            return x


def test_each_kind_draws_from_the_streams_design_md_names():
    """An independent statement of the streams (docs/design.md, section 3): partition and
    categorical cut one keyed permutation per round (keys: the first 8 words of the SeedSequence
    (seed, MASK, round)) into array_split's sizes, or into multinomial sizes from the stream (seed,
    MASK, round, 0); bernoulli from a Philox stream per subnetwork keyed by that round's
    SeedSequence words 2l, 2l + 1."""
    seed, k, m, p = 5, 9, 257, 4
    keys = np.random.SeedSequence(seed, spawn_key=(masks.MASK, k)).generate_state(8, np.uint64)
    order = [_feistel(m, keys, i) for i in range(m)]
    assert sorted(order) == list(range(m))
    sizes_stream = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(masks.MASK, k, 0)))
    drawn = sizes_stream.multinomial(m, [1 / p] * p)
    for kind, sizes in (("partition", [65, 64, 64, 64]), ("categorical", drawn)):
        expected, at = np.zeros((p, m), np.uint8), 0
        for l, size in enumerate(sizes):
            expected[l, order[at:at + size]] = 1
            at += size
        np.testing.assert_array_equal(masks.sample(kind, p, 1 / p, m, seed, k), expected, err_msg=kind)
    words = np.random.SeedSequence(seed, spawn_key=(masks.MASK, k)).generate_state(2 * p, np.uint64)
    expected = np.array([np.random.Generator(np.random.Philox(key=words[2 * l: 2 * l + 2])).random(m) < 0.3
                         for l in range(p)], dtype=np.uint8)
    np.testing.assert_array_equal(masks.sample("bernoulli", p, 0.3, m, seed, k), expected)


def test_the_keyed_permutation_is_a_bijection_with_its_inverse_at_every_size():
    for m in (1, 2, 3, 4, 5, 17, 64, 1000, 4097):
        perm = masks.Permutation(m, np.arange(1, 9, dtype=np.uint64) * 12345)
        image = perm(np.arange(m))
        assert sorted(image.tolist()) == list(range(m)), m
        np.testing.assert_array_equal(perm.inverse(image), np.arange(m))


def test_the_partition_puts_every_neuron_in_every_part_equally_often_and_pairs_independently():
    """Over 4000 rounds of m = 12 neurons in p = 3 parts of 4: each neuron is in each part with
    probability 1/3 (binomial sd 0.0075: bound 5 sd), and two neurons share a part with
    probability (4 - 1)/(12 - 1) = 0.273, as under a uniform permutation."""
    m, p, rounds = 12, 3, 4000
    M = np.array([masks.sample("partition", p, 1 / p, m, seed=11, k=k) for k in range(rounds)])
    np.testing.assert_allclose(M.mean(axis=0), 1 / p, atol=5 * np.sqrt(1 / p * (1 - 1 / p) / rounds))
    part = M.argmax(axis=1)                          # rounds x m: each neuron's part
    for a, b in ((0, 1), (0, 11), (5, 6), (3, 9)):
        np.testing.assert_allclose(np.mean(part[:, a] == part[:, b]), 3 / 11, atol=5 * np.sqrt(0.2 / rounds))


def test_categorical_part_sizes_are_multinomial():
    m, p, rounds = 60, 4, 3000
    sizes = np.array([masks.sample("categorical", p, 1 / p, m, seed=2, k=k).sum(axis=1) for k in range(rounds)])
    assert np.all(sizes.sum(axis=1) == m)
    np.testing.assert_allclose(sizes.mean(axis=0), m / p, atol=0.1)
    np.testing.assert_allclose(sizes.var(axis=0), m / p * (1 - 1 / p), rtol=0.1)
