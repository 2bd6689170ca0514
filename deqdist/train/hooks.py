"""What the train loop does besides the update: small hooks, each with its own cadence.

After every update the loop hands each hook, in order, a `StepInfo`. A hook's
`observe` sees every step (to gather a metric window); its `run` is called on
the steps `due` says (every `every` steps, and at the last step if `at_end`).
`run` may return a `Stop`; the loop then checkpoints if the stop asks for it,
says why and returns the stop's exit code. Hooks share two helpers: a
`Throughput` clock (compiles and evaluations are not training time) and the
`Checkpointer` (which knows whether the current step is already saved).
The order in `train.loop` is part of the behaviour: metrics are logged before a
bad-step stop, evaluation comes before the checkpoint, the checkpoint before a
preemption or --stop-after check.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import jax
import numpy as np

from deqdist.train.metrics import loss_scores

EXIT_BAD_STEPS = 4


@dataclass
class StepInfo:
    """One finished update: `step` updates are done; `mode` is the mode of the last one."""

    step: int
    state: Any
    batch: Any
    metrics: dict
    mode: str
    shown: dict = field(default_factory=dict)  # extra values for this step's progress line


@dataclass(frozen=True)
class Stop:
    code: int
    message: str
    save: bool  # checkpoint this step before stopping
    error: bool = False  # message goes to stderr


class Hook:
    every: int = 1
    at_end: bool = False

    def due(self, step: int, total: int) -> bool:
        return bool(self.every) and (step % self.every == 0 or (self.at_end and step == total))

    def observe(self, info: StepInfo) -> None:
        pass

    def run(self, info: StepInfo) -> Stop | None:
        raise NotImplementedError


def run_hooks(hooks: Sequence[Hook], info: StepInfo, total: int) -> Stop | None:
    """Each hook in order; the first Stop ends the round (later hooks do not run)."""
    for hook in hooks:
        hook.observe(info)
        if hook.due(info.step, total):
            stop = hook.run(info)
            if stop is not None:
                return stop
    return None


class Throughput:
    """Tokens per second of training since the clock was last restarted."""

    def __init__(self, tokens_per_step: int, step: int, clock: Callable[[], float] = time.time):
        self.tokens_per_step, self.clock = tokens_per_step, clock
        self.restart(step)

    def restart(self, step: int) -> None:
        self.t, self.step = self.clock(), step

    def rate(self, step: int) -> float | None:
        """Tokens/s from the last restart to `step` (None if no step was trained since), and restart."""
        now = self.clock()
        out = self.tokens_per_step * (step - self.step) / max(now - self.t, 1e-9) if step > self.step else None
        self.t, self.step = now, step
        return out


class CompileTimer:
    """Runs the train step; the first call of each variant is timed (it compiles) and said."""

    def __init__(self, say: Callable[[str], None], throughput: Throughput, clock: Callable[[], float] = time.time):
        self.say, self.throughput, self.clock = say, throughput, clock
        self.seen: set = set()

    def __call__(self, variant: tuple[str, bool], fn: Callable, state, batch, step: int):
        if variant in self.seen:
            return fn(state, batch)
        t0 = self.clock()
        state, metrics = fn(state, batch)
        jax.block_until_ready(metrics)
        mode, jac = variant
        self.say(f"compiled the {mode}{' + jac-reg' if jac else ''} train step in {self.clock() - t0:.1f}s")
        self.seen.add(variant)
        self.throughput.restart(step + 1)
        return state, metrics


class Spectral(Hook):
    """Spectral radius of J_f at z*, on the batch just trained on, at the updated parameters."""

    at_end = True

    def __init__(self, every: int, spectral_step: Callable[[], Callable], write: Callable):
        self.every, self.spectral_step, self.write = every, spectral_step, write

    def run(self, info: StepInfo) -> None:
        out = {k: float(v) for k, v in jax.device_get(self.spectral_step()(info.state["params"], info.batch)).items()}
        self.write("spectral", info.step, out)
        info.shown.update(out)


class LogMetrics(Hook):
    """The last update's metrics with the loss averaged over the window's accepted steps,
    bpb or ppl, rejected steps and throughput; to the sink and the progress display."""

    at_end = True

    def __init__(self, every: int, kind: str, throughput: Throughput, write: Callable, show: Callable,
                 bytes_per_token: float | None = None):
        self.every, self.kind, self.throughput, self.bytes_per_token = every, kind, throughput, bytes_per_token
        self.write, self.show = write, show
        self.window: list = []

    def observe(self, info: StepInfo) -> None:
        self.window.append((info.metrics["loss"], info.metrics.get("bad", 0.0)))

    def run(self, info: StepInfo) -> None:
        m = {k: float(v) for k, v in jax.device_get(info.metrics).items()}
        losses, bad = (np.asarray(x, np.float64) for x in zip(*jax.device_get(self.window)))
        self.window = []
        m["loss"] = float(np.mean(losses[bad == 0])) if (bad == 0).any() else float("nan")
        m.pop("bad", None)
        m["bad_steps"] = float(bad.sum())
        m.update(loss_scores(m["loss"], self.kind, self.bytes_per_token))
        rate = self.throughput.rate(info.step)
        if rate is not None:
            m["tok_s"] = rate
        m["deq"] = 1.0 if info.mode == "deq" else 0.0
        self.write("train", info.step, m)
        self.show(info.step, {**m, **info.shown})


class BadSteps(Hook):
    """Stops (exit 4, no checkpoint: the last one is the last good state) after `limit`
    consecutive rejected steps, counted on the logging cadence."""

    at_end = True

    def __init__(self, every: int, limit: int, run_dir, last_checkpoint: Callable[[], int | None]):
        self.every, self.limit, self.run_dir = every, limit, run_dir
        self.last_checkpoint = last_checkpoint
        self.window: list = []
        self.run_length = 0  # consecutive rejected steps up to the last counted step

    def observe(self, info: StepInfo) -> None:
        self.window.append(info.metrics.get("bad", 0.0))

    def run(self, info: StepInfo) -> Stop | None:
        for b in np.asarray(jax.device_get(self.window), np.float64).reshape(-1):
            self.run_length = self.run_length + 1 if b else 0
        self.window = []
        if self.run_length < self.limit:
            return None
        step, n, kept = info.step, self.run_length, self.last_checkpoint()
        return Stop(EXIT_BAD_STEPS, error=True, save=False, message=(
            f"deqdist train: stopped at step {step} after {n} consecutive steps with a non-finite loss, gradient "
            f"or update or a diverged solve (parameters unchanged since step {step - n}); last checkpoint: "
            f"{'step ' + str(kept) if kept is not None else 'none'}; lower train.lr or raise solver.max_iter, "
            f"then resume with: deqdist train --run-dir {self.run_dir}"))


class Evaluate(Hook):
    """Validation during training (the final evaluation is the loop's last act, not this hook's)."""

    def __init__(self, every: int, total: int, evaluate: Callable, throughput: Throughput):
        self.every, self.total, self.evaluate, self.throughput = every, total, evaluate, throughput

    def due(self, step: int, total: int) -> bool:
        return super().due(step, total) and step < total

    def run(self, info: StepInfo) -> None:
        self.evaluate(info.state, info.step, info.mode)
        self.throughput.restart(info.step)


class Checkpointer(Hook):
    """Saves every `every` steps and remembers the last step saved, so a stop or the end
    of the run saves only a step not already on disk."""

    def __init__(self, ckpt, every: int, data_iter, start: int):
        self.ckpt, self.every, self.data_iter = ckpt, every, data_iter
        self.last_saved = start if start > 0 else None

    def run(self, info: StepInfo) -> None:
        self.save(info.step, info.state)

    def save(self, step: int, state, *, wait: bool = False) -> None:
        self.ckpt.save(step, state, self.data_iter, wait=wait)
        self.last_saved = step

    def ensure_saved(self, step: int, state, *, wait: bool = False) -> None:
        if self.last_saved != step:
            self.save(step, state, wait=wait)

    def last_sealed(self) -> int | None:
        """The newest checkpoint once pending saves are finished."""
        self.ckpt.wait()
        return self.ckpt.latest_step()


class Preempted(Hook):
    """SIGTERM / Ctrl-C (any host's, see deqdist.runtime.preempt): checkpoint and stop."""

    def __init__(self, preemption, run_dir):
        self.preemption, self.run_dir = preemption, run_dir

    def run(self, info: StepInfo) -> Stop | None:
        p = self.preemption
        if not p.requested():
            return None
        return Stop(p.exit_code, save=True, message=f"{p.name}: saved a checkpoint at step {info.step} and stopped; "
                                                    f"resume with: deqdist train --run-dir {self.run_dir}")


class StopAfter(Hook):
    """--stop-after N: checkpoint and stop N steps after this invocation started (not at the last step,
    which finishes the run instead)."""

    def __init__(self, n: int | None, start: int, total: int, run_dir):
        self.n, self.start, self.total, self.run_dir = n, start, total, run_dir
        self.every = 0 if n is None else 1

    def run(self, info: StepInfo) -> Stop | None:
        if info.step - self.start < self.n or info.step >= self.total:
            return None
        return Stop(0, save=True, message=f"stopped after {self.n} steps (--stop-after) at step {info.step}; "
                                          f"checkpoint saved; resume with: deqdist train --run-dir {self.run_dir}")


class WarmupDone(Hook):
    """Says when the explicit warm-up ends and the DEQ trains from the next update on."""

    def __init__(self, warmup: int, total: int, say: Callable[[str], None]):
        self.every = warmup if 0 < warmup < total else 0
        self.say = say

    def due(self, step: int, total: int) -> bool:
        return bool(self.every) and step == self.every

    def run(self, info: StepInfo) -> None:
        self.say(f"step {info.step}: explicit warm-up done, training the DEQ from here")


def say_stop(stop: Stop, primary: bool) -> None:
    if primary:
        print(stop.message, file=sys.stderr if stop.error else sys.stdout, flush=True)
