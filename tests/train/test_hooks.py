"""Each train-loop hook alone, on plain values and fakes: no model, no compile, no run directory."""
import math

import jax.numpy as jnp
import pytest

from deqdist.train.hooks import (EXIT_BAD_STEPS, BadSteps, Checkpointer, CompileTimer, Evaluate, Hook, LogMetrics,
                                 Preempted, Spectral, StepInfo, Stop, StopAfter, Throughput, WarmupDone, run_hooks)


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def info(step, loss=1.0, bad=0.0, mode="deq", **metrics):
    return StepInfo(step, state={"params": "P"}, batch="B", metrics={"loss": jnp.float32(loss),
                    "bad": jnp.float32(bad), **metrics}, mode=mode)


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, *args):
        self.calls.append(args)


def test_due_every_and_at_end():
    h = Hook()
    h.every = 5
    assert [s for s in range(1, 13) if h.due(s, 12)] == [5, 10]
    h.at_end = True
    assert [s for s in range(1, 13) if h.due(s, 12)] == [5, 10, 12]
    h.every = 0
    assert not any(h.due(s, 12) for s in range(1, 13))


def test_first_stop_ends_the_round():
    seen = []

    class Named(Hook):
        def __init__(self, name, stop=None):
            self.name, self.stop = name, stop

        def observe(self, info):
            seen.append(("observe", self.name))

        def run(self, info):
            seen.append(("run", self.name))
            return self.stop

    stop = Stop(7, "why", save=True)
    assert run_hooks([Named("a"), Named("b", stop), Named("c")], info(1), total=10) is stop
    assert seen == [("observe", "a"), ("run", "a"), ("observe", "b"), ("run", "b")]


def test_throughput_counts_from_the_last_restart():
    clock = Clock()
    tp = Throughput(tokens_per_step=100, step=0, clock=clock)
    clock.t += 2.0
    assert tp.rate(4) == pytest.approx(200.0)
    assert tp.rate(4) is None  # no step since
    clock.t += 10.0
    tp.restart(4)  # e.g. after an evaluation: its time is not training time
    clock.t += 1.0
    assert tp.rate(5) == pytest.approx(100.0)


def test_compile_timer_times_and_says_the_first_call_of_each_variant():
    clock, said = Clock(), []
    tp = Throughput(10, 0, clock=clock)
    timer = CompileTimer(said.append, tp, clock=clock)

    def fn(state, batch):
        clock.t += 3.0
        return state + 1, {"loss": jnp.float32(0.0)}

    state, _ = timer(("deq", True), fn, 0, None, step=0)
    assert said == ["compiled the deq + jac-reg train step in 3.0s"] and tp.step == 1 and tp.t == clock.t
    state, _ = timer(("deq", True), fn, state, None, step=1)
    timer(("explicit", False), fn, state, None, step=2)
    assert said[1:] == ["compiled the explicit train step in 3.0s"] and state == 2


def test_spectral_writes_and_shows_its_values():
    write = Recorder()
    calls = []

    def spectral_step():
        def fn(params, batch):
            calls.append((params, batch))
            return {"spectral_radius": jnp.float32(0.5), "spectral_radius_max": jnp.float32(0.75)}
        return fn

    hook, i = Spectral(10, spectral_step, write), info(10)
    hook.run(i)
    assert calls == [("P", "B")]
    assert write.calls == [("spectral", 10, {"spectral_radius": 0.5, "spectral_radius_max": 0.75})]
    assert i.shown == {"spectral_radius": 0.5, "spectral_radius_max": 0.75}


@pytest.mark.parametrize("kind", ["bytes", "tokens"])
def test_log_metrics_averages_accepted_steps_of_the_window(kind):
    clock = Clock()
    tp = Throughput(tokens_per_step=8, step=0, clock=clock)
    write, show = Recorder(), Recorder()
    hook = LogMetrics(3, kind, tp, write, show)
    for step, (loss, bad) in enumerate([(2.0, 0.0), (float("nan"), 1.0), (4.0, 0.0)], start=1):
        hook.observe(info(step, loss, bad, grad_norm=jnp.float32(0.25)))
    clock.t += 4.0
    last = info(3, 4.0, 0.0, grad_norm=jnp.float32(0.25))
    last.shown["spectral_radius"] = 0.5
    assert hook.due(3, 10) and hook.run(last) is None
    (kind_, step, m), = write.calls
    assert (kind_, step) == ("train", 3)
    assert m["loss"] == 3.0 and m["bad_steps"] == 1.0 and "bad" not in m
    assert m["tok_s"] == pytest.approx(6.0) and m["deq"] == 1.0 and m["grad_norm"] == 0.25
    if kind == "bytes":
        assert m["bpb"] == pytest.approx(3.0 / math.log(2)) and "ppl" not in m
    else:
        assert m["ppl"] == pytest.approx(math.exp(3.0)) and "bpb" not in m
    assert show.calls == [(3, {**m, "spectral_radius": 0.5})]
    assert hook.window == []


def test_log_metrics_loss_is_nan_when_every_step_was_rejected():
    write = Recorder()
    hook = LogMetrics(1, "bytes", Throughput(1, 0), write, Recorder())
    i = info(1, float("inf"), 1.0, mode="explicit")
    hook.observe(i)
    hook.run(i)
    m = write.calls[0][2]
    assert math.isnan(m["loss"]) and m["bad_steps"] == 1.0 and m["deq"] == 0.0


def test_bad_steps_stops_after_the_limit_of_consecutive_rejections():
    hook = BadSteps(every=2, limit=3, run_dir="RUN", last_checkpoint=lambda: 4)
    outcomes = []
    for step, bad in enumerate([1, 0, 1, 1, 1, 1], start=1):  # the run of 3 ends at step 5, seen at step 6
        i = info(step, bad=float(bad))
        hook.observe(i)
        outcomes.append(hook.run(i) if hook.due(step, 100) else None)
    assert outcomes[:5] == [None] * 5
    stop = outcomes[5]
    assert stop.code == EXIT_BAD_STEPS and stop.error and not stop.save
    assert "stopped at step 6 after 4 consecutive steps" in stop.message
    assert "unchanged since step 2" in stop.message and "last checkpoint: step 4" in stop.message
    assert "deqdist train --run-dir RUN" in stop.message


def test_bad_steps_without_the_guard_never_stops():
    hook = BadSteps(every=1, limit=1, run_dir="RUN", last_checkpoint=lambda: None)
    i = StepInfo(1, state=None, batch=None, metrics={"loss": jnp.float32(1.0)}, mode="deq")
    hook.observe(i)
    assert hook.run(i) is None


def test_evaluate_skips_the_last_step_and_restarts_the_clock():
    clock = Clock()
    tp = Throughput(1, 0, clock=clock)
    evaluate = Recorder()
    hook = Evaluate(5, total=10, evaluate=evaluate, throughput=tp)
    assert [s for s in range(1, 11) if hook.due(s, 10)] == [5]
    clock.t += 7.0
    hook.run(info(5, mode="explicit"))
    assert evaluate.calls == [({"params": "P"}, 5, "explicit")] and tp.step == 5 and tp.t == clock.t


class FakeCheckpoints:
    def __init__(self):
        self.saved, self.waits = [], 0

    def save(self, step, state, data_iter, *, wait=False):
        self.saved.append((step, state, data_iter, wait))

    def wait(self):
        self.waits += 1

    def latest_step(self):
        return self.saved[-1][0] if self.saved else None


def test_checkpointer_saves_a_step_once():
    ckpt = FakeCheckpoints()
    hook = Checkpointer(ckpt, every=4, data_iter="IT", start=0)
    assert hook.last_saved is None and hook.last_sealed() is None
    assert [s for s in range(1, 9) if hook.due(s, 6)] == [4, 8]
    hook.run(info(4))
    hook.ensure_saved(4, "S", wait=True)  # a stop right after the periodic save: nothing more
    hook.ensure_saved(5, "S", wait=True)
    assert ckpt.saved == [(4, {"params": "P"}, "IT", False), (5, "S", "IT", True)]
    assert hook.last_sealed() == 5 and ckpt.waits == 2


def test_checkpointer_counts_the_resumed_step_as_saved():
    ckpt = FakeCheckpoints()
    Checkpointer(ckpt, every=0, data_iter=None, start=7).ensure_saved(7, "S")
    assert ckpt.saved == []


class FakePreemption:
    def __init__(self, requested):
        self._requested, self.exit_code, self.name = requested, 130, "SIGINT"

    def requested(self):
        return self._requested


def test_preempted_stops_with_the_signal_exit_code():
    assert Preempted(FakePreemption(False), "RUN").run(info(3)) is None
    stop = Preempted(FakePreemption(True), "RUN").run(info(3))
    assert stop == Stop(130, "SIGINT: saved a checkpoint at step 3 and stopped; resume with: deqdist train "
                             "--run-dir RUN", save=True)


def test_stop_after_counts_from_this_invocations_start():
    hook = StopAfter(3, start=10, total=20, run_dir="RUN")
    assert [hook.run(info(s)) for s in (11, 12)] == [None, None]
    stop = hook.run(info(13))
    assert stop.code == 0 and stop.save and "stopped after 3 steps (--stop-after) at step 13" in stop.message
    assert StopAfter(3, start=17, total=20, run_dir="RUN").run(info(20)) is None  # the last step finishes instead
    assert not StopAfter(None, 0, 20, "RUN").due(1, 20)


@pytest.mark.parametrize("warmup,total,said_at", [(3, 10, [3]), (0, 10, []), (10, 10, []), (12, 10, [])])
def test_warmup_done_is_said_once_when_the_deq_takes_over(warmup, total, said_at):
    said = []
    hook = WarmupDone(warmup, total, said.append)
    for s in range(1, total + 1):
        if hook.due(s, total):
            hook.run(info(s))
    assert said == [f"step {s}: explicit warm-up done, training the DEQ from here" for s in said_at]
