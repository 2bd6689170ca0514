"""`deqdist bench WHAT`: run one benchmark module of deqdist.bench and print its report."""
from __future__ import annotations

import importlib
import importlib.util
import inspect

from deqdist import presets
from deqdist.main.args import OVERRIDES_HELP, UsageError, add_overrides, check_positive

BENCHES = ("solvers", "model", "parallel", "generate", "integrity", "lm", "prepare")
_OPTIONS = ("repeats", "preset", "batch", "steps", "run_dir", "seeds", "models")


def add_parser(commands) -> None:
    p = commands.add_parser("bench", help="benchmarks", description="Benchmarks; integrity is the cost of the "
                            "finite-step guard and checkpoint checksums, lm trains the DEQ and its explicit twin.")
    p.add_argument("what", choices=BENCHES)
    p.add_argument("--repeats", type=int, help="timing repeats (solvers, model, parallel, integrity)")
    p.add_argument("--preset", choices=presets.names(), help="model preset (model, parallel, integrity, lm)")
    p.add_argument("--batch", type=int, help="batch size (model, parallel, integrity)")
    p.add_argument("--steps", type=int, help="training steps of each model (lm; default: the preset's)")
    p.add_argument("--seeds", type=int, help="lm: seeds per model, for mean and spread (default 3)")
    p.add_argument("--models", metavar="A,B", help="lm: which models to train (default all: deq, explicit, "
                   "explicit-xk, reversible-4, reversible-6, reversible-8)")
    p.add_argument("--run-dir", metavar="DIR", help="a run's latest checkpoint: trained parameters (generate, "
                   "model), a batch drawn through it (parallel); lm: keep the two runs in DIR/deq and DIR/explicit")
    add_overrides(p, "lm: " + OVERRIDES_HELP + " (both runs)")
    p.set_defaults(run=run)


def run(args) -> int:
    name = f"deqdist.bench.{args.what}"
    if importlib.util.find_spec(name) is None:
        raise UsageError(f"`deqdist bench {args.what}` is not available in this build ({name} is missing)")
    from deqdist.runtime.platform import skip_absent_tpu

    skip_absent_tpu()
    mod = importlib.import_module(name)
    accepted = inspect.signature(mod.run).parameters
    kwargs = {}
    for k in _OPTIONS:
        v = getattr(args, k)
        if v is None:
            continue
        if isinstance(v, int):
            check_positive(f"--{k}", v)
        if k not in accepted:
            raise UsageError(f"`deqdist bench {args.what}` takes no --{k.replace('_', '-')}")
        kwargs[k] = v
    if args.overrides:
        if "overrides" not in accepted:
            raise UsageError(f"`deqdist bench {args.what}` takes no key=value overrides")
        kwargs["overrides"] = args.overrides
    print(mod.run(**kwargs))
    return 0
