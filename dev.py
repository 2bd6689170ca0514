#!/usr/bin/env python3
"""Set-up-free entry points: `python3 dev.py train` and `python3 dev.py test`.

Creates (or reuses) `.venv` beside this file, installs the project into it when
pyproject.toml changed since the last install, then runs the command inside it.
Only the Python standard library is used here, so a fresh machine needs nothing
but Python 3.11+ and pip.
"""
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".deqdist-installed"


def ensure_env() -> None:
    if not PY.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == want:
        return
    print("installing deqdist and its dependencies (first run takes a few minutes)", flush=True)
    subprocess.check_call([str(PY), "-m", "pip", "install", "-q", "-e", f"{ROOT}[test]"])
    STAMP.write_text(want)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("train", "test", "run"):
        print("usage: python3 dev.py train [overrides...] | test [pytest args...] | run CMD...", file=sys.stderr)
        return 2
    ensure_env()
    cmd, rest = argv[0], argv[1:]
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
