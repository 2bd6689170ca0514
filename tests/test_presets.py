"""The presets are the YAML files in configs/ (deqdist/configs/ in a wheel): their names, their paths,
`--config NAME`."""
from pathlib import Path

import pytest

from deqdist import presets


def test_names_are_the_files():
    assert presets.names() == sorted(p.stem for p in presets.DIRECTORY.glob("*.yaml"))
    assert presets.DEFAULT in presets.names()


def test_path_of_a_name_and_of_no_name():
    assert presets.path("small") == presets.DIRECTORY / "small.yaml"
    with pytest.raises(ValueError, match="unknown preset .huge.; choose one of .*tiny"):
        presets.path("huge")


@pytest.mark.parametrize("given, name", [
    ("small", "small"), ("small.yaml", "small"),
    # A path is a path: configs/small.yaml is the file in a checkout, and no preset where there is none.
    ("configs/small.yaml", None), ("huge", None), ("configs/huge.yaml", None), ("elsewhere/small.yaml", None),
    ("/configs/small.yaml", None),
])
def test_find_reads_a_config_argument_as_a_preset(given, name):
    assert presets.find(given) == (None if name is None else presets.DIRECTORY / f"{name}.yaml")


def test_a_source_checkout_reads_the_top_level_configs():
    repo = Path(__file__).resolve().parents[1]
    if not (repo / "configs").is_dir() or Path(presets.__file__).resolve().parent != repo / "deqdist":
        pytest.skip("deqdist is not imported from this checkout")
    assert presets.DIRECTORY == repo / "configs"
