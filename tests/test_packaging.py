"""The wheel carries the whole package and the presets: configs/*.yaml as deqdist/configs/*.yaml.

Built offline from a copy of the checkout (no build isolation, no index), so it needs a setuptools
that builds wheels itself (>= 70.1, the `test` extra) or the `wheel` package beside an older one.
"""
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _can_build_wheels() -> bool:
    try:
        version = tuple(int(x) for x in importlib.metadata.version("setuptools").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        return False
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.mark.skipif(not _can_build_wheels(), reason="no offline wheel build: install the test extra "
                    "(setuptools>=70.1)")
def test_the_wheel_holds_every_module_and_the_presets(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("deqdist", "configs"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, timeout=120)
    (wheel,) = (tmp_path / "dist").glob("deqdist-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    presets = {f"deqdist/configs/{p.name}" for p in (REPO / "configs").glob("*.yaml")}
    assert {"deqdist/configs/tiny.yaml", "deqdist/configs/small.yaml", "deqdist/configs/medium.yaml",
            "deqdist/configs/large.yaml"} <= presets
    assert presets <= inside
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "deqdist").rglob("*.py")}
    missing = sorted(modules - inside)
    assert not missing, f"not in the wheel (a sub-package missing from [tool.setuptools] packages?): {missing}"
    assert not any(n.startswith("configs/") for n in inside)  # no top-level `configs` package
