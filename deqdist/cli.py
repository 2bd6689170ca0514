"""`deqdist` command line: train | eval | generate | bench."""
from __future__ import annotations

import argparse
import sys


def _bench(args) -> int:
    if args.what == "solvers":
        from .bench import solvers
        print(solvers.run(repeats=args.repeats))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deqdist", description="Deep Equilibrium Transformers on many devices.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="benchmarks: solvers | model | parallel")
    b.add_argument("what", choices=["solvers"])
    b.add_argument("--repeats", type=int, default=5)
    b.set_defaults(func=_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
