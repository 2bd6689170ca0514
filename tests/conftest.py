"""Test setup: 8 simulated CPU devices, set before JAX is imported anywhere.

Tests run with pytest's importlib import mode (test files may share basenames across
folders); helper modules beside the tests (maps.py, parallel/harness.py, ...) are made
importable by putting tests/ and its sub-folders on sys.path.
"""
import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_here = Path(__file__).resolve().parent
for _p in [_here, *sorted(p for p in _here.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))]:
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

# The shared runs of the trainer tests (tests/runfixtures.py): one definition, so a session-scoped
# run is made once for tests/train, tests/store and tests/runtime alike.
pytest_plugins = ["runfixtures"]
