"""The presets: the YAML files in the top-level `configs/` directory, `configs/NAME.yaml`.

A preset is defined only by its file, and the list of presets is the list of
files, so adding one is adding a file. The wheel carries them as package data,
`deqdist/configs/NAME.yaml` (pyproject.toml maps the package `deqdist.configs`
to `configs/`), so an installed deqdist (a wheel, the Docker image) finds them
wherever it runs; a source checkout (editable install, or deqdist on
PYTHONPATH) reads `configs/` beside the package. A `--config` that names no
existing file but a preset's name (`small`, `small.yaml`) means that preset;
in a checkout `configs/small.yaml` is the file itself.
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# Installed from a wheel: package data inside deqdist/. From a source checkout: configs/ beside deqdist/.
DIRECTORY = next((d for d in (_PACKAGE / "configs", _PACKAGE.parent / "configs") if d.is_dir()),
                 _PACKAGE / "configs")
DEFAULT = "tiny"  # the bottom layer of every config (deqdist.config.layers.resolve)


def names() -> list[str]:
    return sorted(p.stem for p in DIRECTORY.glob("*.yaml"))


def path(name: str) -> Path:
    """The file of preset `name` (ValueError naming the presets if there is none)."""
    if name not in names():
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(names())}")
    return DIRECTORY / f"{name}.yaml"


def find(given: str | Path) -> Path | None:
    """The preset file a `--config` argument that is not a file names (`small`, `small.yaml`), or None."""
    parts = Path(given).parts
    if len(parts) != 1:
        return None
    stem = parts[0][: -len(".yaml")] if parts[0].endswith(".yaml") else parts[0]
    return DIRECTORY / f"{stem}.yaml" if stem in names() else None
