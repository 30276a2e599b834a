"""The one exception type for mistakes a user can fix (config, data, paths)."""


class UserError(Exception):
    """Reported as one line, exit code 2, no traceback. The message names the key or file and the fix."""
