"""The one exception type for bad data (a `UserError`, so the CLI maps it to exit code 2)."""
from deqdist.errors import UserError


class DataError(UserError):
    """A corpus or data setting is unusable.

    The message says what is wrong (naming the path or number involved) and how
    to fix it, because it is shown to the user as is.
    """
