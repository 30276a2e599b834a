"""Who owns what (after mpi4py-fft's `Pencil`): the neurons a rank owns for the whole run and the
subnetworks it trains, for one rank of K (docs/design.md, section 3). Plain arithmetic, no MPI.

Rank k owns the contiguous neurons [k m / K, (k+1) m / K): its rows of W live there and nowhere
else between rounds. Under plan rows it trains the contiguous subnetworks [k p / K, (k+1) p / K),
so visiting the ranks in order visits the subnetworks in order, whatever K is.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # types only: never imported at run time
    from mpisub.config import Config
    from mpisub.parallel.communicator import RowExchange


@dataclass(frozen=True)
class Layout:
    width: int      # m, neurons
    ranks: int      # K
    rank: int       # this rank, k
    subnets: int    # p

    @classmethod
    def of(cls, cfg: Config, comm: RowExchange) -> "Layout":
        return cls(cfg.model.width, comm.size, comm.rank, cfg.masks.subnets)

    def owned_by(self, rank: int) -> tuple[int, int]:
        """[lo, hi): the neurons `rank` owns."""
        return rank * self.width // self.ranks, (rank + 1) * self.width // self.ranks

    @property
    def lo(self) -> int:
        return self.owned_by(self.rank)[0]

    @property
    def hi(self) -> int:
        return self.owned_by(self.rank)[1]

    @property
    def owned(self) -> int:
        """How many neurons this rank owns."""
        return self.hi - self.lo

    @cached_property
    def bounds(self) -> np.ndarray:
        """The first neuron of every rank, and m: K + 1 numbers (rank k owns bounds[k]:bounds[k+1])."""
        return np.arange(self.ranks + 1, dtype=np.int64) * self.width // self.ranks

    def owners(self, neurons: np.ndarray) -> np.ndarray:
        """The rank that owns each neuron."""
        return np.searchsorted(self.bounds, neurons, side="right") - 1

    def subnets_of(self, rank: int) -> range:
        """The subnetworks `rank` trains under plan rows."""
        return range(rank * self.subnets // self.ranks, (rank + 1) * self.subnets // self.ranks)

    @property
    def my_subnets(self) -> range:
        return self.subnets_of(self.rank)

    def trainer_of(self, subnets: np.ndarray) -> np.ndarray:
        """The rank that trains each subnetwork under plan rows (the inverse of subnets_of)."""
        return (np.asarray(subnets, dtype=np.int64) * self.ranks + self.ranks - 1) // self.subnets
