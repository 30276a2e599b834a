"""TensorBoard event files of a run (output.tensorboard), written by rank 0 beside run.h5 in
<output.dir>/tensorboard: every column of the run file's /metrics and /eval rows (schema.py) as a
scalar by round, for dashboards that read TensorBoard. TensorBoard is an optional extra:
pip install 'mpisub[tensorboard]'."""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from mpisub._util.errors import UserError
from mpisub.io.loggers import Logger
from mpisub.io.run_folder import refuse_link

if TYPE_CHECKING:  # types only: never imported at run time
    from typing import Any

    import numpy as np

FOLDER = "tensorboard"
FLUSH_SECONDS = 1.0   # as the run file: rows reach the disk at most this late


def check_available() -> None:
    """A UserError before anything is written when output.tensorboard is on without TensorBoard."""
    try:
        import tensorboard.summary.writer.event_file_writer  # noqa: F401 (lazy: optional, mpisub[tensorboard])
    except ImportError:
        raise UserError("output.tensorboard = true needs TensorBoard: pip install 'mpisub[tensorboard]' "
                        "(or pip install tensorboard), or set output.tensorboard = false") from None


class TensorBoard(Logger):
    """Scalars by round into one event file of <folder>/tensorboard (a resumed run adds a file)."""

    def __init__(self, folder: str):
        check_available()
        from tensorboard.compat.proto import event_pb2, summary_pb2  # lazy: optional
        from tensorboard.summary.writer.event_file_writer import EventFileWriter  # lazy: optional

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        refuse_link(os.path.join(folder, FOLDER), "output.dir")   # its event files go nowhere else
        self.writer = EventFileWriter(os.path.join(folder, FOLDER))
        self.flushed = time.monotonic()

    def _scalars(self, row: dict) -> None:
        values = [self._summary.Value(tag=k, simple_value=float(v)) for k, v in row.items() if k != "round"]
        self.writer.add_event(self._event(wall_time=time.time(), step=int(row["round"]),
                                          summary=self._summary(value=values)))
        if time.monotonic() - self.flushed >= FLUSH_SECONDS:
            self.writer.flush()
            self.flushed = time.monotonic()

    def log_round(self, row: dict[str, Any], masks: np.ndarray | None = None) -> None:
        self._scalars(row)

    def log_eval(self, row: dict[str, Any]) -> None:
        self._scalars(row)

    def finalize(self, status: str) -> None:
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 (finalize never raises: the run file has the numbers)
            pass
