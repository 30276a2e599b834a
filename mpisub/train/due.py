"""What is due after a round (an evaluation, the weights, a checkpoint, a progress line) and how
the progress line reads (docs/design.md, "Evaluation cadence")."""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: never imported at run time
    from mpisub.config import Config


class Due:
    """An evaluation of the full network every output.eval_every rounds; a log line every
    output.log_every rounds (by default a multiple of eval_every, so logged rounds show the loss);
    a checkpoint (and with it the run file's W) every output.checkpoint_every rounds and, with
    output.checkpoint_seconds, once that many seconds have passed since the last; all after the
    last round, and all but the evaluation at a stop."""

    def __init__(self, cfg: Config):
        self.rounds, self.first, self.t0 = cfg.train.rounds, 0, time.perf_counter()
        self.eval_every = cfg.output.eval_every or 1
        # by default about 20 lines a run, at evaluated rounds (a multiple of eval_every)
        self.log_every = cfg.output.log_every or -(-max(1, self.rounds // 20) // self.eval_every) * self.eval_every
        self.checkpoint_every = cfg.output.checkpoint_every
        self.checkpoint_seconds, self.checkpointed_at = cfg.output.checkpoint_seconds, time.monotonic()
        self.digits = len(str(self.rounds))
        self.logged = False

    def evaluate(self, done: int) -> bool:
        """The same rounds in a resumed run as in an unbroken one (the launch's first is not special)."""
        return done == self.rounds or done % self.eval_every == 0

    def checkpoint(self, done: int, stop: bool, timed: bool = False) -> bool:
        """`timed`: output.checkpoint_seconds have passed since the last one (rank 0's clock, which
        every rank hears in the round's Allreduce)."""
        return stop or timed or done == self.rounds or done % self.checkpoint_every == 0

    def clock(self, rank: int) -> float:
        """1.0 on rank 0 when output.checkpoint_seconds have passed since the last checkpoint began."""
        late = self.checkpoint_seconds > 0 and time.monotonic() - self.checkpointed_at >= self.checkpoint_seconds
        return float(rank == 0 and late)

    def checkpointed(self) -> None:
        self.checkpointed_at = time.monotonic()

    def log(self, done: int, stop: bool) -> bool:
        first, self.logged = not self.logged, True  # the first round of a launch is always shown
        return first or stop or done == self.rounds or done % self.log_every == 0

    def begin(self, first: int) -> None:
        """The launch trains from round `first`: progress counts from here and now."""
        self.first, self.t0 = first, time.perf_counter()

    def progress(self, done: int) -> str:
        """Elapsed time of this launch, rounds per second and the time left at that rate."""
        elapsed = time.perf_counter() - self.t0
        rate = (done - self.first) / elapsed if elapsed > 0 else 0.0
        left = (self.rounds - done) / rate if rate > 0 else 0.0
        return f"elapsed {_duration(elapsed)}  {rate:.3g} rounds/s  ETA {_duration(left)}"

    def line(self, row: dict, scores: dict | None) -> str:
        """A round's progress line: the full network's loss (dashes in a round without an
        evaluation) and held-out scores, the subnetworks' loss, times, bytes and progress."""
        shown = f"{scores['loss']:.4e}" if scores is not None else "-" * 10
        held = "".join(f"  {name} {scores[name]:.4g}" for name in ("test_loss", "train_acc", "test_acc")
                       if scores is not None and not math.isnan(scores[name]))
        done = row["round"]
        return (f"round {done:>{self.digits}}/{self.rounds}  loss {shown}{held}  sub_loss {row['sub_loss']:.4e}  "
                f"compute {row['seconds_compute']:.3f}s  comm {row['seconds_comm']:.3f}s  "
                f"sent {row['bytes_comm'] / 1e6:.2f} MB  {self.progress(done)}")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes}m{s:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"
