"""`deqdist info`: versions, backend, devices, processes, and the mesh a config would build here.

Launchers run it as their preflight: it exits 2 with one line (a ConfigError)
when the requested platform is missing or the config's mesh or layout cannot be
built on these devices, before any training process starts.
"""
from __future__ import annotations

import collections
import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Sequence

from deqdist.main.args import CONFIG_HELP, add_distributed, add_overrides, init_distributed

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect(config_path: str | None, run_dir: str | None, overrides: Sequence[str]) -> dict:
    import jax

    from deqdist.config import load_config
    from deqdist.train import resume
    from deqdist.train.mesh import build_mesh
    from deqdist.runtime.platform import require_backend
    from deqdist.train.state import state_spec

    devices = require_backend()
    if run_dir is not None:
        cfg, _ = resume.resolve_for_train(config_path, Path(run_dir), overrides)
    else:
        cfg = load_config(config_path, overrides)
    cfg.data.per_host_batch(jax.process_count())
    mesh = build_mesh(cfg)
    state_spec(cfg, mesh)  # every sharded dimension divides evenly (ConfigError otherwise)
    local = jax.local_devices()
    return {
        "versions": {"python": platform.python_version(), **{p: _version(p) for p in PACKAGES}},
        "backend": devices[0].platform,
        "platform_version": getattr(devices[0].client, "platform_version", ""),
        "devices": dict(collections.Counter(d.device_kind for d in devices)),
        "device_count": len(devices),
        "local_device_count": len(local),
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "mesh": dict(mesh.shape),
        "global_batch_size": cfg.data.global_batch_size,
        "per_host_batch": cfg.data.per_host_batch(jax.process_count()),
    }


def render(info: dict) -> str:
    v = info["versions"]
    kinds = ", ".join(f"{n} x {k}" for k, n in info["devices"].items())
    return "\n".join([
        "versions: " + " ".join(f"{k} {val}" for k, val in v.items() if val is not None),
        f"backend: {info['backend']} ({info['platform_version'].splitlines()[0] if info['platform_version'] else '-'})",
        f"devices: {info['device_count']} ({kinds}); {info['local_device_count']} on this process",
        f"process: {info['process_index']} of {info['process_count']}",
        "mesh: " + " x ".join(f"{k}={n}" for k, n in info["mesh"].items())
        + f" (global batch {info['global_batch_size']}, {info['per_host_batch']} per process)",
    ])


def run_info(config_path: str | None, run_dir: str | None, overrides: Sequence[str], as_json: bool) -> int:
    info = collect(config_path, run_dir, overrides)
    print(json.dumps(info) if as_json else render(info), flush=True)
    return 0


def add_parser(commands) -> None:
    p = commands.add_parser("info", help="versions, devices, processes and the mesh a config would build here",
                            description="Versions, backend, devices, processes and the mesh a config would "
                            "build here; exits 2 with one line if it cannot (launchers run it as their preflight).")
    p.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    p.add_argument("--run-dir", metavar="DIR", help="resolve the config as `deqdist train --run-dir DIR` would")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    add_overrides(p)
    add_distributed(p)
    p.set_defaults(run=run)


def run(args) -> int:
    init_distributed(args)
    return run_info(args.config, args.run_dir, args.overrides, args.json)
