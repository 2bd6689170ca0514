"""What the commands' parsers share: the usage error, overrides, multi-host flags, argument checks."""
from __future__ import annotations

import argparse

from deqdist import presets
from deqdist.errors import UserError

OVERRIDES_HELP = "dotted overrides, e.g. solver.max_iter=20 train.steps=100 parallel.tensor=4"
CONFIG_HELP = "YAML config file or preset name (" + ", ".join(presets.names()) + ")"


class UsageError(UserError):
    """A command line that argparse or a command's own checks refuse."""


def add_overrides(p: argparse.ArgumentParser, help_text: str = OVERRIDES_HELP) -> None:
    # default=[] keeps argparse from counting the (optional) overrides among the required arguments.
    p.add_argument("overrides", nargs="*", default=[], metavar="key=value", help=help_text)


def add_distributed(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("multi-host (one process per host)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0 (env DEQDIST_COORDINATOR)")
    g.add_argument("--num-processes", type=int, metavar="N", help="number of processes (env DEQDIST_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, metavar="I", help="this process's index (env DEQDIST_PROCESS_ID)")
    g.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() and let JAX find the cluster (TPU pods, SLURM)")
    g.add_argument("--init-timeout", type=float, metavar="SECONDS",
                   help="longest wait for the coordinator and every peer (env DEQDIST_INIT_TIMEOUT, default 300)")


def init_distributed(args) -> None:
    """Join the multi-process job the flags (or environment) name, or check the one-process backend."""
    from deqdist.runtime.distributed import maybe_initialize
    from deqdist.runtime.platform import require_backend

    if not maybe_initialize(args.coordinator, args.num_processes, args.process_id, args.distributed,
                            args.init_timeout):
        require_backend()


def check_utf8(what: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{what} is not valid UTF-8 text: {text!r}") from None


def check_positive(flag: str, value: int | None) -> None:
    """UsageError unless value is None or an integer in [1, 2**31)."""
    if value is not None and not 1 <= value < 2**31:
        raise UsageError(f"{flag} must be a positive integer, got {value}")
