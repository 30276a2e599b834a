"""What a run reports, through one narrow interface (after PyTorch Lightning's loggers).

Rank 0 holds the real loggers, the run file (store.RunFile) and TensorBoard (tboard.TensorBoard);
the other ranks hold none. W's rows never pass through a logger: every rank writes its own shard
(shards.py), and `log_weights` and `log_checkpoint` get the shards' names, bounds and digests,
which the keeper of the weights points its files at. A new output writer is one Logger subclass and one line in
start.loggers_for (docs/design.md, section 5, "Where a change goes").
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mpisub._util.errors import UserError, cause

if TYPE_CHECKING:  # types only: never imported at run time
    from typing import Any

    import numpy as np

    from mpisub.io.shards import Shard


class Logger:
    """The interface, and the logger that records nothing. `keeps_weights`: it points its files at
    W's shards and writes the checkpoints' manifests; at most one logger of a run does."""
    keeps_weights = False

    def log_start(self, start: dict) -> None:
        """The run's fixed facts, once: X, Y, a, W's shape and dtype, the data's source."""

    def log_theory(self, lambda0: float | None, H: np.ndarray | None = None, lambda_max: float | None = None) -> None:
        """The data's NTK lambda_0 and lambda_max (and H, when stored)."""

    def log_loss_init(self, loss: float) -> None:
        """The loss at W_init."""

    def log_round(self, row: dict, masks: np.ndarray | None = None) -> None:
        """One round's metrics row (schema.METRICS), and its masks when recorded."""

    def log_eval(self, row: dict) -> None:
        """One evaluation of the full network (schema.EVAL)."""

    def log_weights(self, parts: list[Shard], rounds_done: int, *, init: bool = False) -> None:
        """W_init (init) or the latest W is now the ranks' shards `parts` (rank order)."""

    def log_checkpoint(self, parts: list[Shard], state: dict) -> None:
        """A checkpoint of the shards `parts` (all on disk) and `state`: round, loss_init, the
        histories ("metrics", "evals": {column: values})."""

    def log_facts(self, facts: dict) -> None:
        """Facts known at the end: {"peak_rss_mb": per rank, "written_mb": per rank}."""

    def publish(self) -> None:
        """Everything a resumed run's predecessor held is in: the outputs may replace it."""

    def finalize(self, status: str) -> None:
        """The run ended with this status (completed, failed, interrupted). Never raises."""


class Loggers(Logger):
    """Rank 0's loggers as one (an empty list on the other ranks). A write that fails (a full
    disk, a quota, an I/O error) is held, not raised: rank 0 alone knows of it, so it rides as a
    flag in the round's Allreduce and every rank stops together (a raise on rank 0 alone would
    leave the others waiting in a collective). Writes after a failure are skipped, but the blocks
    other ranks send are still received."""

    def __init__(self, loggers: list[Logger]):
        self.loggers = loggers
        self.error: OSError | RuntimeError | None = None
        self.last_checkpoint: int | None = None  # rounds done at the last checkpoint on disk (rank 0 knows)

    def _guard(self, call) -> None:
        if self.error is not None:
            return
        try:
            call()
        except (OSError, RuntimeError) as e:  # h5py reports failed writes as either
            self.error = e

    def _each(self, call) -> None:
        self._guard(lambda: [call(logger) for logger in self.loggers])

    def log_start(self, start: dict[str, Any]) -> None:
        self._each(lambda logger: logger.log_start(start))

    def log_theory(self, lambda0: float | None, H: np.ndarray | None = None, lambda_max: float | None = None) -> None:
        self._each(lambda logger: logger.log_theory(lambda0, H, lambda_max))

    def log_loss_init(self, loss: float) -> None:
        self._each(lambda logger: logger.log_loss_init(loss))

    def log_round(self, row: dict[str, Any], masks: np.ndarray | None = None) -> None:
        self._each(lambda logger: logger.log_round(row, masks))

    def log_eval(self, row: dict[str, Any]) -> None:
        self._each(lambda logger: logger.log_eval(row))

    def log_facts(self, facts: dict[str, Any]) -> None:
        self._each(lambda logger: logger.log_facts(facts))

    def publish(self) -> None:
        self._each(lambda logger: logger.publish())

    def _keeper(self) -> Logger | None:
        return next((logger for logger in self.loggers if logger.keeps_weights), None)

    def log_weights(self, parts: list[Shard], rounds_done: int, *, init: bool = False) -> None:
        if (keeper := self._keeper()) is not None:
            self._guard(lambda: keeper.log_weights(parts, rounds_done, init=init))

    def log_checkpoint(self, parts: list[Shard], state: dict) -> None:
        if (keeper := self._keeper()) is not None:
            self._guard(lambda: keeper.log_checkpoint(parts, state))
            if self.error is None:
                self.last_checkpoint = int(state["round"])

    def hold(self, error: OSError | RuntimeError) -> None:
        """Another rank's failed write (its shard), held as one of rank 0's own."""
        if self.error is None:
            self.error = error

    def finalize(self, status: str) -> None:
        for logger in self.loggers:
            logger.finalize(status)

    @property
    def failed(self) -> float:
        return float(self.error is not None)

    def failure(self, rounds_done: int, folder: str) -> UserError:
        why = cause(self.error) if self.error is not None else "on rank 0"
        kept = (f"the last good checkpoint (round {self.last_checkpoint}) is kept: free space, then continue "
                f"with --resume {folder}") if self.last_checkpoint is not None else \
            "no checkpoint was written: free space, then start the run again"
        return UserError(f"output.dir {folder!r}: writing the run file or checkpoint failed "
                         f"({why}) after round {rounds_done}; the run stopped; {kept}")
