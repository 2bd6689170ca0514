"""The presets: YAML files shipped inside the package, `deqdist/configs/NAME.yaml`.

A preset is defined only by its file, and the list of presets is the list of
files, so adding one is adding a file. Being package data, they are found by an
installed deqdist (a wheel, the Docker image) wherever it runs. A `--config`
that names no existing file but a preset (`small`, `small.yaml`,
`configs/small.yaml`, the path in a source checkout before the files moved)
means that preset.
"""
from __future__ import annotations

from pathlib import Path

DIRECTORY = Path(__file__).resolve().parent / "configs"
DEFAULT = "tiny"  # the bottom layer of every config (deqdist.config.resolve)


def names() -> list[str]:
    return sorted(p.stem for p in DIRECTORY.glob("*.yaml"))


def path(name: str) -> Path:
    """The file of preset `name` (ValueError naming the presets if there is none)."""
    if name not in names():
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(names())}")
    return DIRECTORY / f"{name}.yaml"


def find(given: str | Path) -> Path | None:
    """The preset file a `--config` argument that is not a file names, or None."""
    parts = Path(given).parts
    if len(parts) == 2 and parts[0] == "configs":
        parts = parts[1:]
    if len(parts) != 1:
        return None
    stem = parts[0][: -len(".yaml")] if parts[0].endswith(".yaml") else parts[0]
    return DIRECTORY / f"{stem}.yaml" if stem in names() else None
