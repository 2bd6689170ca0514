"""Evaluation over a split: a fresh eval iterator, the compiled eval step, summed on the host."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax

from deqdist.config import Config
from deqdist.data import Corpus, eval_iterator, to_global
from deqdist.data.windows import eval_num_windows
from deqdist.train.metrics import loss_scores
from deqdist.train.step import Steps


def evaluate(steps: Steps, params: Any, corpus: Corpus, cfg: Config, split: str, *, mode: str = "deq",
             max_batches: int | None = None) -> dict[str, float]:
    """Loss (nats/token), bpb or ppl and forward-solver means over up to `max_batches` global batches.

    The batches' windows are spread over the whole split (`deqdist.data.windows.EvalStarts`);
    `windows` / `split_windows` say how many were read of how many the split has."""
    fn = steps.eval_step(mode)
    it = eval_iterator(corpus, cfg.data, split, max_batches=max_batches)
    totals: dict[str, Any] = {}
    n = 0
    for host_batch in it:
        out = fn(params, to_global(host_batch, steps.batch_sharding))
        totals = out if not totals else jax.tree.map(lambda a, b: a + b, totals, out)
        n += 1
    sums = {k: float(v) for k, v in jax.device_get(totals).items()}
    res = summarize_eval(sums, corpus.kind, corpus.bpt(split))
    res["batches"] = n
    res["windows"] = n * cfg.data.global_batch_size
    res["split_windows"] = eval_num_windows(len(corpus.split(split)), cfg.data.seq_len)
    return res


def fixed_point_steps(steps: Steps) -> Steps:
    """`steps` with the forward solve to equilibrium (solver.fwd, implicit gradients): a reversible
    model's parameters scored at the fixed point of their block, for comparison."""
    cfg = dataclasses.replace(steps.cfg, solver=dataclasses.replace(steps.cfg.solver, grad="implicit"))
    return Steps(cfg, steps.spec, steps.batch_sharding, steps.solve, steps.unroll)


def reversible_note(cfg: Config) -> str:
    r = cfg.solver.reversible
    return f"reversible: {r.steps} coupled steps at b={r.b:g} on whole windows, no fixed point assumed"


def summarize_eval(sums: dict[str, float], kind: str, bytes_per_token: float | None = None) -> dict[str, float]:
    """Sums over batches -> loss (nats/token), bits per byte (byte corpora, or text bytes per token known)
    and/or perplexity, solver means."""
    n = max(sums.get("tokens", 0.0), 1.0)
    loss = sums["nll"] / n
    out = {"loss": loss, "tokens": sums.get("tokens", 0.0), **loss_scores(loss, kind, bytes_per_token)}
    if "fwd_iters" in sums:
        s = max(sums["samples"], 1.0)
        out["fwd_iters"] = sums["fwd_iters"] / s
        out["fwd_hit_max"] = sums["fwd_hit_max"] / s
        out["fwd_rel_res"] = sums["fwd_rel_res"] / s
    return out


def coverage(res: dict) -> str:
    """How much of the split an `evaluate` result read, e.g. 'read 640 of 5,171 windows (12.4%)'."""
    read, total = int(res["windows"]), int(res["split_windows"])
    return f"read {read:,} of {total:,} windows ({100.0 * read / max(total, 1):.1f}%)"
