"""The one exception type users see.

Anything raised as `UserInputError` is a mistake in what the user asked for (a bad field, a missing
file) and is shown as one clear line naming the field, in the CLI and in the browser alike; every
other exception is a bug and keeps its traceback for the logs.
"""


class UserInputError(ValueError):
    """A bad value, file or request from the user; `str(err)` is the whole message to show."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field
