"""deqdist.config.layers: defaults < preset < YAML file < key=value overrides; shorthands, coupled keys,
old names, and bad keys and files as one-line errors."""
import pytest

from deqdist import presets
from deqdist.config import Config, ConfigError, load_config

CONFIGS = presets.DIRECTORY


def test_defaults_are_the_tiny_preset():
    assert load_config(CONFIGS / "tiny.yaml") == load_config(None)


def test_overrides_are_typed_and_layered(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  steps: 50\n  lr: 1.0e-3\nsolver:\n  bwd: {tol: 1.0e-4}\n")
    cfg = load_config(f, ["train.lr=3e-4", "solver.max_iter=20", "data.split_fractions=[0.8, 0.1, 0.1]",
                          "data.cache_dir=null", "data.corpus=123", "checkpoint.async_save=false"])
    assert cfg.train.steps == 50 and cfg.train.lr == 3e-4  # 3e-4 is a string to PyYAML; a float here
    assert cfg.solver.fwd.max_iter == 20 and cfg.solver.bwd.max_iter == Config().solver.bwd.max_iter
    assert cfg.solver.bwd.tol == 1e-4
    assert cfg.data.split_fractions == (0.8, 0.1, 0.1)
    assert cfg.data.cache_dir is None and cfg.data.corpus == "123"  # strings are verbatim
    assert cfg.checkpoint.async_save is False


def test_seq_len_and_vocab_are_one_setting():
    cfg = load_config(None, ["data.seq_len=32"])
    assert cfg.model.seq_len == cfg.data.seq_len == 32
    cfg = load_config(None, ["model.vocab_size=512"])
    assert cfg.data.vocab_size == 512
    with pytest.raises(ConfigError, match=r"model.seq_len \(32\) and data.seq_len \(16\) disagree"):
        load_config(None, ["data.seq_len=16", "model.seq_len=32"])


def test_parallel_rules_round_trip_from_yaml():
    cfg = load_config(None, ["parallel.rules=[[batch, [data, fsdp]], [seq, null], [vocab, null], [embed, fsdp], "
                             "[heads, tensor], [head_dim, null], [mlp, tensor]]"])
    assert ("seq", None) in cfg.parallel.rules and ("batch", ("data", "fsdp")) in cfg.parallel.rules


@pytest.mark.parametrize("overrides, message", [
    (["solver.maxiter=3"], r"unknown key 'solver.maxiter' \(did you mean 'max_iter'\?\); valid keys under 'solver': "
                           r"bwd, fwd, grad, .*max_iter"),
    (["trian.steps=3"], r"unknown key 'trian.steps'.*valid keys \(top-level sections\): checkpoint, data"),
    (["solver.fwd=3"], r"'solver.fwd' is a section"),
    (["train.steps"], r"must look like key=value"),
    (["train.steps.x=1"], r"'train.steps' is a value, not a section"),
])
def test_bad_keys_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(None, overrides)
    assert "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist; presets in .*tiny.yaml"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text,msg", [
    ("train:\n  steps: [1,\n", "not valid YAML at line"),
    ("- 1\n- 2\n", "must hold a mapping"),
    ("train: 3\n", "'train' is a section and must be a mapping"),
    ("model:\n  dmodel: 3\n", "unknown key 'model.dmodel' \\(did you mean 'd_model'\\?\\)"),
])
def test_bad_files(tmp_path, text, msg):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=msg):
        load_config(bad)


def test_presets_are_the_files_and_found_by_name(tmp_path, monkeypatch):
    assert presets.names() == sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert {"tiny", "small", "medium", "large"} <= set(presets.names())
    small = load_config(CONFIGS / "small.yaml")
    monkeypatch.chdir(CONFIGS.parent)  # a source checkout (or, installed, site-packages/deqdist)
    assert load_config("configs/small.yaml") == small  # the file itself, no preset lookup
    monkeypatch.chdir(tmp_path)  # no configs/ here: an installed deqdist run from anywhere
    for given in ("small", "small.yaml"):
        assert load_config(given) == small
    with pytest.raises(ConfigError, match="'configs/small.yaml' does not exist; presets in .*: .*small.yaml"):
        load_config("configs/small.yaml")
    (tmp_path / "small.yaml").write_text("train: {steps: 70}\n")
    assert load_config("small.yaml").train.steps == 70  # a real file wins over the preset of that name
    with pytest.raises(ConfigError, match="'other/small.yaml' does not exist"):
        load_config("other/small.yaml")


def test_trainer_settings_keep_their_old_model_names(tmp_path):
    cfg = load_config(None, ["model.n_unroll=5", "model.jac_reg_every=3", "model.jac_reg_weight=0.5",
                             "model.jac_reg_target=0.2"])
    assert (cfg.train.n_unroll, cfg.train.jac_reg_every, cfg.train.jac_reg_weight, cfg.train.jac_reg_target) == \
        (5, 3, 0.5, 0.2)
    old = tmp_path / "config.yaml"  # as a run directory written before the move holds it
    old.write_text("model: {d_model: 32, n_unroll: 7, jac_reg_every: 0}\ntrain: {steps: 90}\n")
    cfg = load_config(old)
    assert (cfg.model.d_model, cfg.train.n_unroll, cfg.train.jac_reg_every, cfg.train.steps) == (32, 7, 0, 90)
    assert load_config(None, ["train.n_unroll=5"]) == load_config(None, ["model.n_unroll=5"])
