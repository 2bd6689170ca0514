"""The reversible mode sharded equals one device: the coupled iteration and its reversal run per
sample inside the same shard_map as every solve; with a residual stop the data replicas stop on
their own (different loop lengths) and the parameter cotangents are still summed once, correctly.

Bounds as in test_solve.py (float32, different summation order under sharding)."""
import jax.numpy as jnp
import pytest

from deqdist.deq import DEQConfig
from deqdist.reversible import ReversibleConfig
from harness import max_rel_err, model_and_tokens, reference_step, sharded_step

FIXED = DEQConfig(grad="reversible", reversible=ReversibleConfig(steps=5, b=0.5, checkpoint_every=3))
# A tolerance that samples of the random-init model pass after 7 or 8 steps (margins >= 0.7%).
STOP = DEQConfig(grad="reversible", reversible=ReversibleConfig(steps=12, b=0.5, tol=0.0145, checkpoint_every=4))


@pytest.fixture(scope="module")
def setup():
    model, tokens = model_and_tokens()
    return model, tokens, {"fixed": reference_step(model, tokens, FIXED), "stop": reference_step(model, tokens, STOP)}


@pytest.mark.parametrize("name, cfg, sizes", [
    ("fixed", FIXED, (8, 1, 1)), ("fixed", FIXED, (2, 2, 2)), ("fixed", FIXED, (1, 1, 8)), ("stop", STOP, (4, 1, 2)),
])
def test_reversible_sharded_equals_single_device(setup, name, cfg, sizes):
    model, tokens, refs = setup
    loss0, grads0, aux0 = refs[name]
    nstep0 = aux0["fwd_stats"].nstep
    if name == "stop":
        assert len(set(nstep0.tolist())) > 1, nstep0  # the stop really is per sample
    (loss, grads, aux), _, _ = sharded_step(model, tokens, cfg, sizes)
    assert abs(float(loss) - float(loss0)) / abs(float(loss0)) <= 1e-5
    assert max_rel_err(aux["z"], aux0["z"]) <= 1e-5
    assert jnp.array_equal(aux["fwd_stats"].nstep, nstep0)
    assert jnp.array_equal(aux["bwd_stats"]["nstep"], aux0["bwd_stats"]["nstep"])
    assert max_rel_err(grads, grads0) <= 2e-5
    assert float(jnp.max(aux["bwd_stats"]["recon_error"])) < 1e-4
