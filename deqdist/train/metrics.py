"""Where metrics go: metrics.jsonl and TensorBoard (process 0 only), and the progress display.

Each JSON line is {"kind": "train"|"valid"|"test"|"spectral", "step": int, "time":
unix seconds, <metric>: float, ...}; "spectral" lines carry the spectral radius
of J_f at z* (every train.spectral_every steps). A non-finite value is written as
null (the file stays strict JSON) and each record is one whole line (one write
call). TensorBoard scalars are "<kind>/<metric>".
On resume both are cut back to the restored step: metrics.jsonl loses its
lines for later steps (they were logged by the interrupted run and will be
logged again), and the TensorBoard writer is opened with purge_step so
TensorBoard hides the interrupted run's later events.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from deqdist.store.atomic import write_atomic
from deqdist.store.rundir import finite_or_null


def loss_scores(loss: float, kind: str, bytes_per_token: float | None = None) -> dict[str, float]:
    """Bits per byte of a byte corpus's mean loss (nats), else the perplexity (capped so exp cannot overflow)
    and, where the bytes of text per token are known (a prepared corpus), also bits per byte of that text."""
    if kind == "bytes":
        return {"bpb": loss / math.log(2)}
    out = {"ppl": math.exp(min(loss, 700.0))}
    if bytes_per_token:
        out["bpb"] = loss / math.log(2) / bytes_per_token
    return out


class MetricsSink:
    """metrics.jsonl at `jsonl_path` and, with `tensorboard_dir`, TensorBoard event files there."""

    def __init__(self, jsonl_path: Path, tensorboard_dir: Path | None, *, enabled: bool, resume_step: int | None):
        self.enabled = enabled
        self.jsonl_path = Path(jsonl_path)
        self._tb = None
        self._fh = None
        if not enabled:
            return
        if resume_step is not None and self.jsonl_path.exists():
            _truncate_after(self.jsonl_path, resume_step)
        self._fh = open(self.jsonl_path, "a", buffering=1)
        if tensorboard_dir is not None:
            from tensorboardX import SummaryWriter

            kw = {"purge_step": resume_step + 1} if resume_step is not None else {}
            self._tb = SummaryWriter(str(tensorboard_dir), flush_secs=10, **kw)

    def write(self, kind: str, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: finite_or_null(_num(v)) for k, v in metrics.items()}
        rec = {"kind": kind, "step": int(step), "time": round(time.time(), 3), **clean}
        self._fh.write(json.dumps(rec, allow_nan=False) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}", v, int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if isinstance(v, int) else f


def _truncate_after(path: Path, step: int) -> None:
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a hard kill
        if rec.get("step", 0) <= step and rec.get("kind") != "test":
            keep.append(line)
    write_atomic(path, "".join(l + "\n" for l in keep))


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "nan"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e6):
        return f"{int(v)}"
    if abs(v) >= 1e3 or (abs(v) < 1e-2 and v != 0):
        return f"{v:.2e}"
    return f"{v:.3f}"


SHOWN = ("loss", "bpb", "ppl", "lr", "grad_norm", "fwd_iters", "bwd_iters", "fwd_hit_max", "spectral_radius", "tok_s")


def summary(metrics: Mapping[str, Any], keys=SHOWN) -> str:
    return " ".join(f"{k}={_fmt(metrics[k])}" for k in keys if k in metrics)


class Progress:
    """A tqdm bar with ETA on a terminal, else one line per log step; silent off process 0."""

    def __init__(self, mode: str, *, total: int, initial: int, enabled: bool):
        self.enabled = enabled
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode if enabled else "off"
        self.total = total
        self.bar = None
        self.t0, self.s0 = time.time(), initial
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.1)

    def step(self, step: int, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        if self.mode == "bar":
            self.bar.set_postfix_str(summary(metrics), refresh=False)
        elif self.mode == "lines":
            done = step - self.s0
            eta = ""
            if done > 0:
                left = (time.time() - self.t0) / done * (self.total - step)
                eta = f" eta {int(left // 60)}m{int(left % 60):02d}s"
            print(f"step {step}/{self.total} {summary(metrics)}{eta}", flush=True)

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
