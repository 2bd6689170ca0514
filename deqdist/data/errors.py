"""The one exception type for bad data, so the CLI can map it to exit code 2."""


class DataError(ValueError):
    """A corpus or data setting is unusable.

    The message is a single line that says what is wrong (naming the path or
    number involved) and how to fix it, because it is shown to the user as is.
    """

    def __init__(self, message: str):
        # One line keeps CLI output and log greps readable.
        super().__init__(" ".join(str(message).split()))
