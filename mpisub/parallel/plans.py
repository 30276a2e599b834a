"""How the ranks share a round's work (after mpi4py-fft's `Transfer`: built once, run every round):
steps 1 and 2 of the algorithm, the tau local steps of every subnetwork and the mean per neuron on
its owner (docs/design.md, sections 2 and 3). `train.plan` picks one from PLANS.

- RowsPlan (IST's pattern): a rank trains whole subnetworks; it pulls their rows from their
  owners, steps them, and pushes them back, and each owner averages the copies in subnet order
  (identical bits for every K dividing p).
- OutputsPlan (neurons never move): every rank steps its own rows of every subnetwork; each local
  step sums the ranks' parts of the p subnetworks' outputs in one Allreduce (any K; equal to
  rounding across K).

The collectives are `comm`'s; the local steps are the kernels'; this module holds the bookkeeping.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import repeat
from typing import TYPE_CHECKING

import numpy as np

from mpisub import config
from mpisub.nn import kernels, model
from mpisub.nn.losses import LOSSES
from mpisub.parallel import exchange

if TYPE_CHECKING:  # types only: never imported at run time
    from collections.abc import Callable

    from mpisub.nn.masks import RoundMasks
    from mpisub.parallel.exchange import Exchange


@dataclass
class RoundStats:
    sub_loss_sum: float     # this rank's part of the sum over subnetworks of their losses
    seconds_local: float    # in the local steps' kernels


class _Plan:
    def __init__(self, cfg, layout, comm, sets, a, each=map):
        self.layout, self.comm, self.X, self.Y, self.a, self.each = layout, comm, sets.X, sets.Y, a, each
        real = np.dtype(cfg.model.dtype).type   # scalars in the model's dtype keep float32 kernels in float32
        self.scale = real(model.scale(cfg, cfg.masks.keep))   # the surrogate f_l's 1/xi times the network's scale
        self.lr = real(config.step_size(cfg))
        self.code = LOSSES[cfg.train.loss].code
        self.steps = kernels.local_steps        # a subnetwork's tau steps (the scaling report times the rest)


class RowsPlan(_Plan):
    def round(self, W: np.ndarray, masks: RoundMasks, batches: Callable[[int], np.ndarray]) -> RoundStats:
        """One round in place on this rank's rows W: pull, tau local steps per subnetwork (side by
        side on `each`'s threads), push and average. `masks`: the round's (masks.RoundMasks);
        `batches(l)`: subnetwork l's minibatches."""
        x = exchange.Exchange(masks, self.layout)
        pulled = self.pull(W, x)
        trained = {l: x.rows_of(pulled, l) for l in x.subnets}
        del pulled                          # copied out, or alive as the one subnetwork's rows
        a_l = [exchange.gather(self.a, masks.rows(l)).astype(W.dtype) for l in x.subnets]
        t = time.perf_counter()
        sub_losses = list(self.each(self.steps, trained.values(), a_l, repeat(self.X), repeat(self.Y),
                                    repeat(self.scale), repeat(self.lr), [batches(l) for l in x.subnets],
                                    repeat(self.code)))
        seconds_local = time.perf_counter() - t
        self.push(W, trained, x, masks)
        return RoundStats(sum(sub_losses), seconds_local)  # in subnet order, however they ran

    def pull(self, W_own: np.ndarray, x: Exchange) -> np.ndarray:
        """The rows this rank's subnetworks hold from their owners, in the exchange's layout."""
        if self.comm.size == 1:  # it owns them all: one copy, no exchange
            return exchange.gather(W_own, x.pull_index)
        pulled = np.empty((x.pulled_rows, W_own.shape[1]), dtype=W_own.dtype)
        self.comm.alltoall_rows(exchange.gather(W_own, x.pull_index), x.pull_send, pulled, x.pull_recv)
        return pulled

    def push(self, W_own: np.ndarray, trained: dict, x: Exchange, masks: RoundMasks) -> None:
        """In place on W_own: the trained rows go to their owners, which average them (exchange.combine)."""
        if self.comm.size == 1:  # its own rows: average them where they are
            pieces = ((masks.rows(l) - self.layout.lo, trained[l]) for l in x.subnets)
            exchange.combine(W_own, pieces, masks.disjoint, masks.counts)
            return
        send = x.send_buffer(trained)
        trained.clear()  # their rows are in `send` now: free them before the receive buffer exists
        received = np.empty((int(x.push_recv.sum()), W_own.shape[1]), dtype=W_own.dtype)
        self.comm.alltoall_rows(send, x.push_send, received, x.push_recv)
        del send
        exchange.combine(W_own, [(x.received, received)], masks.disjoint, masks.counts)


class OutputsPlan(_Plan):
    def round(self, W: np.ndarray, masks: RoundMasks, batches: Callable[[int], np.ndarray]) -> RoundStats:
        """One round in place on this rank's rows W: every rank steps its own rows of every
        subnetwork (one working copy per holding subnetwork); each local step sums the ranks'
        parts of the p subnetworks' outputs with one Allreduce, then each rank takes the gradient
        step of its rows from the whole residual."""
        lo, hi = self.layout.lo, self.layout.hi
        p, (n, c), d = self.layout.subnets, self.Y.shape, self.X.shape[1]
        mine = masks.owned_rows()                             # each subnetwork's owned rows
        W_l = [exchange.gather(W, i) for i in mine]              # working copies of this rank's rows
        aT_l = [np.ascontiguousarray(self.a[lo:hi][i].T, dtype=W.dtype) for i in mine]
        every = [batches(l) for l in range(p)]
        tau, nb = every[0].shape[0], every[0].shape[1] or n
        out = np.empty((p, nb, c), dtype=W.dtype)
        A, G = zip(*(kernels.workspaces(len(i), d, nb, W.dtype) for i in mine))
        step = np.float64(self.lr) * np.float64(self.scale) / nb
        seconds_local, sub_losses = 0.0, []
        for t in range(tau):
            Xb = [self.X if not every[l].shape[1] else self.X[every[l][t]] for l in range(p)]
            Yb = [self.Y if not every[l].shape[1] else self.Y[every[l][t]] for l in range(p)]
            t0 = time.perf_counter()
            list(self.each(kernels.part_forward, Xb, W_l, aT_l, repeat(self.scale), A, out))
            seconds_local += time.perf_counter() - t0
            self.comm.sum(out)                                # the subnetworks' outputs, whole
            t0 = time.perf_counter()
            # the residuals, in place; sub_loss as plan rows has it: the losses of this forward pass
            sub_losses = [kernels.residual(out[l], Yb[l], self.code) for l in range(p)]
            list(self.each(kernels.part_backward, Xb, out, W_l, aT_l, repeat(step), A, G))
            seconds_local += time.perf_counter() - t0
        del A, G, out                                         # before the combine's sum buffer exists
        exchange.combine(W, zip(mine, W_l), masks.disjoint, masks.counts)
        # every rank has all p losses; the round loop sums this over the ranks: rank 0 alone counts them
        return RoundStats(sum(sub_losses) if self.comm.rank == 0 else 0.0, seconds_local)


PLANS: dict[str, type[RowsPlan] | type[OutputsPlan]] = {"rows": RowsPlan, "outputs": OutputsPlan}
