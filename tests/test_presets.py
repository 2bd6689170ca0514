"""The presets are the YAML files in deqdist/configs: their names, their paths, `--config NAME`."""
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
    ("small", "small"), ("small.yaml", "small"), ("configs/small.yaml", "small"),
    ("huge", None), ("configs/huge.yaml", None), ("elsewhere/small.yaml", None), ("/configs/small.yaml", None),
    ("configs/sub/small.yaml", None),
])
def test_find_reads_a_config_argument_as_a_preset(given, name):
    assert presets.find(given) == (None if name is None else presets.DIRECTORY / f"{name}.yaml")
