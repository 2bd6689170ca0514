"""The user error of `deqdist prepare` (a `UserError`: one line, exit code 2)."""
from deqdist.errors import UserError

PIP_HINT = "pip install 'deqdist[prepare]'"


class PrepareError(UserError):
    """An input, tokenizer or prepared directory that cannot be used as asked."""


def require(module: str, what: str):
    """Import an optional dependency of the `prepare` extra, or say in one line how to get it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise PrepareError(f"{what} needs the Python package {module!r}; install it with: {PIP_HINT}") from None
