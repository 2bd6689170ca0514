"""The one root of user errors: bad input that the CLI reports in one line with exit code 2.

Every part raises its own subclass (`ConfigError`, `DataError`, `RunDirError`,
`UsageError`, ...) so callers can tell them apart, and `deqdist.cli.main` maps
the root to exit 2 in one place. The message is shown to the user as is, so it
says what is wrong and how to fix it, on one line.
"""


class UserError(ValueError):
    """Bad input from the user (a value, file, directory or command line); the message is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
