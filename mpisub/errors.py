"""The one exception type for mistakes a user can fix (config, data, paths)."""
import os


class UserError(Exception):
    """Reported as one line, exit code 2, no traceback. The message names the key or file and the fix."""


def cause(e: BaseException) -> str:
    """An exception's cause as one short line, for a UserError's message."""
    number = getattr(e, "errno", None)
    text = (os.strerror(number) if isinstance(number, int) and number > 0 else None) or \
        getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(text).split())[:200]
