"""The run directory: what is in it, how a config is resolved against it, what may change on resume.

    RUN_DIR/
      config.yaml      resolved config of the latest invocation (reload: --config RUN_DIR/config.yaml)
      corpus.json      corpus name, kind, sizes, source and sha256 content hash
      run.json         one entry per invocation: start step, devices, mesh, processes, versions
      metrics.jsonl    one JSON object per log step / evaluation ("kind": train | valid | test)
      tb/              TensorBoard event files (scalars "<kind>/<metric>")
      checkpoints/     orbax: <step>/state (params, AdamW, step, RNG) and <step>/data (iterator per process)
      results.json     final test metrics and the generated sample
      logs/            per-process logs of the launchers (launch/), and their .reachable token
      train.lock       the live trainer's flock (host, pid)

Every file is written atomically (deqdist.atomic) or appended in whole lines
(metrics.jsonl), and config.yaml is the first file written: a directory
without it holds at most a lock and temporaries of a run killed while
starting, and is started again by the same command.

Resolution: with --config FILE the file is the base; otherwise an existing run's
config.yaml is (so `deqdist train --run-dir DIR train.steps=600` extends a run);
otherwise the built-in defaults (the tiny preset). Overrides apply last.
A resume may change anything but the parameter shapes (model.vocab_size,
d_model, n_heads, d_mlp, tie_embeddings, weight_norm, param_dtype) and the
corpus content; those are refused before anything is written.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Sequence

from deqdist.atomic import TMP_PREFIX, write_atomic
from deqdist.config import Config, ConfigError, load_config, read_yaml, resolve, shape_conflicts
from deqdist.train.lock import LOCK
from deqdist.train.metrics import finite_or_null

CONFIG = "config.yaml"
CORPUS = "corpus.json"
RUNLOG = "run.json"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
CHECKPOINTS = "checkpoints"
TB = "tb"
LAUNCHER_ENTRIES = {"logs", ".reachable"}  # written by launch/ before the first `deqdist train`


class RunDirError(ConfigError):
    """A run directory that cannot be used as asked (missing, foreign, conflicting)."""


def default_run_dir(config_path: str | None) -> Path:
    """runs/<config>-<date>-<time>, never an existing directory (that would resume it)."""
    stem = Path(config_path).stem if config_path else "tiny"
    base = Path("runs") / f"{stem}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


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


def _only_start_up_leftovers(run_dir: Path) -> bool:
    """True if run_dir holds nothing but what a run killed before writing config.yaml leaves."""
    for p in run_dir.iterdir():
        if p.name == LOCK or p.name.startswith(TMP_PREFIX) or p.name in LAUNCHER_ENTRIES:
            continue
        if p.name == CHECKPOINTS and p.is_dir() and not any(c.name.isdigit() for c in p.iterdir()):
            continue
        return False
    return True


def read_json(path: Path, default: Any = None) -> Any:
    """A run-dir JSON file, or `default` if absent; RunDirError if it is damaged."""
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_bytes())
    except (ValueError, OSError) as e:
        raise RunDirError(f"{path} is damaged ({type(e).__name__}); restore it from a backup or move it aside "
                          f"(deqdist writes it afresh)") from None


def check_writable(run_dir: Path) -> None:
    """RunDirError unless run_dir (or the directory it would be created in) can be written."""
    p = run_dir
    while not p.exists() and p != p.parent:
        p = p.parent
    for d in [p] + [run_dir / CHECKPOINTS] * (run_dir / CHECKPOINTS).is_dir():
        if not d.is_dir():
            raise RunDirError(f"--run-dir {run_dir}: {d} is not a directory")
        if not os.access(d, os.W_OK | os.X_OK):
            raise RunDirError(f"--run-dir {run_dir}: {d} is not writable; choose another --run-dir or fix its "
                              f"permissions")


def resolve_for_train(config_path: str | None, run_dir: Path, overrides: Sequence[str]) -> tuple[Config, Config | None]:
    """(config to train with, the run dir's saved config or None); refuses foreign or conflicting run dirs."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--run-dir {run_dir} exists and is not a directory")
    saved = saved_config(run_dir)
    if saved is None and run_dir.is_dir() and not _only_start_up_leftovers(run_dir):
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


def check_corpus(run_dir: Path, info: dict) -> None:
    old = read_json(run_dir / CORPUS)
    if old is None:
        return
    if not isinstance(old, dict):
        raise RunDirError(f"{run_dir / CORPUS} is damaged (not a JSON object); move it aside (deqdist writes it "
                          f"afresh)")
    if old.get("tokenizer") and old.get("sha256") != info.get("sha256"):
        raise RunDirError(
            f"{run_dir} was trained on the prepared corpus {old.get('name')!r} with fingerprint "
            f"{str(old.get('sha256'))[:16]}, but data.corpus {info.get('source')!r} now has fingerprint "
            f"{str(info.get('sha256'))[:16]} (other text, tokenizer or shards); resume with the corpus it was "
            f"trained on, or use a new --run-dir"
        )
    same_hash = old.get("sha256") and info.get("sha256") and old["sha256"] == info["sha256"]
    if old.get("sha256") and info.get("sha256") and not same_hash:
        raise RunDirError(
            f"{run_dir} was trained on corpus {old.get('name')!r} (sha256 {old['sha256'][:12]}) but data.corpus now "
            f"gives {info.get('name')!r} (sha256 {info['sha256'][:12]}); use a new --run-dir"
        )
    if not same_hash and (old.get("kind"), old.get("sizes")) != (info.get("kind"), info.get("sizes")):
        raise RunDirError(
            f"{run_dir} was trained on corpus {old.get('name')!r} {old.get('sizes')} but data.corpus now gives "
            f"{info.get('name')!r} {info.get('sizes')}; use a new --run-dir"
        )


def append_runlog(run_dir: Path, entry: dict) -> None:
    log = read_json(run_dir / RUNLOG, [])
    log = (log if isinstance(log, list) else []) + [entry]
    write_atomic(run_dir / RUNLOG, json.dumps(log, indent=1) + "\n")


def write_json(path: Path, obj: Any) -> None:
    """Atomically; non-finite floats become null (strict JSON)."""
    write_atomic(path, json.dumps(finite_or_null(obj), indent=1, allow_nan=False) + "\n")

