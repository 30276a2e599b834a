"""The one exception type for mistakes a user can fix (config, data, paths), and how a command
other than mpisub-train reports one (mpisub-train's protocol is in cli.py)."""
import os
import sys
from typing import NoReturn


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
