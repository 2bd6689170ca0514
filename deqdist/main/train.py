"""`deqdist train`: train a new run, or resume one from its newest good checkpoint."""
from __future__ import annotations

from deqdist.main.args import CONFIG_HELP, add_distributed, add_overrides, check_positive, init_distributed


def add_parser(commands) -> None:
    p = commands.add_parser("train", help="train or resume a run",
                            description="Train (or resume) a DEQ-Transformer.")
    p.add_argument("--config", metavar="FILE", help=CONFIG_HELP + "; default: the tiny preset, or RUN_DIR's "
                   "config when resuming")
    p.add_argument("--run-dir", metavar="DIR", help="run directory (default: runs/<config>-<time>); an existing "
                   "one resumes from its latest checkpoint")
    p.add_argument("--stop-after", type=int, metavar="N", help="train at most N steps in this invocation, "
                   "checkpoint and exit 0 (resume later)")
    add_overrides(p)
    add_distributed(p)
    p.set_defaults(run=run)


def run(args) -> int:
    init_distributed(args)
    from deqdist.runtime.distributed import set_run_dir
    from deqdist.train import run_train

    if args.run_dir is not None:
        set_run_dir(args.run_dir)
    check_positive("--stop-after", args.stop_after)
    return run_train(args.config, args.run_dir, args.overrides, stop_after=args.stop_after)
