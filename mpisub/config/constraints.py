"""Declarative constraints on config values (after scikit-learn's parameter constraints): a rule
says which values of a key's type the key takes (`holds`) and, for one it does not, the message
(`problem`). config.RULES gives every key one."""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Interval:
    """A number in [low, high] (None: unbounded); `open_low` excludes low itself. NaN and inf are
    never in range (after scikit-learn's Interval)."""
    low: float | None
    high: float | None = None
    open_low: bool = False

    def holds(self, v: Any) -> bool:
        return not (isinstance(v, float) and not math.isfinite(v)) and \
            (self.low is None or (v > self.low if self.open_low else v >= self.low)) and \
            (self.high is None or v <= self.high)

    def problem(self, key: str, v: Any) -> str:
        span = f"{'(' if self.open_low else '['}{self.low}, {'inf' if self.high is None else self.high}]"
        return f"{key} = {v!r} is out of range: must be in {span}"


@dataclass(frozen=True)
class Options:
    """One of a few strings."""
    choices: tuple

    def holds(self, v: Any) -> bool:
        return v in self.choices

    def problem(self, key: str, v: Any) -> str:
        close = difflib.get_close_matches(str(v), self.choices, n=1, cutoff=0.6)
        return f"{key} = {v!r} is not one of {', '.join(self.choices)}" + \
            (f"; did you mean {close[0]!r}?" if close else "")


@dataclass(frozen=True)
class Anything:
    """Any value of the key's type (a path, a name, a flag): checked where it is used."""

    def holds(self, v: Any) -> bool:
        return True

    def problem(self, key: str, v: Any) -> str:  # pragma: no cover (holds is always true)
        return ""


ANY, POSITIVE, COUNT, SEED = Anything(), Interval(1), Interval(0), Interval(0, 2**63 - 1)
