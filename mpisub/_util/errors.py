"""The one exception type for mistakes a user can fix (config, data, paths, environment
variables), the exit codes, the one parser of numeric environment variables, and how a command
other than mpisub-train ends on a user error or Ctrl-C (mpisub-train's protocol is in cli.py)."""
from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:  # types only: never imported at run time
    from collections.abc import Callable

# exit codes (docs/design.md, section 4, "Exit codes"): 2 = a user error, divergence or a failed
# write (disk full), 3 = stopped by SIGTERM/SIGUSR1 (with a checkpoint written: continue with
# --resume; before training: start again), 4 = a rank stopped answering (the watchdog; the last
# checkpoint is whole), 1 = aborted after an exception, 130 = Ctrl-C (128 + SIGINT, as shells say)
EXIT_ABORTED, EXIT_USER, EXIT_INTERRUPTED, EXIT_HUNG, EXIT_CTRL_C = 1, 2, 3, 4, 130


class UserError(Exception):
    """Reported as one line, exit code 2, no traceback. The message names the key or file and the fix."""


def cause(e: BaseException) -> str:
    """An exception's cause as one short line, for a UserError's message."""
    number = getattr(e, "errno", None)
    text = (os.strerror(number) if isinstance(number, int) and number > 0 else None) or \
        getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(text).split())[:200]


def exit_with(prog: str, message: str) -> NoReturn:
    """A console script's end on a user error: one line on stderr, exit code 2. Only *_main calls it."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


class Parser(argparse.ArgumentParser):
    """A command line parser whose mistakes are a UserError (one line, exit 2), not usage and an
    error on two."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see {self.prog} --help)")


def command(prog: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The end of a console script other than mpisub-train: a UserError is one line and exit 2,
    Ctrl-C one line and exit 130, never a traceback."""
    def wrap(main):
        @functools.wraps(main)
        def run(argv=None):
            try:
                return main(argv)
            except UserError as e:
                exit_with(prog, str(e))
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr, flush=True)
                sys.exit(EXIT_CTRL_C)
        return run
    return wrap


# the numeric environment variables mpisub reads: (kind, default, lowest)
ENV_NUMBERS = {"MPISUB_LOCK_WAIT": (float, 10.0, 0), "MPISUB_FAKE_NODE_SIZE": (int, 1, 1),
               "MPISUB_MAX_COUNT": (int, 2**31 - 1, 1), "SLURM_CPUS_PER_TASK": (int, 1, 1),
               "SLURM_STEP_NUM_TASKS": (int, 1, 1)}


def env_number(name: str, unset: float | None = None) -> Any:   # an int or a float, by ENV_NUMBERS
    """An environment variable of ENV_NUMBERS as its number; `unset` when it is unset or empty; a
    UserError naming it when it is not one of its kind (int("²") fails where "²".isdigit() holds),
    not finite, or below its lowest value."""
    kind, example, low = ENV_NUMBERS[name]
    text = os.environ.get(name, "").strip()
    if not text:
        return unset
    try:
        value = kind(text)
        if not math.isfinite(value) or value < low:
            raise ValueError
    except ValueError:
        raise UserError(f"{name} = {text!r} is not {'a whole number' if kind is int else 'a number'} of at least "
                        f"{low}; unset it or give e.g. {example}") from None
    return value


def env_problem() -> str | None:
    """The first numeric environment variable that is not a number of its kind, as a message."""
    for name in ENV_NUMBERS:
        try:
            env_number(name)
        except UserError as e:
            return str(e)
    return None
