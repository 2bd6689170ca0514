"""Which config a run directory resumes with, and what a resume may change.

With --config FILE the file is the base; otherwise an existing run's
config.yaml is (so `deqdist train --run-dir DIR train.steps=600` extends a run);
otherwise the built-in defaults (the tiny preset). Overrides apply last.
A resume may change anything but the parameter shapes (model.vocab_size,
d_model, n_heads, d_mlp, tie_embeddings, weight_norm, param_dtype) and the
corpus content (deqdist.store.rundir.check_corpus); those are refused before
anything is written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from deqdist.config import Config, ConfigError, load_config, read_yaml, resolve, shape_conflicts
from deqdist.store.rundir import CONFIG, RUNLOG, RunDirError, check_writable, only_start_up_leftovers, read_json


def saved_config(run_dir: Path) -> Config | None:
    p = run_dir / CONFIG
    if not p.is_file():
        return None
    try:
        if not read_yaml(p):
            raise ConfigError("it is empty")
        return load_config(p)
    except ConfigError as e:
        raise RunDirError(f"{p} cannot be loaded ({e}); fix it or use a new --run-dir") from None


def resolve_for_train(config_path: str | None, run_dir: Path, overrides: Sequence[str]) -> tuple[Config, Config | None]:
    """(config to train with, the run dir's saved config or None); refuses foreign or conflicting run dirs."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--run-dir {run_dir} exists and is not a directory")
    saved = saved_config(run_dir)
    if saved is None and run_dir.is_dir() and not only_start_up_leftovers(run_dir):
        raise RunDirError(
            f"--run-dir {run_dir} exists, is not empty and is not a deqdist run (no {CONFIG}); "
            f"choose a new or empty directory"
        )
    if config_path is not None:
        cfg = load_config(config_path, overrides)
    elif saved is not None:
        cfg = resolve([(read_yaml(run_dir / CONFIG), str(run_dir / CONFIG))], overrides)
    else:
        cfg = load_config(None, overrides)
    if saved is not None:
        check_compatible(saved, cfg, run_dir)
        read_json(run_dir / RUNLOG)
    check_writable(run_dir)
    return cfg, saved


def resolve_for_run(run_dir: Path, overrides: Sequence[str]) -> Config:
    """Config of an existing run (for eval / generate) with overrides that keep its shapes."""
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    saved = saved_config(run_dir)
    if saved is None:
        raise RunDirError(f"{run_dir} is not a deqdist run directory (no {CONFIG})")
    cfg = resolve([(read_yaml(run_dir / CONFIG), str(run_dir / CONFIG))], overrides)
    check_compatible(saved, cfg, run_dir)
    return cfg


def check_compatible(saved: Config, new: Config, run_dir: Path) -> None:
    bad = shape_conflicts(saved, new)
    if bad:
        raise RunDirError(
            f"{run_dir} holds a model of another shape: {'; '.join(bad)}; "
            f"use a new --run-dir, or drop these settings to resume"
        )
