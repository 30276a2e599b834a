"""Random streams, the mask kinds and the neuron masks M_k in {0,1}^{p x m}, sampled fresh every round.

Every stream is keyed by (seed, purpose, round, subnet), never by rank: every rank derives the
same masks without communicating, and a run gives the same result for any number of ranks.

The mask kinds are declared once, in KINDS (after scikit-learn's registries): a new kind is one
class here; the config's choices, the default keep, the combine and the memory model read it.
"""
import numpy as np

# purposes, so that e.g. the data stream and the init stream never coincide
DATA, INIT, MASK, BATCH = 0, 1, 2, 3


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

    def held(self, here: int, keep: float) -> float:
        """The expected fraction of the neurons that `here` of the subnetworks hold together (the
        memory model of resources.memory_per_rank)."""
        return min(1.0, here * keep)

    def sample(self, p: int, keep: float, m: int, seed: int, k: int) -> np.ndarray:
        raise NotImplementedError


class Bernoulli(MaskKind):
    name, disjoint, keep_settable = "bernoulli", False, True

    def keep(self, p):
        return 0.5

    def held(self, here, keep):
        return 1 - (1 - keep) ** here

    def sample(self, p, keep, m, seed, k):
        # one stream per subnetwork: every entry independently 1 with probability keep
        M = np.zeros((p, m), dtype=np.uint8)
        for l in range(p):
            M[l] = stream(seed, MASK, k, l).random(m) < keep
        return M


class Categorical(MaskKind):
    name = "categorical"

    def sample(self, p, keep, m, seed, k):
        # every neuron independently uniform over the p subnetworks
        M = np.zeros((p, m), dtype=np.uint8)
        M[stream(seed, MASK, k).integers(p, size=m), np.arange(m)] = 1
        return M


class Partition(MaskKind):
    name = "partition"

    def sample(self, p, keep, m, seed, k):
        # IST: a random permutation cut into p near-equal chunks
        M = np.zeros((p, m), dtype=np.uint8)
        for l, chunk in enumerate(np.array_split(stream(seed, MASK, k).permutation(m), p)):
            M[l, chunk] = 1
        return M


class Full(MaskKind):
    name = "full"

    def keep(self, p):
        return 1.0

    def auto_subnets(self, ranks):
        return 1

    def problem(self, p):
        return None if p == 1 else f"masks.kind = 'full' means one subnetwork, but masks.subnets = {p}; " \
                                   f"set masks.subnets = 1"

    def sample(self, p, keep, m, seed, k):
        return np.ones((p, m), dtype=np.uint8)


KINDS = {kind.name: kind for kind in (Bernoulli(), Categorical(), Partition(), Full())}


def sample(kind: str, subnets: int, keep: float, width: int, seed: int, k: int) -> np.ndarray:
    """M_k as uint8 (p x m): M[l, r] = 1 when subnetwork l holds neuron r in round k."""
    if kind not in KINDS:
        raise ValueError(f"unknown mask kind {kind!r}")
    return KINDS[kind].sample(subnets, keep, width, seed, k)


class Round:
    """Round k's masks as one rank uses them: each subnetwork's active neurons (sorted), N_r of
    the neurons the rank owns, and the whole p x m matrix when it is recorded."""

    def __init__(self, cfg, layout, k: int):
        mk = cfg.masks
        self.M = sample(mk.kind, mk.subnets, mk.keep, layout.width, cfg.train.seed, k)
        self._rows = [np.flatnonzero(row) for row in self.M]
        self.counts = self.M[:, layout.lo:layout.hi].sum(axis=0, dtype=np.int64)   # N_r of the owned neurons
        self.disjoint = KINDS[mk.kind].disjoint

    def rows(self, l: int) -> np.ndarray:
        """Subnetwork l's active neurons, sorted."""
        return self._rows[l]

    def matrix(self) -> np.ndarray:
        return self.M


def minibatches(n: int, batch_size: int, local_steps: int, seed: int, k: int, subnet: int) -> np.ndarray:
    """Sample indices for each local step of one subnetwork in round k (local_steps x batch_size), without
    replacement within a step; (local_steps x 0) means full batch."""
    if batch_size == 0:
        return np.zeros((local_steps, 0), dtype=np.int64)
    rng = stream(seed, BATCH, k, subnet)
    return np.stack([np.sort(rng.choice(n, batch_size, replace=False)) for _ in range(local_steps)])
