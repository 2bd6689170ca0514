"""The `deqdist` command line: it parses and dispatches, nothing else (`deqdist --help` lists the commands).

Each command is a module of deqdist.main: its `add_parser` declares the command's
argparse parser and binds its `run`, which checks what argparse cannot and runs it.

The library judgement for the CLI: argparse subparsers carry the commands, their
help and the usage errors. tyro and draccus build a CLI from the config
dataclasses, but as `--train.lr 3e-4` flags; deqdist's overrides are
`train.lr=3e-4` positionals shared with YAML layering (deqdist.config), which
neither parses.

Bad input (unknown key, wrong type, bad mesh sizes, missing data, a run
directory that does not fit) is a `deqdist.errors.UserError`: `main` prints its
one line on stderr and exits with 2; nothing is written. A multi-process job
that fails (a peer never joins or is lost) exits with 3 and one line; too many
consecutive non-finite steps exit with 4; `compile` exits with 5 when a train
step does not fit the slice.
"""
from __future__ import annotations

import argparse
import os
import sys

import deqdist.main.bench
import deqdist.main.compile
import deqdist.main.config
import deqdist.main.eval
import deqdist.main.generate
import deqdist.main.info
import deqdist.main.prepare
import deqdist.main.train
from deqdist.errors import UserError
from deqdist.main.args import UsageError, check_utf8
from deqdist.runtime.heap import keep_large_buffers_in_heap

# In the order `deqdist --help` lists them.
COMMANDS = (deqdist.main.train, deqdist.main.eval, deqdist.main.generate, deqdist.main.config, deqdist.main.info,
            deqdist.main.compile, deqdist.main.prepare, deqdist.main.bench)


class _Parser(argparse.ArgumentParser):
    # argparse prints usage and exits on its own; every bad input here is one line and exit 2 instead.
    def error(self, message: str):
        raise UsageError(f"{message}; see `{self.prog} --help`")


def build_parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser (its help lists the commands) and each command's parser by name."""
    top = _Parser(prog="deqdist", description="Deep Equilibrium Transformers on many devices.",
                  epilog="`deqdist COMMAND --help` describes a command.")
    commands = top.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        command.add_parser(commands)
    return top, commands.choices


def _check_args(args) -> None:
    """Text arguments must be UTF-8 (paths too: they are written into the run's files)."""
    for name, value in vars(args).items():
        if isinstance(value, str):
            check_utf8("the run directory" if name == "run_dir" else "--" + name.replace("_", "-"), value)
        elif isinstance(value, list):
            for v in value:
                if isinstance(v, str):
                    check_utf8("override", v)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top, commands = build_parsers()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help(sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    cmd = argv[0]
    keep_large_buffers_in_heap()
    try:
        if cmd not in commands:
            raise UsageError(f"unknown command {cmd!r}; use one of {', '.join(commands)} (deqdist --help)")
        # The command's own parser, not `top`: argparse cannot read a command's options and its
        # key=value overrides intermixed through subparsers.
        args = commands[cmd].parse_intermixed_args(argv[1:])
        _check_args(args)
        code = args.run(args)
    except UserError as e:
        # Text from the user may hold undecodable bytes (surrogates); show them escaped, never fail on them.
        msg = " ".join(str(e).split()).encode("utf-8", "backslashreplace").decode("utf-8")
        prog = f"deqdist {cmd}" if cmd in commands else "deqdist"
        print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)
        return _exit_now(2)
    except Exception as e:
        _peer_failure(e)
        raise
    _distributed().finished()
    return code


def _distributed():
    from deqdist.runtime import distributed

    return distributed


def _exit_now(code: int) -> int:
    """In a multi-process job, skip JAX's exit barrier (it would wait minutes for peers that exit too)."""
    if "jax" in sys.modules and _distributed().joined():
        sys.stdout.flush()
        os._exit(code)
    return code


def _peer_failure(e: Exception) -> None:
    if "jax" in sys.modules and _distributed().joined():
        _distributed().failed(e)


if __name__ == "__main__":
    sys.exit(main())
