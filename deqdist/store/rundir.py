"""The run directory: what is in it, how its files are written and read, which corpus it was trained on.

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

Every file is written atomically (deqdist.store.atomic) or appended in whole lines
(metrics.jsonl), and config.yaml is the first file written: a directory
without it holds at most a lock and temporaries of a run killed while
starting, and is started again by the same command.

This module knows no config: which config a run directory resumes with is
deqdist.train.resume. A corpus other than the one a run was trained on is
refused here (check_corpus) before anything is written.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from deqdist.store.atomic import TMP_PREFIX, write_atomic
from deqdist.store.lock import LOCK
from deqdist.typed_config import ConfigError

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


def only_start_up_leftovers(run_dir: Path) -> bool:
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



def finite_or_null(obj: Any) -> Any:
    """obj with every NaN / infinity (also nested in dicts and lists) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj
