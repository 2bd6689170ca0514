"""deqdist.config.schema: the presets validate, bad values and settings are one-line errors, a saved
config round-trips, shape conflicts are named."""
import pytest

from deqdist import presets
from deqdist.config import ConfigError, diff, load_config, shape_conflicts

CONFIGS = presets.DIRECTORY


@pytest.mark.parametrize("name", ["tiny", "small", "medium", "large"])
def test_presets_load_and_validate(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.data.seq_len == cfg.model.seq_len
    assert cfg.data.vocab_size == cfg.model.vocab_size


def test_medium_is_the_100m_model():
    cfg = load_config(CONFIGS / "medium.yaml")
    assert cfg.model.param_count() > 99e6


def test_large_is_the_1b_model():
    cfg = load_config(CONFIGS / "large.yaml")
    assert 0.95e9 < cfg.model.param_count() < 1.05e9 and cfg.model.vocab_size == 32768


@pytest.mark.parametrize("overrides, message", [
    (["train.steps=abc"], r"train.steps must be an integer, got 'abc'"),
    (["train.steps=1.5"], r"train.steps must be an integer, got 1.5"),
    (["train.lr=fast"], r"train.lr must be a number"),
    (["checkpoint.async_save=maybe"], r"checkpoint.async_save must be true/false"),
    (["model.d_model=65"], r"model.d_model \(65\) must be divisible by model.n_heads \(2\)"),
    (["solver.method=newton"], r"solver.fwd: solver method 'newton' is unknown; use one of broyden"),
    (["data.seq_len=0"], r"seq_len must be a positive integer"),
    (["train.schedule=exp"], r"train.schedule must be one of cosine, linear, constant"),
    (["train.warmup_explicit_steps=1000"], r"exceeds train.steps"),
    (["parallel.tensor=0"], r"parallel.tensor must be a positive size or -1"),
    (["parallel.rules=[[batch, gpu]]"], r"unknown mesh axis"),
    (["data.split_fractions=[0.5, 0.5]"], r"data.split_fractions must be a list of 3 items"),
    (["logging.progress=fancy"], r"logging.progress must be one of auto, bar, lines, off"),
])
def test_bad_values_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(None, overrides)
    assert "\n" not in str(e.value)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(CONFIGS / "small.yaml", ["solver.max_iter=20", "parallel.tensor=2"])
    cfg.save(tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg and not diff(cfg, again)


@pytest.mark.parametrize("override, message", [
    ("train.n_unroll=0", r"train.n_unroll must be a positive integer"),
    ("model.n_unroll=0", r"train.n_unroll must be a positive integer"),
    ("train.jac_reg_every=-1", r"train.jac_reg_every must be an integer >= 0"),
    ("train.jac_reg_weight=-1", r"train.jac_reg_weight must be >= 0"),
    ("model.n_unrol=3", r"unknown key 'model.n_unrol'"),
])
def test_trainer_settings_are_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_shape_conflicts_name_the_settings():
    a = load_config(None)
    b = load_config(None, ["model.d_model=128", "solver.max_iter=40"])
    assert shape_conflicts(a, b) == ["model.d_model: 64 (saved) vs 128 (new)"]
    assert "solver.fwd.max_iter: 30 -> 40" in diff(a, b)
