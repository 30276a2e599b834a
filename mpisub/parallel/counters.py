"""What a rank spends in collectives and what it moves: the counters that comm.Comm keeps (and the
simulated communicators of the tests keep the same way). The round loop reads and resets them once
per round (metrics seconds_comm, bytes_comm, bytes_recv)."""
import time


class Counted:
    seconds, bytes, bytes_recv, size = 0.0, 0, 0, 1

    def take_counters(self) -> tuple[float, int, int]:
        """(seconds, bytes sent, bytes received) since the last call."""
        out = (self.seconds, self.bytes, self.bytes_recv)
        self.seconds, self.bytes, self.bytes_recv = 0.0, 0, 0
        return out

    def _count(self, t0: float, sent: int, received: int | None = None) -> None:
        """A collective that began at t0 and sent `sent` bytes to other ranks (`received` defaults
        to `sent`: a reduction's buffer goes both ways). Nothing moves at K = 1."""
        self.seconds += time.perf_counter() - t0
        if self.size > 1:
            self.bytes += int(sent)
            self.bytes_recv += int(sent if received is None else received)
