"""The `deqdist` command line: parsing, help, `config`, one-line errors with exit code 2.

Training itself is exercised end to end (in subprocesses) in tests/train/.
"""
import importlib.util
import subprocess
import sys

import pytest
import yaml

from deqdist import cli
from deqdist.config import load_config


def test_overrides_mix_with_options():
    _, commands = cli.build_parsers()
    args = commands["train"].parse_intermixed_args(
        ["solver.max_iter=20", "--config", "c.yaml", "train.steps=5", "--run-dir", "r", "--stop-after", "3"])
    assert (args.config, args.run_dir, args.stop_after) == ("c.yaml", "r", 3)
    assert args.overrides == ["solver.max_iter=20", "train.steps=5"]


def test_help(capsys):
    assert cli.main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    assert "--run-dir" in capsys.readouterr().out
    assert cli.main([]) == 2


def test_config_prints_the_resolved_yaml(capsys, tmp_path):
    assert cli.main(["config", "solver.max_iter=20", "train.lr=3e-4"]) == 0
    text = capsys.readouterr().out
    assert yaml.safe_load(text)["solver"]["fwd"]["max_iter"] == 20
    (tmp_path / "c.yaml").write_text(text)
    assert load_config(tmp_path / "c.yaml").train.lr == 3e-4


@pytest.mark.parametrize("argv, message", [
    (["config", "solver.maxiter=3"], "deqdist config: error: unknown key 'solver.maxiter'"),
    (["config", "--config", "/nope.yaml"], "deqdist config: error: config file '/nope.yaml' does not exist"),
    (["train", "--stop-after", "x"], "deqdist train: error: argument --stop-after: invalid int value: 'x'"),
    (["eval"], "deqdist eval: error: the following arguments are required: RUN_DIR"),
    (["generate", "r", "--prompt", "a", "--prompt-ids", "1"], "not allowed with argument"),
    (["bench", "everything"], "deqdist bench: error: argument what: invalid choice: 'everything'"),
    (["bench", "parallel", "--run-dir", "/nope"], "deqdist bench: error: run directory /nope does not exist"),
    (["bench", "solvers", "--run-dir", "/nope"], "deqdist bench: error: `deqdist bench solvers` takes no --run-dir"),
    (["fit"], "deqdist: error: unknown command 'fit'; use one of train, eval, generate, config, info, compile, prepare, bench"),
])
def test_bad_usage_is_one_line_exit_2(capsys, argv, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_bench_lists_what_exists(capsys):
    for what in ("model", "parallel"):
        if importlib.util.find_spec(f"deqdist.bench.{what}") is None:
            assert cli.main(["bench", what]) == 2
            assert "not available in this build" in capsys.readouterr().err


def test_console_entry_point_runs():
    p = subprocess.run([sys.executable, "-m", "deqdist.cli", "config", "train.steps=70"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert yaml.safe_load(p.stdout)["train"]["steps"] == 70
    p = subprocess.run([sys.executable, "-m", "deqdist.cli", "config", "train.steps=x"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == "deqdist config: error: train.steps must be an integer, got 'x' (str)"
