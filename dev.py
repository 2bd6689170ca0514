#!/usr/bin/env python3
"""Set-up-free entry points: `python3 dev.py train` and `python3 dev.py test`.

Creates (or reuses) `.venv` beside this file, installs the project into it when
pyproject.toml changed since the last install, then runs the command inside it.
Only the Python standard library is used here, so a fresh machine needs nothing
but Python 3.11+ and pip.
"""
import hashlib
import os
import platform
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".deqdist-installed"


def extras(cmd: str) -> list[str]:
    """`train` installs deqdist alone, as a newcomer's `pip install deqdist` does; tests add their extras.

    Tests also take the `tpu` extra (libtpu, about 210 MB) so the `deqdist compile` tests run; libtpu
    ships for Linux x86-64 only, and elsewhere those tests skip. They also take `prepare` (tokenizers,
    pyarrow) so the BPE and parquet tests of `deqdist prepare` run.
    """
    if cmd != "test":
        return []
    if sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64"):
        return ["test", "prepare", "tpu"]
    return ["test", "prepare"]


def ensure_env(cmd: str) -> None:
    if not PY.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    have = STAMP.read_text().split() if STAMP.exists() else []
    # Installed already with this pyproject.toml and these extras (or a superset of them)?
    if have[:1] == [want] and set(extras(cmd)) <= set(have[1:]):
        return
    # Keep the extras installed before, so `train` after `test` does not reinstall.
    wanted = sorted(set(extras(cmd)) | (set(have[1:]) if have[:1] == [want] else set()))
    print("installing deqdist and its dependencies (first run takes a few minutes)", flush=True)
    target = f"{ROOT}[{','.join(wanted)}]" if wanted else str(ROOT)
    subprocess.check_call([str(PY), "-m", "pip", "install", "-q", "-e", target])
    STAMP.write_text(" ".join([want, *wanted]))


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("train", "test", "run"):
        print("usage: python3 dev.py train [overrides...] | test [pytest args...] | run CMD...", file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    ensure_env(cmd)
    if cmd == "train":
        args = [str(VENV / "bin" / "deqdist"), "train", *rest]
    elif cmd == "test":
        args = [str(PY), "-m", "pytest", *rest]
    else:
        args = rest
    os.chdir(ROOT)
    return subprocess.call(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
