"""Sharded, asynchronous checkpoints (docs/design.md, "The checkpoint"): at a checkpoint every rank
copies its own rows and writes them to its own shard in a background thread while the next rounds
train; once every rank's shard is on disk (each round's Allreduce carries the ranks' "still
writing" flags, so all see it in the same round), rank 0 gathers their names and digests and
writes the manifest that makes them one checkpoint, and the shards of the one before go. One is in
flight at a time: the next waits for it, and so do a stop and the run's end. A failed shard write
(a full disk on any rank) reaches rank 0 in that gather and stops every rank as a failed write of
rank 0's does (loggers.Loggers)."""
from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from mpisub._util.errors import cause
from mpisub.io import shards
from mpisub.io.shards import Shard

if TYPE_CHECKING:  # types only: never imported at run time
    import numpy as np

    from mpisub.config import Config
    from mpisub.io.loggers import Loggers
    from mpisub.parallel.communicator import Communicator
    from mpisub.parallel.layout import Layout


class Checkpoints:
    """This rank's part of the run's checkpoints and of the run file's W_init. Every rank calls
    every method at the same point of the run. Without an output folder (in-process tests) it
    writes nothing."""

    def __init__(self, cfg: Config, comm: Communicator, layout: Layout, log: Loggers):
        self.folder, self.comm, self.layout, self.log = cfg.output.dir, comm, layout, log
        self.launch = comm.from_root(secrets.token_hex(4)) if self.folder else ""
        self.writer = shards.Writer()
        self.pending: dict | None = None    # the state of the checkpoint in flight

    def write_init(self, W: np.ndarray) -> None:
        """W_init's rows into this rank's shard, now; the run file's /model/W_init points at them."""
        if not self.folder:
            return
        shard_name = shards.name("W_init", self.launch, self.comm.rank, self.comm.size)
        try:
            result: Shard | Exception = shards.write(self.folder, shard_name, W, self.layout.lo)
        except (OSError, RuntimeError) as e:
            result = e
        parts = self._gather(result)
        if parts is not None:
            self.log.log_weights(parts, 0, init=True)

    def start(self, W: np.ndarray, state: dict, wait: bool = False) -> None:
        """A checkpoint of W after state["round"] rounds (state: also loss_init and the histories,
        copies): the one in flight is committed first, then this rank's shard is written in the
        background, or (`wait`) at once and committed."""
        if not self.folder:
            return
        self.finish()
        shard_name = shards.name("W", self.launch, self.comm.rank, self.comm.size, int(state["round"]))
        self.writer.start(self.folder, shard_name, W, self.layout.lo, copy=not wait)
        self.pending = state
        if wait:
            self.finish()

    @property
    def busy(self) -> float:
        """1.0 while this rank's shard is still being written (a flag for the round's Allreduce)."""
        return float(self.writer.busy)

    def poll(self, writing: float) -> None:
        """After a round's Allreduce: commits the checkpoint in flight once no rank is `writing`."""
        if self.pending is not None and writing == 0:
            self.finish()

    def finish(self) -> None:
        """Waits for this rank's shard; rank 0 writes the manifest once every rank's is on disk."""
        if self.pending is None:
            return
        parts = self._gather(self.writer.wait())
        if parts is not None:
            self.log.log_checkpoint(parts, self.pending)
        self.pending = None

    def _gather(self, result: Shard | Exception | None) -> list[Shard] | None:
        """Every rank's shard, on rank 0 (None elsewhere, and when a rank's write failed: rank 0
        then holds that rank's error)."""
        mine = result if isinstance(result, Shard) else \
            f"rank {self.comm.rank}: {cause(result) if result is not None else 'no shard'}"
        every = self.comm.gather(mine)
        if every is None:
            return None
        failed = [e for e in every if isinstance(e, str)]
        if failed:
            self.log.hold(OSError(f"writing a shard of W failed on {failed[0]}"))
            return None
        return every
