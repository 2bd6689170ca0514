"""The orchestrator: config -> mesh, data, sharded train state, checkpoints -> the loop (see loop.py).

    run_train(config_path, run_dir, overrides)      `deqdist train`
    run_eval(run_dir, overrides, splits=..., ...)   `deqdist eval`
    run_generate(run_dir, overrides, prompt=...)    `deqdist generate`

Modules: state (params + AdamW as one sharded pytree), step (jitted train/eval
steps, finite-step guard), evaluate, checkpoint (orbax, checksums, fallback),
metrics (jsonl, TensorBoard, progress), preempt (SIGTERM), generate (sampling),
rundir (layout, resume rules), lock (one trainer per run dir),
mesh (the only door to deqdist.parallel), distributed (multi-host start-up, lost
peers), platform (the requested accelerator or an error), info (`deqdist info`).
"""
from deqdist.train.loop import run_eval, run_generate, run_train

__all__ = ["run_eval", "run_generate", "run_train"]
