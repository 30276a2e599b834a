"""Random streams and the neuron masks M_k in {0,1}^{p x m}, sampled fresh every round.

Every stream is keyed by (seed, purpose, round, subnet), never by rank: every rank derives the
same masks without communicating, and a run gives the same result for any number of ranks.
"""
import numpy as np

# purposes, so that e.g. the data stream and the init stream never coincide
DATA, INIT, MASK, BATCH = 0, 1, 2, 3


def stream(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def sample(kind: str, subnets: int, keep: float, width: int, seed: int, k: int) -> np.ndarray:
    """M_k as uint8 (p x m): M[l, r] = 1 when subnetwork l holds neuron r in round k."""
    p, m = subnets, width
    M = np.zeros((p, m), dtype=np.uint8)
    if kind == "bernoulli":
        # one stream per subnetwork: every entry independently 1 with probability keep
        for l in range(p):
            M[l] = stream(seed, MASK, k, l).random(m) < keep
    elif kind == "categorical":
        # every neuron independently uniform over the p subnetworks
        M[stream(seed, MASK, k).integers(p, size=m), np.arange(m)] = 1
    elif kind == "partition":
        # IST: a random permutation cut into p near-equal chunks
        for l, chunk in enumerate(np.array_split(stream(seed, MASK, k).permutation(m), p)):
            M[l, chunk] = 1
    elif kind == "full":
        M[:] = 1
    else:
        raise ValueError(f"unknown mask kind {kind!r}")
    return M


def minibatches(n: int, batch_size: int, local_steps: int, seed: int, k: int, subnet: int) -> np.ndarray:
    """Sample indices for each local step of one subnetwork in round k (local_steps x batch_size), without
    replacement within a step; (local_steps x 0) means full batch."""
    if batch_size == 0:
        return np.zeros((local_steps, 0), dtype=np.int64)
    rng = stream(seed, BATCH, k, subnet)
    return np.stack([np.sort(rng.choice(n, batch_size, replace=False)) for _ in range(local_steps)])
