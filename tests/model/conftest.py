"""Shared fixtures of the model tests: the tiny preset, float32, no dropout."""
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from deqdist.model import DEQTransformer
from model_presets import get_preset


@pytest.fixture(scope="session")
def tiny_cfg():
    return get_preset("tiny", dropout=0.0)


@pytest.fixture(scope="session")
def tiny_model(tiny_cfg):
    return DEQTransformer(tiny_cfg, rngs=nnx.Rngs(0))


@pytest.fixture(scope="session")
def tokens(tiny_cfg):
    return jax.random.randint(jax.random.key(1), (2, 32), 0, tiny_cfg.vocab_size, dtype=jnp.int32)
