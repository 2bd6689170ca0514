"""Property tests: whatever the command line, overrides or YAML file, the CLI answers with an exit code.

Random override strings, YAML documents and argument lists go through
`deqdist.cli.main` in-process; an exception escaping it (a traceback for a
user) fails the test. A refusal must be exit 2 with one line on stderr.
The commands are kept from starting work: `config` only prints, and
train / eval / generate get a run directory that cannot exist (under a file).
"""
from __future__ import annotations

import dataclasses

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deqdist import cli
from deqdist.config import Config
from deqdist.config.layers import _defaults_flat

KEYS = sorted(_defaults_flat()) + ["solver.max_iter", "solver.tol", "train", "model.d_model.x", "nope.key", ""]
SURROGATES = ["\udcff", "\udc80abc", "\ud800"]  # what Python makes of non-UTF-8 bytes in argv
texty = st.one_of(st.text(max_size=12), st.sampled_from(SURROGATES))
scalar = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from([".inf", "-.inf", ".nan", "nan", "inf", "1e400", "null", "~", "true", "[1,", "{a: 1}", "[]",
                     "[0.8, 0.1, 0.1]", "''", "0x10", "1_000"]),
    texty,
)
override = st.one_of(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), scalar), texty)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _one_line_or_ok(rc: int, err: str) -> None:
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        lines = [l for l in err.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("deqdist"), err


@SETTINGS
@given(st.lists(override, max_size=5))
def test_random_overrides(capsys, overrides):
    try:
        rc = cli.main(["config", *overrides])
    except SystemExit as e:  # "-h" (or an abbreviation of --help) among them prints help and exits 0
        assert e.code == 0 and "usage:" in capsys.readouterr().out, overrides
        return
    _one_line_or_ok(rc, capsys.readouterr().err)


yaml_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8)),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children,
                                                                                max_size=3)),
    max_leaves=8,
)
SECTIONS = [f.name for f in dataclasses.fields(Config)]
section_keys = {s: [k.split(".", 1)[1] for k in KEYS if k.startswith(s + ".")] for s in SECTIONS}
document = st.dictionaries(
    st.sampled_from(SECTIONS + ["bogus"]),
    st.one_of(yaml_value, st.dictionaries(st.sampled_from(sum(section_keys.values(), []) + ["x"]), yaml_value,
                                          max_size=4)),
    max_size=4,
)


@SETTINGS
@given(st.one_of(document.map(lambda d: yaml.safe_dump(d).encode()), st.binary(max_size=64),
                 st.text(max_size=64).map(str.encode)))
def test_random_yaml_documents(capsys, tmp_path, raw):
    path = tmp_path / "c.yaml"
    path.write_bytes(raw)
    rc = cli.main(["config", "--config", str(path)])
    _one_line_or_ok(rc, capsys.readouterr().err)


FLAGS = {
    "train": ["--config", "--stop-after", "--run-dir"],
    "eval": ["--split", "--batches"],
    "generate": ["--prompt", "--prompt-ids", "--tokens", "--temperature", "--seed"],
}
arg = st.one_of(override, st.sampled_from(sum(FLAGS.values(), []) + ["--bogus", "-x", "--"]), scalar)


@SETTINGS
@given(st.sampled_from(sorted(FLAGS)), st.lists(arg, max_size=6))
def test_random_argument_lists(capsys, tmp_path, cmd, args):
    blocker = tmp_path / "file"
    blocker.write_text("")
    where = str(blocker / "run")  # never a usable run directory: nothing can start or be written
    argv = [cmd, "--run-dir", where, *args] if cmd == "train" else [cmd, where, *args]
    if "--run-dir" in args or "--config" in args:
        argv = [cmd, "--run-dir", where, *[a for a in args if a not in ("--run-dir", "--config")]] \
            if cmd == "train" else argv
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # an abbreviation of --help (e.g. "--he") prints help and exits 0
        assert e.code == 0 and "usage:" in capsys.readouterr().out, argv
        return
    err = capsys.readouterr().err
    assert rc == 2, (argv, err)
    _one_line_or_ok(rc, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
