"""Random streams, the mask kinds and a round's neuron masks M_k in {0,1}^{p x m}.

Every stream is keyed by (seed, purpose, round[, subnet]), never by rank: every rank derives the
same masks without communicating, and a run gives the same result for any number of ranks. A rank
derives only what it uses (docs/design.md, section 3): the neurons of its own subnetworks, and for
the neurons it owns which subnetworks hold them. That is O(m p / K + m) work per round, never the
whole p x m matrix (which is built only to be recorded, output.record_masks).

The mask kinds are declared once, in KINDS (after scikit-learn's registries): a new kind is one
class here; the config's choices, the default keep, the combine and the memory model read it.
"""
from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # types only: never imported at run time
    from mpisub.config import Config
    from mpisub.parallel.layout import Layout

# purposes, so that e.g. the data stream and the init stream never coincide
DATA, INIT, MASK, BATCH = 0, 1, 2, 3
SIZES = 0     # under (MASK, round): categorical's part sizes


def stream(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


class MaskKind:
    """A way to draw the p masks of a round. `disjoint`: no neuron is in two subnetworks (the
    combine then writes each trained row in place); `keep_settable`: masks.keep may be set."""
    name, disjoint, keep_settable = "", True, False

    def keep(self, p: int) -> float:
        """The kind's own keep xi, the fraction of neurons a subnetwork holds."""
        return 1.0 / p

    def auto_subnets(self, ranks: int) -> int:
        """masks.subnets = 0: one subnetwork per rank."""
        return ranks

    def problem(self, p: int) -> str | None:
        """Why p subnetworks do not fit this kind, or None."""
        return None

    def held_fraction(self, here: float, keep: float) -> float:
        """The expected fraction of the neurons that `here` of the subnetworks hold together (the
        memory model of resources.memory_per_rank)."""
        return min(1.0, here * keep)

    def draw_bytes(self, m: int, owned: int, p: int) -> int:
        """The bytes a rank's draw of a round takes while it is made (resources.memory_per_rank)."""
        return 8 * m

    def members(self, r: "RoundMasks", l: int) -> np.ndarray:
        """Subnetwork l's active neurons, sorted."""
        raise NotImplementedError

    def holders(self, r: "RoundMasks", lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """(subnet, neuron) of every neuron in [lo, hi) each subnetwork holds, sorted by subnet,
        then neuron."""
        raise NotImplementedError


class Bernoulli(MaskKind):
    """Every entry independently 1 with probability keep: subnetwork l's entries are uniforms of a
    counter-based stream (Philox) keyed by (seed, round, l), so an owner draws just its block of
    neurons of every subnetwork, and the trainer all the neurons of its own."""
    name, disjoint, keep_settable = "bernoulli", False, True

    def keep(self, p: int) -> float:
        return 0.5

    def held_fraction(self, here: float, keep: float) -> float:
        return 1 - (1 - keep) ** here

    def draw_bytes(self, m: int, owned: int, p: int) -> int:
        return 8 * (m + owned + 2 * p)

    def members(self, r: RoundMasks, l: int) -> np.ndarray:
        return np.flatnonzero(r.uniforms(l, 0, r.m) < r.keep)

    def holders(self, r: RoundMasks, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        held = [np.flatnonzero(r.uniforms(l, lo, hi) < r.keep) + lo for l in range(r.p)]
        return np.repeat(np.arange(r.p), [len(h) for h in held]), np.concatenate(held)


class Partition(MaskKind):
    """IST: a random permutation of the m neurons per round, cut into p near-equal parts (the
    first m mod p parts one longer). The permutation is keyed and random-access (Permutation), so a
    rank computes the positions of its subnetworks' parts and the inverse at its own neurons, O(m/K)
    work, never all m."""
    name = "partition"

    def draw_bytes(self, m: int, owned: int, p: int) -> int:
        return 8 * (-(-m // p) + 6 * owned)

    def sizes(self, r: RoundMasks) -> np.ndarray:
        """The parts' sizes: as numpy's array_split cuts m into p."""
        return np.full(r.p, r.m // r.p) + (np.arange(r.p) < r.m % r.p)

    def members(self, r: RoundMasks, l: int) -> np.ndarray:
        b = r.parts
        return np.sort(r.permutation(np.arange(b[l], b[l + 1])))

    def holders(self, r: RoundMasks, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        at = r.permutation.inverse(np.arange(lo, hi))      # the owned neurons' positions
        return by_subnet(np.searchsorted(r.parts, at, side="right") - 1, np.arange(lo, hi), r.p)


class Categorical(Partition):
    """Every neuron independently uniform over the p subnetworks: drawn as the parts' sizes,
    multinomial (m; 1/p, ..., 1/p), and the round's random permutation cut into parts of those
    sizes, which is the same distribution (given the sizes, every assignment with them is equally
    likely) and leaves a rank O(m/K + p) work."""
    name = "categorical"

    def sizes(self, r: RoundMasks) -> np.ndarray:
        return stream(r.seed, MASK, r.k, SIZES).multinomial(r.m, np.full(r.p, 1.0 / r.p))


class Full(MaskKind):
    name = "full"

    def keep(self, p: int) -> float:
        return 1.0

    def auto_subnets(self, ranks: int) -> int:
        return 1

    def problem(self, p: int) -> str | None:
        return None if p == 1 else f"masks.kind = 'full' means one subnetwork, but masks.subnets = {p}; " \
                                   f"set masks.subnets = 1"

    def draw_bytes(self, m: int, owned: int, p: int) -> int:
        return 0

    def members(self, r: RoundMasks, l: int) -> np.ndarray:
        return np.arange(r.m)

    def holders(self, r: RoundMasks, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(hi - lo, dtype=np.int64), np.arange(lo, hi)


KINDS = {kind.name: kind for kind in (Bernoulli(), Categorical(), Partition(), Full())}


class Permutation:
    """A random permutation of [0, m) that maps any position without drawing the others (a keyed
    pseudorandom permutation): a balanced Feistel network of ROUNDS rounds over the smallest even
    power of two >= m, walked back into [0, m) (cycle walking, Black & Rogaway 2002: apply it again
    while the image is >= m, at most 4 times on average). The round function is splitmix64 of the
    right half xor the round's key. perm(i) is the neuron at position i; inverse(r) the position
    of neuron r. numpy only, uint64 arithmetic modulo 2^64."""
    ROUNDS = 8

    def __init__(self, m: int, keys: np.ndarray):
        self.m, self.keys = m, np.asarray(keys, dtype=np.uint64)
        half = (max(2, (m - 1).bit_length()) + 1) // 2
        self.half, self.low = np.uint64(half), np.uint64((1 << half) - 1)

    def _f(self, x: np.ndarray, key: np.uint64) -> np.ndarray:
        z = (x ^ key) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))) & self.low

    def _forward(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.low
        for key in self.keys:
            left, right = right, left ^ self._f(right, key)
        return (left << self.half) | right

    def _backward(self, y: np.ndarray) -> np.ndarray:
        left, right = y >> self.half, y & self.low
        for key in self.keys[::-1]:
            left, right = right ^ self._f(left, key), left
        return (left << self.half) | right

    def _walk(self, step, x: np.ndarray) -> np.ndarray:
        out = step(np.asarray(x, dtype=np.uint64))
        outside = np.flatnonzero(out >= self.m)
        while len(outside):
            out[outside] = step(out[outside])
            outside = outside[out[outside] >= self.m]
        return out.astype(np.int64)

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        return self._walk(self._forward, positions)

    def inverse(self, neurons: np.ndarray) -> np.ndarray:
        return self._walk(self._backward, neurons)


def by_subnet(subnets: np.ndarray, neurons: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """(subnet, neuron) pairs given in neuron order, sorted by subnet (neurons stay in order within
    one): a stable sort of small integers, which numpy does by radix in linear time."""
    order = np.argsort(subnets.astype(np.int16) if p <= 2**15 else subnets, kind="stable")
    return subnets[order], neurons[order]


class RoundMasks:
    """Round k's masks as one rank uses them (`lo`, `hi`: the neurons it owns):
      rows(l)          subnetwork l's active neurons, sorted (drawn when asked for: a rank asks
                       for its own subnetworks');
      held_subnets,    every (subnet, owned neuron) pair of the round, sorted by subnet, then
      held_neurons     neuron: which subnetworks hold the owned neurons;
      counts           N_r of the owned neurons.
    The streams: seed, round k, p, keep and m, never the rank."""

    def __init__(self, kind: str, p: int, keep: float, m: int, seed: int, k: int, lo: int = 0, hi: int | None = None):
        self.kind, self.p, self.keep, self.m, self.seed, self.k = KINDS[kind], p, keep, m, seed, k
        self.lo, self.hi = lo, m if hi is None else hi
        self.disjoint = self.kind.disjoint
        self.held_subnets, self.held_neurons = self.kind.holders(self, self.lo, self.hi)
        self.counts = np.bincount(self.held_neurons - self.lo, minlength=self.hi - self.lo).astype(np.int64)
        self._rows: dict[int, np.ndarray] = {}

    @classmethod
    def of(cls, cfg: Config, layout: Layout, k: int) -> "RoundMasks":
        mk = cfg.masks
        return cls(mk.kind, mk.subnets, mk.keep, cfg.model.width, cfg.train.seed, k, layout.lo, layout.hi)

    def rows(self, l: int) -> np.ndarray:
        if l not in self._rows:
            self._rows[l] = self.kind.members(self, l)
        return self._rows[l]

    def owned_rows(self) -> list[np.ndarray]:
        """For every subnetwork, its active neurons among the owned ones, as offsets from lo."""
        cuts = np.searchsorted(self.held_subnets, np.arange(self.p + 1))
        return [self.held_neurons[a:b] - self.lo for a, b in zip(cuts, cuts[1:])]

    def matrix(self) -> np.ndarray:
        """The whole p x m matrix (uint8), to be recorded: p m work, only with output.record_masks."""
        M = np.zeros((self.p, self.m), dtype=np.uint8)
        for l in range(self.p):
            M[l, self.rows(l)] = 1
        return M

    # the streams, drawn once per round when a kind first asks
    @cached_property
    def permutation(self) -> Permutation:
        """The round's permutation, keyed by the SeedSequence (seed, MASK, round)'s first words."""
        keys = np.random.SeedSequence(self.seed, spawn_key=(MASK, self.k)).generate_state(Permutation.ROUNDS, np.uint64)
        return Permutation(self.m, keys)

    @cached_property
    def parts(self) -> np.ndarray:
        """Where each of the p parts of the permutation starts (the kind's sizes), and m."""
        return np.concatenate([[0], np.cumsum(self.kind.sizes(self))]).astype(np.int64)  # type: ignore[union-attr]

    @cached_property
    def _keys(self) -> np.ndarray:
        return np.random.SeedSequence(self.seed, spawn_key=(MASK, self.k)).generate_state(2 * self.p, np.uint64)

    def uniforms(self, l: int, lo: int, hi: int) -> np.ndarray:
        """Entries lo:hi of subnetwork l's uniforms: a Philox stream keyed by (seed, round, l),
        jumped to lo (Philox.advance counts blocks of four draws)."""
        bits = np.random.Philox(key=self._keys[2 * l: 2 * l + 2])
        bits.advance(lo // 4)
        return np.random.Generator(bits).random(hi - lo + lo % 4)[lo % 4:]


def sample(kind: str, subnets: int, keep: float, width: int, seed: int, k: int) -> np.ndarray:
    """M_k as uint8 (p x m): M[l, r] = 1 when subnetwork l holds neuron r in round k."""
    if kind not in KINDS:
        raise ValueError(f"unknown mask kind {kind!r}")
    return RoundMasks(kind, subnets, keep, width, seed, k, 0, 0).matrix()


def minibatches(n: int, batch_size: int, local_steps: int, seed: int, k: int, subnet: int) -> np.ndarray:
    """Sample indices for each local step of one subnetwork in round k (local_steps x batch_size), without
    replacement within a step; (local_steps x 0) means full batch."""
    if batch_size == 0:
        return np.zeros((local_steps, 0), dtype=np.int64)
    rng = stream(seed, BATCH, k, subnet)
    return np.stack([np.sort(rng.choice(n, batch_size, replace=False)) for _ in range(local_steps)])
