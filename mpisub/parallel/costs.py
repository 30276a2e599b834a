"""The alpha-beta costs of MPICH's collectives (Thakur, Rabenseifner & Gropp) on a 200 Gb/s link:
the one cost model that the plan choice (resources.choose_plan) and the scaling report use."""
import math

ALPHA = 1.5e-6       # seconds per message
BETA = 1 / 25e9      # seconds per byte


def alltoallv(ranks: int, one_way: float) -> float:
    """Seconds of a pairwise Alltoallv in which a rank sends (and receives) `one_way` bytes."""
    return (ranks - 1) * ALPHA + one_way * BETA if ranks > 1 else 0.0


def allreduce(ranks: int, nbytes: float) -> float:
    """Seconds of an Allreduce of `nbytes` (Rabenseifner: reduce-scatter, then allgather)."""
    return 2 * math.log2(ranks) * ALPHA + 2 * (ranks - 1) / ranks * nbytes * BETA if ranks > 1 else 0.0


def allgatherv(ranks: int, total: float) -> float:
    """Seconds of a ring Allgatherv of `total` bytes in all."""
    return (ranks - 1) * ALPHA + (ranks - 1) / ranks * total * BETA if ranks > 1 else 0.0
