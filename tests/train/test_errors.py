"""Every bad input is one line on stderr, exit code 2, no traceback, and nothing written.

The cases run as concurrent `deqdist` subprocesses (each fails before compiling anything).
"""
import hashlib
import re
import subprocess

import numpy as np
from trainutil import MESH_2_1_4, ROOT, cli_cmd, cli_env

NEW = "{tmp}/new-run"


def _cases(tmp, ref_dir):
    (tmp / "empty.txt").write_bytes(b"")
    (tmp / "short.txt").write_bytes(b"def f(): return 1\n")
    np.save(tmp / "ids.npy", (np.arange(20000) % 300).astype(np.uint16))
    (tmp / "foreign").mkdir()
    (tmp / "foreign" / "notes.txt").write_text("mine")
    (tmp / "other.txt").write_text("x = 1\n" * 5000)
    train = ["train", "--run-dir", NEW]
    return {
        "unknown key": (train + ["solver.maxiter=3"],
                        r"unknown key 'solver.maxiter' \(did you mean 'max_iter'\?\); valid keys under 'solver'"),
        "wrong type": (train + ["train.steps=abc"], r"train.steps must be an integer, got 'abc'"),
        "inconsistent": (train + ["model.d_model=65"], r"model.d_model \(65\) must be divisible by model.n_heads"),
        "missing config": (["train", "--config", "nope.yaml", "--run-dir", NEW], r"config file 'nope.yaml' does not exist"),
        "missing data": (train + ["data.corpus=/nonexistent/corpus.txt"],
                         r"corpus path '/nonexistent/corpus.txt' does not exist"),
        "empty data": (train + [f"data.corpus={tmp}/empty.txt"], r"corpus file .*empty.txt is empty"),
        "short data": (train + [f"data.corpus={tmp}/short.txt", "model.seq_len=32"],
                       r"has \d+ tokens, fewer than seq_len\+1 = 33"),
        "ids >= vocab": (train + [f"data.corpus={tmp}/ids.npy"], r"contains token id 299 >= vocab_size 256"),
        "mesh sizes": (train + ["parallel.data=-1", "parallel.tensor=3"], r"8 devices are not divisible by 3"),
        "mesh product": (train + ["parallel.data=2", "parallel.tensor=2"], r"= 4 but there are 8 devices"),
        "batch split": (train + ["parallel.data=8", "data.global_batch_size=12"],
                        r"the token batch .* dim 0 has size 12, not divisible by the 8 devices of mesh axes "
                        r"\(data=8, fsdp=1\)"),
        "heads split": (train + MESH_2_1_4, r"parameter block/wk \(64, 2, 32\) dim 1 has size 2, not divisible by the "
                                            r"4 devices of mesh axes \(tensor=4\)"),
        "bad flag": (train + ["--bogus"], r"unrecognized arguments: --bogus"),
        "bad stop-after": (train + ["--stop-after", "0"], r"--stop-after must be a positive integer"),
        "unknown command": (["fit"], r"unknown command 'fit'; use one of train, eval"),
        "foreign run dir": (["train", "--run-dir", f"{tmp}/foreign"], r"is not a deqdist run \(no config.yaml\)"),
        "eval missing dir": (["eval", f"{tmp}/nowhere"], r"run directory .*nowhere does not exist"),
        "resume other shape": (["train", "--run-dir", ref_dir, "model.d_model=48"],
                               r"holds a model of another shape: model.d_model: 32 \(saved\) vs 48 \(new\)"),
        "resume other corpus": (["train", "--run-dir", ref_dir, f"data.corpus={tmp}/other.txt"],
                                r"was trained on corpus 'builtin-stdlib.* but data.corpus now gives 'other.txt' \{'train': 27000"),
        "generate bad key": (["generate", ref_dir, "sampler.temp=1"], r"unknown key 'sampler.temp'"),
    }


def _digest(d):
    return {p.relative_to(d): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def test_bad_inputs_exit_2_with_one_line(tmp_path, reference_run):
    ref_dir = reference_run[0]
    before = _digest(ref_dir)
    cases = _cases(tmp_path, ref_dir)
    procs = {}
    for name, (args, _) in cases.items():
        args = [str(a).replace("{tmp}", str(tmp_path)) for a in args]
        procs[name] = subprocess.Popen(cli_cmd(*args), env=cli_env(), cwd=ROOT, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    failures = []
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        lines = [l for l in err.splitlines() if l.strip()]
        pattern = cases[name][1]
        ok = proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("deqdist")
        ok = ok and re.search(pattern, lines[0]) is not None
        if not ok:
            failures.append(f"{name}: rc={proc.returncode} stderr={err[-1500:]!r} (wanted /{pattern}/)")
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "new-run").exists()  # nothing written by a refused run
    assert _digest(ref_dir) == before  # a refused resume changes nothing in the run dir
    assert sorted(p.name for p in (tmp_path / "foreign").iterdir()) == ["notes.txt"]
