"""The catalogue of bad input: each case is one line on stderr, exit 2, no traceback, nothing written.

Cases run in-process through `deqdist.cli.main` (an exception escaping it fails
the case with its traceback). Run-dir cases work on a copy of the shared
reference run, damaged as the case says. "Nothing written" compares the
digest of every file under the case's directory before and after.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from deqdist import cli
from deqdist.store.lock import RunLock

BAD_UTF8 = b"\xff\xfe".decode("utf-8", "surrogateescape")  # how Python passes non-UTF-8 argv bytes


def _write(rel: str, data: bytes | str):
    def setup(tmp: Path, run: Path) -> None:
        p = Path(rel.format(tmp=tmp, run=run))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    return setup


def _damage_all_checkpoints(tmp: Path, run: Path) -> None:
    for man in (run / "checkpoints").glob("*/deqdist.sha256.json"):
        man.unlink()


def _truncate(rel: str):
    def setup(tmp: Path, run: Path) -> None:
        (run / rel).write_bytes(b"")
    return setup


T = ["train", "--run-dir", "{tmp}/new"]
G = ["generate", "{run}"]
E = ["eval", "{run}"]

# name: (setup or None, argv, regex the one stderr line must match)
CASES = {
    # ---- overrides: keys, types, numbers that are not finite or do not fit
    "unknown key": (None, ["config", "train.lrr=1"], r"unknown key 'train.lrr' \(did you mean 'lr'"),
    "unknown section": (None, ["config", "optim.lr=1"], r"unknown key 'optim.lr'"),
    "no equals": (None, ["config", "train.lr"], r"must look like key=value"),
    "empty key part": (None, ["config", "train..lr=1"], r"malformed key"),
    "section as value": (None, ["config", "train=1"], r"is a section, not a value"),
    "value under value": (None, ["config", "train.lr.x=1"], r"is a value, not a section"),
    "int as text": (None, ["config", "train.steps=abc"], r"train.steps must be an integer"),
    "int as float": (None, ["config", "train.steps=1.5"], r"train.steps must be an integer"),
    "int too big": (None, ["config", "train.steps=99999999999999999999"], r"train.steps must fit in 32 bits"),
    "int bool": (None, ["config", "train.steps=true"], r"train.steps must be an integer"),
    "lr inf": (None, ["config", "train.lr=.inf"], r"train.lr must be a finite number"),
    "lr -inf": (None, ["config", "train.lr=-.inf"], r"train.lr must be a finite number"),
    "lr nan": (None, ["config", "train.lr=.nan"], r"train.lr must be a finite number"),
    "lr overflow": (None, ["config", "train.lr=1e400"], r"train.lr must be a finite number"),
    "lr text inf": (None, ["config", "train.lr=inf"], r"train.lr must be a finite number"),
    "clip nan": (None, ["config", "train.clip_norm=nan"], r"train.clip_norm must be a finite number"),
    "temperature nan": (None, ["config", "logging.sample_temperature=.nan"],
                        r"logging.sample_temperature must be a finite number"),
    "solver tol nan": (None, ["config", "solver.tol=.nan"], r"solver.fwd.tol must be a finite number"),
    "lr zero": (None, ["config", "train.lr=0"], r"train.lr must be > 0"),
    "seed negative": (None, ["config", "train.seed=-1"], r"train.seed must be >= 0"),
    "max_bad_steps 0": (None, ["config", "train.max_bad_steps=0"], r"train.max_bad_steps must be a positive"),
    "diverged frac 2": (None, ["config", "train.max_diverged_frac=2"], r"max_diverged_frac must be in \[0, 1\]"),
    "keep 0": (None, ["config", "checkpoint.keep=0"], r"checkpoint.keep must be a positive integer"),
    "progress choice": (None, ["config", "logging.progress=fancy"], r"logging.progress must be one of"),
    "schedule choice": (None, ["config", "train.schedule=exp"], r"train.schedule must be one of"),
    "warm-up > steps": (None, ["config", "train.steps=10", "train.warmup_explicit_steps=20"],
                        r"exceeds train.steps"),
    "unparsable value": (None, ["config", "data.split_fractions=[0.8,"], r"cannot parse value"),
    "coupled conflict": (None, ["config", "model.seq_len=32", "data.seq_len=64"], r"disagree; they are one setting"),
    "override not utf-8": (None, ["config", "logging.sample_prompt=" + BAD_UTF8], r"override is not valid UTF-8"),
    "key not utf-8": (None, ["config", "train.l" + BAD_UTF8 + "=1"], r"override is not valid UTF-8"),
    # ---- config files
    "config missing": (None, ["config", "--config", "{tmp}/nope.yaml"], r"config file .*nope.yaml' does not exist"),
    "config is a dir": (_write("{tmp}/d/x", ""), ["config", "--config", "{tmp}/d"], r"does not exist"),
    "config not utf-8": (_write("{tmp}/c.yaml", b"train:\n  lr: \xff\n"), ["config", "--config", "{tmp}/c.yaml"],
                         r"is not UTF-8 text \(byte 13\)"),
    "config not yaml": (_write("{tmp}/c.yaml", "train: [1,\n"), ["config", "--config", "{tmp}/c.yaml"],
                        r"is not valid YAML at line"),
    "config a list": (_write("{tmp}/c.yaml", "- 1\n- 2\n"), ["config", "--config", "{tmp}/c.yaml"],
                      r"must hold a mapping of sections, got list"),
    "config int key": (_write("{tmp}/c.yaml", "1: 2\n"), ["config", "--config", "{tmp}/c.yaml"],
                       r"key 1 under 'top level' is not a string"),
    "config section scalar": (_write("{tmp}/c.yaml", "train: 5\n"), ["config", "--config", "{tmp}/c.yaml"],
                              r"'train' is a section and must be a mapping"),
    "config nan": (_write("{tmp}/c.yaml", "train:\n  lr: .nan\n"), ["config", "--config", "{tmp}/c.yaml"],
                   r"train.lr must be a finite number"),
    "config huge int": (_write("{tmp}/c.yaml", "train:\n  steps: 123456789012345\n"),
                        ["config", "--config", "{tmp}/c.yaml"], r"train.steps must fit in 32 bits"),
    "config path not utf-8": (None, ["config", "--config", "{tmp}/" + BAD_UTF8], r"--config is not valid UTF-8"),
    # ---- command line
    "unknown command": (None, ["fit"], r"unknown command 'fit'"),
    "bad flag": (None, T + ["--bogus"], r"unrecognized arguments: --bogus"),
    "stop-after 0": (None, T + ["--stop-after", "0"], r"--stop-after must be a positive integer"),
    "stop-after text": (None, T + ["--stop-after", "x"], r"argument --stop-after: invalid int value"),
    "run dir not utf-8": (None, ["train", "--run-dir", "{tmp}/" + BAD_UTF8], r"the run directory is not valid UTF-8"),
    "eval batches 0": (None, E + ["--batches", "0"], r"--batches must be a positive integer"),
    "eval split": (None, E + ["--split", "train"], r"argument --split: invalid choice"),
    "generate temperature nan": (None, G + ["--temperature", "nan"], r"--temperature must be a finite number"),
    "generate temperature inf": (None, G + ["--temperature", "inf"], r"--temperature must be a finite number"),
    "generate temperature < 0": (None, G + ["--temperature", "-1"], r"--temperature must be a finite number"),
    "generate tokens < 0": (None, G + ["--tokens", "-1"], r"--tokens must be an integer >= 0"),
    "generate tokens huge": (None, G + ["--tokens", str(2**40)], r"--tokens must be an integer >= 0"),
    "generate seed huge": (None, G + ["--seed", str(2**70)], r"--seed must be an integer"),
    "generate ids text": (None, G + ["--prompt-ids", "a,b"], r"--prompt-ids must be comma-separated integers"),
    "generate ids empty": (None, G + ["--prompt-ids", ","], r"--prompt-ids is empty"),
    "generate ids >= vocab": (None, G + ["--prompt-ids", "1,99999"], r"prompt ids \[99999\] are outside"),
    "generate prompt empty": (None, G + ["--prompt", ""], r"--prompt is empty"),
    "generate prompt not utf-8": (None, G + ["--prompt", BAD_UTF8], r"--prompt is not valid UTF-8"),
    "bench unknown": (None, ["bench", "disk"], r"argument what: invalid choice"),
    "bench repeats 0": (None, ["bench", "solvers", "--repeats", "0"], r"--repeats must be a positive integer"),
    # ---- run directories and file-system refusals
    "train run dir is a file": (_write("{tmp}/f", "x"), ["train", "--run-dir", "{tmp}/f"],
                                r"exists and is not a directory"),
    "train run dir under a file": (_write("{tmp}/f", "x"), ["train", "--run-dir", "{tmp}/f/run"],
                                   r"is not a directory"),
    "train foreign dir": (_write("{tmp}/foreign/notes.txt", "mine"), ["train", "--run-dir", "{tmp}/foreign"],
                          r"is not a deqdist run \(no config.yaml\)"),
    "eval missing dir": (None, ["eval", "{tmp}/nowhere"], r"nowhere does not exist"),
    "eval not a run": (_write("{tmp}/foreign/notes.txt", "mine"), ["eval", "{tmp}/foreign"],
                       r"is not a deqdist run directory"),
    "eval empty config.yaml": (_truncate("config.yaml"), E, r"config.yaml cannot be loaded \(it is empty\)"),
    "eval garbled config.yaml": (_write("{run}/config.yaml", "train: [\n"), E, r"config.yaml cannot be loaded"),
    "eval config.yaml not utf-8": (_write("{run}/config.yaml", b"\xff\xfe\x00"), E, r"is not UTF-8 text"),
    "train resume empty config.yaml": (_truncate("config.yaml"), ["train", "--run-dir", "{run}"],
                                       r"config.yaml cannot be loaded \(it is empty\)"),
    "train resume damaged run.json": (_write("{run}/run.json", '[{"start'), ["train", "--run-dir", "{run}"],
                                      r"run.json is damaged \(JSONDecodeError\)"),
    "train resume damaged corpus.json": (_write("{run}/corpus.json", "{"), ["train", "--run-dir", "{run}"],
                                         r"corpus.json is damaged"),
    "generate damaged corpus.json": (_write("{run}/corpus.json", b"\x00\xff"), G, r"corpus.json is damaged"),
    "eval no checkpoints": (lambda tmp, run: shutil.rmtree(run / "checkpoints"), E, r"has no checkpoints yet"),
    "eval all checkpoints unsealed": (_damage_all_checkpoints, E,
                                      r"none of the 3 checkpoints .* is usable \(24: not sealed"),
    "train all checkpoints unsealed": (_damage_all_checkpoints, ["train", "--run-dir", "{run}"],
                                       r"none of the 3 checkpoints .* to start this run over, move"),
    "resume other shape": (None, ["train", "--run-dir", "{run}", "model.d_model=48"],
                           r"holds a model of another shape"),
}


def _digest(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def case_dir(tmp_path, reference_run):
    run = tmp_path / "run"
    shutil.copytree(reference_run[0], run, ignore=shutil.ignore_patterns("train.lock"))
    return tmp_path, run


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, case_dir, capsys):
    tmp, run = case_dir
    setup, argv, pattern = CASES[name]
    if setup is not None:
        setup(tmp, run)
    argv = [a.format(tmp=tmp, run=run) for a in argv]
    before = _digest(tmp)
    capsys.readouterr()
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    lines = [l for l in err.splitlines() if l.strip()]
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("deqdist"), err
    assert "Traceback" not in err
    assert re.search(pattern, lines[0]), (pattern, lines[0])
    assert _digest(tmp) == before, "a refused command wrote files"


def test_second_trainer_is_refused_naming_the_holder(case_dir, capsys):
    tmp, run = case_dir
    lock = RunLock(run)  # a live holder (this process)
    try:
        before = _digest(tmp)
        rc = cli.main(["train", "--run-dir", str(run), "train.steps=30"])
    finally:
        lock.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "is being trained by pid" in err[0] and "on host" in err[0]
    assert _digest(tmp) == before


def test_catalogue_is_large_enough():
    assert len(CASES) >= 50
    assert json.dumps(sorted(CASES))  # names are plain text
