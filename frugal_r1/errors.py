"""User-facing errors.

A `UserError` is a mistake the user can fix (bad config, missing file, over-long prompt). The CLI prints
its message on one line and exits with status 2, without a traceback. Everything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input; the message says what to fix."""
