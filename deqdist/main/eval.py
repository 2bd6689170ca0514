"""`deqdist eval`: valid/test metrics of a run's newest checkpoint."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from deqdist.main.args import OVERRIDES_HELP, add_distributed, add_overrides, check_positive, init_distributed


def add_parser(commands) -> None:
    p = commands.add_parser("eval", help="valid/test metrics of a run's latest checkpoint",
                            description="Valid/test metrics of a run's latest checkpoint (DEQ mode).")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--split", choices=["valid", "test", "both"], default="both")
    p.add_argument("--batches", type=int, metavar="N",
                   help="global batches per split (default: data.eval_batches / train.test_batches)")
    add_overrides(p, OVERRIDES_HELP + " (not model shapes)")
    add_distributed(p)
    p.set_defaults(run=run)


def run(args) -> int:
    init_distributed(args)
    check_positive("--batches", args.batches)
    splits = ("valid", "test") if args.split == "both" else (args.split,)
    return run_eval(args.run_dir, args.overrides, splits=splits, batches=args.batches)


def run_eval(run_dir: Path, overrides: Sequence[str], *, splits: Sequence[str], batches: int | None) -> int:
    from deqdist.store import rundir
    from deqdist.store.rundir import finite_or_null
    from deqdist.train import resume
    from deqdist.train.evaluate import coverage, evaluate, fixed_point_steps, reversible_note
    from deqdist.train.loop import load_data, open_run, say
    from deqdist.train.metrics import summary

    run_dir = Path(run_dir)
    cfg = resume.resolve_for_run(run_dir, overrides)
    corpus = load_data(cfg)
    rundir.check_corpus(run_dir, corpus.info())
    session, state, step = open_run(run_dir, overrides)
    # A reversible model is scored as it ran (its coupled steps, on windows) and, for comparison, at
    # the fixed point solver.fwd finds for the same parameters.
    fixed_point = fixed_point_steps(session.steps) if cfg.solver.grad == "reversible" else None
    try:
        out = {"step": step}
        for split in splits:
            default = cfg.data.eval_batches if split == "valid" else cfg.train.test_batches
            mb = batches if batches is not None else default
            res = evaluate(session.steps, state["params"], corpus, cfg, split, mode="deq", max_batches=mb)
            out[split] = res
            how = f", {reversible_note(cfg)}" if fixed_point else ""
            say(f"step {step} {split} ({res['batches']} batches, {int(res['tokens']):,} tokens, {coverage(res)}{how}): "
                f"{summary(res, ('loss', 'bpb', 'ppl', 'fwd_iters', 'fwd_hit_max'))}")
            if fixed_point is not None:
                res["fixed_point"] = fp = evaluate(fixed_point, state["params"], corpus, cfg, split, max_batches=mb)
                say(f"step {step} {split} at the fixed point ({cfg.solver.fwd.method}, tol {cfg.solver.fwd.tol:g}): "
                    f"{summary(fp, ('loss', 'bpb', 'ppl', 'fwd_iters', 'fwd_hit_max'))}")
        say(json.dumps(finite_or_null(out), allow_nan=False))
    finally:
        session.close()
    return 0
