"""Which train step the trainer takes at each step: the explicit warm-up never computes the Jacobian
term (it regularises f at the equilibrium the solve finds); the DEQ phase computes it at its cadence."""
import jax

from deqdist import presets
from deqdist.config import load_config
from deqdist.train.step import Steps

WARMUP, EVERY = 4, 2


def _steps() -> Steps:
    cfg = load_config(presets.path("tiny"), [
        f"train.warmup_explicit_steps={WARMUP}", f"train.jac_reg_every={EVERY}", "train.jac_reg_weight=2.0",
        "data.global_batch_size=2", "model.seq_len=16", "parallel.data=1", "parallel.fsdp=1", "parallel.tensor=1"])
    return Steps.for_config(cfg, jax.devices()[:1])


def _metric_names(steps: Steps, step: int) -> set[str]:
    _, metrics = jax.eval_shape(steps.train_step(step), steps.spec.abstract_for_restore(), steps.abstract_batch())
    return set(metrics)


def test_the_warm_up_step_has_no_jacobian_term():
    steps = _steps()
    for step in range(WARMUP):  # steps 0 and 2 are on the cadence, but in the warm-up
        assert steps.mode_at(step) == "explicit" and not steps.jac_at(step), step
        assert steps.train_step(step) is steps.variant("explicit", False), step
    names = _metric_names(steps, 0)
    assert "jac_loss" not in names and "explicit_rel_res" in names  # absent, as on a step the cadence skips


def test_the_deq_phase_has_it_at_its_cadence():
    steps = _steps()
    assert [steps.jac_at(s) for s in range(WARMUP, WARMUP + 4)] == [True, False, True, False]
    assert steps.train_step(WARMUP) is steps.variant("deq", True)
    assert steps.train_step(WARMUP + 1) is steps.variant("deq", False)
    assert "jac_loss" in _metric_names(steps, WARMUP)
    assert "jac_loss" not in _metric_names(steps, WARMUP + 1)
