import dataclasses

import pytest
import yaml
from flax import nnx

from deqdist import presets
from deqdist.model import DEQTransformer, ModelConfig, param_count
from model_presets import get_preset


@pytest.mark.parametrize("name", presets.names())
def test_presets_validate_and_count(name):
    cfg = get_preset(name)
    model = nnx.eval_shape(lambda: DEQTransformer(cfg, rngs=nnx.Rngs(0)))  # no allocation
    assert param_count(model) == cfg.param_count()


def test_preset_sizes():
    tiny, small, medium = (get_preset(n) for n in ("tiny", "small", "medium"))
    assert (tiny.d_model, tiny.n_heads, tiny.seq_len) == (64, 2, 64)
    assert (small.d_model, small.seq_len) == (256, 256)
    assert medium.d_model % 128 == 0 and medium.n_heads >= 10
    assert tiny.param_count() == 66_560
    assert small.param_count() == 856_064
    # ~100M parameters with a 32k vocabulary
    assert medium.vocab_size == 32768
    assert medium.param_count() == 99_951_360
    assert 95e6 < medium.param_count() < 105e6


def test_presets_are_plain_data():
    for name in presets.names():
        fields = yaml.safe_load(presets.path(name).read_text())["model"]
        assert all(isinstance(v, (int, float, bool, str)) for v in fields.values())
        assert set(fields) <= {f.name for f in dataclasses.fields(ModelConfig)}


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(d_model=65), "divisible"),
        (dict(d_model=66, n_heads=2 * 11), "even"),
        (dict(n_heads=0), "positive"),
        (dict(dropout=1.0), "dropout"),
        (dict(dtype="float8"), "dtype"),
        (dict(init_gain=0.0), "init_gain"),
        (dict(vocab_size=2.5), "vocab_size"),
    ],
)
def test_validate_errors(changes, match):
    with pytest.raises(ValueError, match=match) as e:
        ModelConfig(**changes).validate()
    assert "\n" not in str(e.value)


def test_get_preset_errors():
    with pytest.raises(ValueError, match="unknown model preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="unknown model config field"):
        get_preset("tiny", d_modle=3)
    assert get_preset("tiny", d_model=128).d_model == 128
