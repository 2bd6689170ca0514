"""`deqdist config`: print the config a command line resolves to, as YAML."""
from __future__ import annotations

from deqdist.main.args import CONFIG_HELP, add_overrides


def add_parser(commands) -> None:
    p = commands.add_parser("config", help="print the resolved config",
                            description="Print the resolved config as YAML.")
    p.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    add_overrides(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from deqdist.config import load_config

    print(load_config(args.config, args.overrides).to_yaml(), end="")
    return 0
