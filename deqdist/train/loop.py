"""The training run: config -> mesh, data, sharded state, checkpoints -> steps -> final test + sample.

Everything that can be wrong with the inputs (config, mesh sizes, layout,
corpus, run directory) is checked before the run directory is touched, so a
bad invocation writes nothing. Exit codes: 0 done (or stopped by SIGTERM /
--stop-after after checkpointing), 2 bad input (also: another trainer holds
the run dir, or none of its checkpoints is usable), 3 stopped after
train.max_bad_steps consecutive rejected steps (the last checkpoint is the
last good state), 130 stopped by Ctrl-C after checkpointing.
"""
from __future__ import annotations

import contextlib
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from deqdist.config import Config
from deqdist.data import Corpus, DataError, eval_iterator, load_corpus, to_global, train_iterator
from deqdist.store import rundir
from deqdist.train import resume
from deqdist.store import checkpoint
from deqdist.store.checkpoint import Checkpoints
from deqdist.store.lock import RunDirLocked, RunLock, check_unlocked
from deqdist.train.evaluate import coverage, evaluate
from deqdist.train.sample import generate
from deqdist.train.hooks import (BadSteps, Checkpointer, CompileTimer, Evaluate, LogMetrics, Preempted, Spectral,
                                  StepInfo, StopAfter, Throughput, WarmupDone, run_hooks, say_stop)
from deqdist.train.metrics import MetricsSink, Progress, summary
from deqdist.runtime.preempt import Preemption
from deqdist.train.state import StateSpec, init_state
from deqdist.train.step import Steps


def primary() -> bool:
    return jax.process_index() == 0


def say(msg: str) -> None:
    if primary():
        print(msg, flush=True)


def load_data(cfg: Config) -> Corpus:
    d = cfg.data
    corpus = load_corpus(d.corpus, vocab_size=cfg.model.vocab_size, token_dtype=d.token_dtype,
                         cache_dir=d.cache_dir, split_fractions=d.split_fractions)
    if corpus.vocab_size > cfg.model.vocab_size:
        raise DataError(f"corpus {corpus.name!r} has vocab {corpus.vocab_size} > model.vocab_size "
                        f"{cfg.model.vocab_size}; raise model.vocab_size")
    return corpus


class Session:
    """Mesh, state layout, compiled steps and checkpoints for one config (train, eval and generate share it)."""

    def __init__(self, cfg: Config, run_dir: Path, *, create_checkpoints: bool):
        self.cfg, self.run_dir = cfg, run_dir
        self.steps = Steps.for_config(cfg)
        self.spec: StateSpec = self.steps.spec
        self.mesh = self.spec.mesh
        self._create = create_checkpoints
        self.ckpt: Checkpoints | None = None

    def open_checkpoints(self) -> Checkpoints:
        if self.ckpt is None:
            c = self.cfg.checkpoint
            self.ckpt = Checkpoints(self.run_dir / rundir.CHECKPOINTS, keep=c.keep, async_save=c.async_save,
                                    create=self._create)
        return self.ckpt

    def scan_checkpoints(self) -> checkpoint.Scan:
        """Verify the run's checkpoints (writes nothing); RunDirError if there are some but none is usable."""
        directory = self.run_dir / rundir.CHECKPOINTS
        with _no_usable_checkpoint(directory):
            scanned = checkpoint.scan(directory)
            scanned.check(directory)
        return scanned

    def restore_latest(self, data_iter=None, scanned: checkpoint.Scan | None = None
                       ) -> tuple[Any, int | None, list[int]]:
        """(state, step, steps skipped as damaged) of the newest good checkpoint; (None, None, []) if none."""
        ck = self.open_checkpoints()
        with _no_usable_checkpoint(ck.directory):
            return ck.restore_newest(self.spec.abstract_for_restore(), data_iter, scanned)

    def close(self) -> None:
        if self.ckpt is not None:
            self.ckpt.close()


@contextlib.contextmanager
def _no_usable_checkpoint(directory: Path):
    try:
        yield
    except checkpoint.NoUsableCheckpoint as e:
        raise rundir.RunDirError(f"{e}; to start this run over, move {directory} aside") from None


# ---------------------------------------------------------------------------
# deqdist train
# ---------------------------------------------------------------------------
def run_train(config_path: str | None, run_dir: Path | None, overrides: Sequence[str], *,
              stop_after: int | None = None) -> int:
    if run_dir is None:
        if jax.process_count() > 1:
            raise rundir.RunDirError("with several processes give --run-dir (a directory every host can reach)")
        run_dir = rundir.default_run_dir(config_path)
    run_dir = Path(run_dir)
    _locked_out(lambda: check_unlocked(run_dir) if primary() else None)  # fail fast, before any work
    cfg, saved = resume.resolve_for_train(config_path, run_dir, overrides)
    cfg.data.per_host_batch(jax.process_count())  # DataError if not divisible

    # ---- validate everything before writing anything
    session = Session(cfg, run_dir, create_checkpoints=True)  # checkpoints are opened after mkdir below
    corpus = load_data(cfg)
    rundir.check_corpus(run_dir, corpus.info())
    data_it = train_iterator(corpus, cfg.data)
    eval_iterator(corpus, cfg.data, "valid")  # DataError now if the valid split is too short
    eval_iterator(corpus, cfg.data, "test", max_batches=cfg.train.test_batches)
    scanned = session.scan_checkpoints()
    if jax.process_count() > 1:
        # Every host has looked at the run dir before any host writes to it.
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("deqdist: inputs validated")

    run_dir.mkdir(parents=True, exist_ok=True)
    lock = _locked_out(lambda: RunLock(run_dir) if primary() else None)
    try:
        return _start_and_train(session, run_dir, cfg, saved, corpus, data_it, stop_after, scanned)
    finally:
        session.close()
        if lock is not None:
            lock.close()


def _locked_out(fn):
    """fn() on process 0; on every process RunDirError if another trainer holds the run dir."""
    err, out = None, None
    try:
        out = fn()
    except RunDirLocked as e:
        err = str(e)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if int(multihost_utils.broadcast_one_to_all(np.int32(err is not None))):
            err = err or "another trainer holds the run directory (see process 0)"
    if err is not None:
        raise rundir.RunDirError(err)
    return out


def _start_and_train(session: Session, run_dir: Path, cfg: Config, saved: Config | None, corpus: Corpus, data_it,
                     stop_after: int | None, scanned: checkpoint.Scan) -> int:
    state, start, damaged = session.restore_latest(data_it, scanned)
    session.ckpt.set_aside([s for s in damaged if start is None or s > start])
    resumed = start is not None
    if not resumed:
        state, start = init_state(cfg, session.spec), 0
    if primary():
        cfg.save(run_dir / rundir.CONFIG)  # first file of a new run: a dir without it is restarted from scratch
        rundir.write_json(run_dir / rundir.CORPUS, corpus.info())
        rundir.append_runlog(run_dir, _run_entry(session, start, resumed, saved, cfg))
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(session.spec.abstract["params"]))
    mesh_desc = " x ".join(f"{k}={v}" for k, v in session.mesh.shape.items())
    say(f"run dir: {run_dir}")
    say(f"model: {n_params:,} parameters; mesh {mesh_desc} on {jax.device_count()} {jax.devices()[0].platform} "
         f"device(s), {jax.process_count()} process(es); corpus {corpus.name} "
         f"({corpus.sizes()['train']:,} train {'bytes' if corpus.kind == 'bytes' else 'tokens'})")
    if resumed:
        say(f"resumed from checkpoint at step {start}")
    return _train_loop(session, state, start, corpus, data_it, stop_after)


def _run_entry(session: Session, start: int, resumed: bool, saved: Config | None, cfg: Config) -> dict:
    from deqdist.config import diff

    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "start_step": start,
        "resumed": resumed,
        "changed": diff(saved, cfg) if saved is not None else [],
        "mesh": dict(session.mesh.shape),
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
        "processes": jax.process_count(),
        "versions": {"python": platform.python_version(), "jax": jax.__version__},
    }


def _train_loop(session: Session, state, start: int, corpus: Corpus, data_it, stop_after: int | None) -> int:
    cfg, steps, ckpt = session.cfg, session.steps, session.open_checkpoints()
    total, is_primary = cfg.train.steps, primary()
    tb_dir = session.run_dir / rundir.TB if cfg.logging.tensorboard else None
    sink = MetricsSink(session.run_dir / rundir.METRICS, tb_dir, enabled=is_primary, resume_step=start)
    progress = Progress(cfg.logging.progress, total=total, initial=start, enabled=is_primary)
    checkpointer = Checkpointer(ckpt, cfg.checkpoint.every, data_it, start)
    step = start
    try:
        with Preemption() as preemption:
            train_step, hooks = _hooks(session, corpus, start, stop_after, sink, progress, checkpointer, preemption)
            while step < total:
                variant = (steps.mode_at(step), steps.jac_at(step))
                batch = to_global(next(data_it), steps.batch_sharding)
                state, metrics = train_step(variant, steps.train_step(step), state, batch, step)
                step += 1
                progress.step(step)
                ckpt.poll()
                stop = run_hooks(hooks, StepInfo(step, state, batch, metrics, mode=variant[0]), total)
                if stop is not None:
                    if stop.save:
                        checkpointer.ensure_saved(step, state, wait=True)
                    ckpt.wait()
                    progress.close()
                    say_stop(stop, is_primary)
                    return stop.code
            checkpointer.ensure_saved(step, state)
            ckpt.wait()  # sealed before the final evaluation: a crash there resumes at the last step
            progress.close()
            if start >= total:
                say(f"run is already at step {start} = train.steps; nothing to train (raise train.steps to go on)")
            code = _finish(session, state, corpus, step, sink)
            ckpt.wait()
    finally:
        progress.close()
        sink.close()
    return code


def _hooks(session: Session, corpus: Corpus, start: int, stop_after: int | None, sink: MetricsSink,
           progress: Progress, checkpointer: Checkpointer, preemption: Preemption) -> tuple[CompileTimer, list]:
    """The timed train-step call and the hooks run after each step, in the order they run."""
    cfg, steps, run_dir, t = session.cfg, session.steps, session.run_dir, session.cfg.train
    throughput = Throughput(cfg.data.global_batch_size * cfg.model.seq_len, start)
    evaluate_valid = lambda state, step, mode: _eval_and_log(session, state, corpus, "valid", step, mode, sink,
                                                             progress, cfg.data.eval_batches)
    return CompileTimer(progress.write, throughput), [
        Spectral(t.spectral_every, steps.spectral_step, sink.write),
        LogMetrics(t.log_every, corpus.kind, throughput, sink.write, progress.log, corpus.bpt("train")),
        BadSteps(t.log_every, t.max_bad_steps, run_dir, checkpointer.last_sealed),
        Evaluate(t.eval_every, t.steps, evaluate_valid, throughput),
        checkpointer,
        Preempted(preemption, run_dir),
        StopAfter(stop_after, start, t.steps, run_dir),
        WarmupDone(t.warmup_explicit_steps, t.steps, progress.write),
    ]


def _eval_and_log(session: Session, state, corpus: Corpus, split: str, step: int, mode: str, sink: MetricsSink,
                  progress: Progress, max_batches: int | None) -> dict:
    t0 = time.time()
    res = evaluate(session.steps, state["params"], corpus, session.cfg, split, mode=mode, max_batches=max_batches)
    res["seconds"] = time.time() - t0
    res["deq"] = 1.0 if mode == "deq" else 0.0
    sink.write(split, step, res)
    progress.write(f"step {step} {split} ({mode}, {res['batches']} batches, {coverage(res)}): "
                   f"{summary(res, ('loss', 'bpb', 'ppl', 'fwd_iters', 'fwd_hit_max'))}")
    return res


def _finish(session: Session, state, corpus: Corpus, step: int, sink: MetricsSink) -> int:
    cfg = session.cfg
    # The model that was trained: the explicit twin when the warm-up spans the whole run.
    mode = session.steps.mode_at(step - 1) if step > 0 else "deq"
    res_valid = _eval_and_log(session, state, corpus, "valid", step, mode, sink, _Printer(), cfg.data.eval_batches)
    res_test = _eval_and_log(session, state, corpus, "test", step, mode, sink, _Printer(), cfg.train.test_batches)
    log_cfg = cfg.logging
    sample = None
    if log_cfg.sample_tokens > 0 and corpus.text_codec():
        ids = generate(session.spec, cfg, state["params"], corpus.encode(log_cfg.sample_prompt) or [10],
                       log_cfg.sample_tokens, temperature=log_cfg.sample_temperature, seed=cfg.train.seed)
        sample = log_cfg.sample_prompt + corpus.decode(ids)
    if primary():
        if corpus.kind == "bytes":
            say(f"test bits/byte: {res_test['bpb']:.4f} (loss {res_test['loss']:.4f} nats/byte over "
                 f"{int(res_test['tokens']):,} bytes, {coverage(res_test)} of the test split; "
                 f"valid {res_valid['bpb']:.4f})")
        else:
            say(f"test perplexity: {res_test['ppl']:.2f} (loss {res_test['loss']:.4f} nats/token over "
                 f"{int(res_test['tokens']):,} tokens, {coverage(res_test)} of the test split; "
                 f"valid {res_valid['ppl']:.2f})"
                 + (f"; test bits/byte of text: {res_test['bpb']:.4f}" if "bpb" in res_test else ""))
        if sample is not None:
            say(f"sample (temperature {log_cfg.sample_temperature}, {log_cfg.sample_tokens} "
                 f"{'bytes' if corpus.kind == 'bytes' else 'tokens'}, prompt {log_cfg.sample_prompt!r}):")
            say("-" * 60 + "\n" + sample + "\n" + "-" * 60)
        results = {"step": step, "valid": res_valid, "test": res_test, "sample": sample, "corpus": corpus.info()}
        rundir.write_json(session.run_dir / rundir.RESULTS, results)
    return 0


class _Printer(Progress):
    def __init__(self):
        super().__init__("off", total=0, initial=0, enabled=primary())


# ---------------------------------------------------------------------------
# a finished run (deqdist eval / generate, the benchmarks)
# ---------------------------------------------------------------------------
def open_run(run_dir: Path, overrides: Sequence[str]) -> tuple[Session, Any, int]:
    """(session, restored state, step) of a run directory's newest checkpoint (RunDirError if none)."""
    cfg = resume.resolve_for_run(run_dir, overrides)
    ck_dir = run_dir / rundir.CHECKPOINTS
    if not ck_dir.is_dir():
        raise rundir.RunDirError(f"{run_dir} has no checkpoints yet ({ck_dir} is missing)")
    session = Session(cfg, run_dir, create_checkpoints=False)
    try:
        state, step, _ = session.restore_latest(scanned=session.scan_checkpoints())
    except BaseException:
        session.close()
        raise
    if step is None:
        session.close()
        raise rundir.RunDirError(f"{run_dir} has no complete checkpoint in {ck_dir}")
    return session, state, step
