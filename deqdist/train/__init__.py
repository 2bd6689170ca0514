"""The orchestrator: config -> mesh, data, sharded train state, checkpoints -> the loop (see loop.py).

    run_train(config_path, run_dir, overrides)      `deqdist train` (the other commands: deqdist.main)

Modules: state (params + AdamW as one sharded pytree), step (jitted train/eval
steps, finite-step guard), loop (the run), hooks (what runs after each step),
evaluate, metrics (jsonl, TensorBoard, progress), generate (sampling),
resume (which config a run directory resumes with), mesh (the only door to
deqdist.parallel). What persists is deqdist.store; where it runs, deqdist.runtime.
"""
from deqdist.train.loop import run_train

__all__ = ["run_train"]
