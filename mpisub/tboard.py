"""TensorBoard event files of a run's per-round metrics (output.tensorboard), written by rank 0
beside run.h5 in <output.dir>/tensorboard: the same numbers as the run file's /metrics rows, for
dashboards that read TensorBoard. TensorBoard is an optional extra: pip install 'mpisub[tensorboard]'."""
import os
import time

from .errors import UserError

FOLDER = "tensorboard"


def check_available() -> None:
    """A UserError before anything is written when output.tensorboard is on without TensorBoard."""
    try:
        import tensorboard.summary.writer.event_file_writer  # noqa: F401
    except ImportError:
        raise UserError("output.tensorboard = true needs TensorBoard: pip install 'mpisub[tensorboard]' "
                        "(or pip install tensorboard), or set output.tensorboard = false") from None


class Events:
    """Scalars by round into one event file of <folder>/tensorboard (a resumed run adds a file)."""

    def __init__(self, folder: str):
        check_available()
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self.writer = EventFileWriter(os.path.join(folder, FOLDER))

    def scalars(self, step: int, values: dict) -> None:
        summary = self._summary(value=[self._summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()])
        self.writer.add_event(self._event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
