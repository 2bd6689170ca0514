"""bpb / perplexity arithmetic, the metrics sink's files and its cut-back on resume, eval summaries."""
import json
import math

import pytest

from deqdist.train.evaluate import summarize_eval
from deqdist.train.metrics import MetricsSink, loss_scores


def test_loss_scores():
    assert loss_scores(math.log(2) * 1.5, "bytes") == {"bpb": pytest.approx(1.5)}
    assert loss_scores(math.log(20.0), "tokens") == {"ppl": pytest.approx(20.0)}
    assert loss_scores(1e6, "tokens")["ppl"] == math.exp(700.0)  # capped, not an overflow
    assert math.isnan(loss_scores(float("nan"), "tokens")["ppl"])


def test_summarize_eval_means_per_token_and_per_sample():
    sums = {"nll": 8 * math.log(2), "tokens": 4.0, "samples": 2.0, "fwd_iters": 10.0, "fwd_hit_max": 1.0,
            "fwd_rel_res": 0.002}
    out = summarize_eval(sums, "bytes")
    assert out["loss"] == pytest.approx(2 * math.log(2)) and out["bpb"] == pytest.approx(2.0)
    assert (out["fwd_iters"], out["fwd_hit_max"], out["fwd_rel_res"]) == pytest.approx((5.0, 0.5, 0.001))


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sink_writes_strict_json_lines_where_told(tmp_path):
    sink = MetricsSink(tmp_path / "m.jsonl", None, enabled=True, resume_step=None)
    sink.write("train", 1, {"loss": 2.5, "bad": float("nan")})
    sink.close()
    (rec,) = read(tmp_path / "m.jsonl")
    assert (rec["kind"], rec["step"], rec["loss"], rec["bad"]) == ("train", 1, 2.5, None)
    assert not (tmp_path / "tb").exists()


def test_sink_cuts_back_to_the_resumed_step(tmp_path):
    path = tmp_path / "m.jsonl"
    sink = MetricsSink(path, None, enabled=True, resume_step=None)
    for step in (1, 2, 3):
        sink.write("train", step, {"loss": 1.0})
    sink.write("test", 3, {"loss": 1.0})
    sink.close()
    with path.open("a") as f:
        f.write('{"kind": "train", "st')  # a line cut by a hard kill
    MetricsSink(path, None, enabled=True, resume_step=2).close()
    assert [(r["kind"], r["step"]) for r in read(path)] == [("train", 1), ("train", 2)]


def test_disabled_sink_writes_nothing(tmp_path):
    sink = MetricsSink(tmp_path / "m.jsonl", tmp_path / "tb", enabled=False, resume_step=None)
    sink.write("train", 1, {"loss": 1.0})
    sink.close()
    assert list(tmp_path.iterdir()) == []
