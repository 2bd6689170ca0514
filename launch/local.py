#!/usr/bin/env python3
"""Run `deqdist train` as N processes on this machine (standard library only).

    python3 launch/local.py --processes 2 --devices 4 -- --run-dir runs/x parallel.data=2
    python3 launch/local.py --gpus -- --run-dir runs/x            # one process per local GPU

Each process gets M simulated CPU devices (XLA_FLAGS) or, with --gpus, one GPU
(JAX_LOCAL_DEVICE_IDS); all join a coordinator on 127.0.0.1 at a free port.
Everything after `--` goes to `deqdist train`. Before starting, `deqdist info`
checks the config's mesh on the same devices (--no-preflight skips it).

Each process logs to LOG_DIR/process_<i>.log (default RUN_DIR/logs/<time>).
SIGTERM / SIGINT are forwarded to every process (they checkpoint and stop).
When one process exits non-zero the others are stopped, and the exit code is
that process's. A process that JAX aborted (a signal, or the fatal-error exit
of a lost coordinator) is reported here in one line with the newest complete
checkpoint and the resume command. LOG_DIR/status.json records each process's
pid and, at the end, its exit code.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PROG = "launch/local.py"
HANDLED = (0, 2, 3, 130)  # deqdist's own exit codes: done, bad input, job failure (one line printed), Ctrl-C
GRACE = 120  # seconds the others get to stop after one failed, before they are killed


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message}; see `{PROG} --help`")


def parse(argv: list[str]) -> argparse.Namespace:
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0],
                epilog="example: python3 launch/local.py -n 2 -d 4 -- --run-dir runs/x parallel.data=2 "
                       "parallel.tensor=4")
    p.add_argument("-n", "--processes", type=int, help="number of processes (default 2; with --gpus: one per GPU)")
    p.add_argument("-d", "--devices", type=int, default=4, help="simulated CPU devices per process (default 4)")
    p.add_argument("--gpus", action="store_true", help="one process per local GPU instead of simulated CPU devices")
    p.add_argument("--port", type=int, help="coordinator port on 127.0.0.1 (default: a free one)")
    p.add_argument("--log-dir", help="per-process logs (default RUN_DIR/logs/<time>)")
    p.add_argument("--init-timeout", type=float, default=120, help="seconds to wait for every process to join")
    p.add_argument("--python", default=sys.executable, help="interpreter that has deqdist installed")
    p.add_argument("--no-preflight", action="store_true", help="skip the `deqdist info` check")
    p.add_argument("--dry-run", action="store_true", help="print the commands, environments and logs; run nothing")
    if "--" in argv:
        i = argv.index("--")
        argv, train = argv[:i], argv[i + 1:]
    else:
        train = []
    a = p.parse_args(argv)
    a.train = train
    if a.gpus and a.processes is None:
        a.processes = _count_gpus()
    a.processes = 2 if a.processes is None else a.processes
    if a.processes < 1:
        raise UsageError(f"--processes must be >= 1, got {a.processes}")
    if a.devices < 1:
        raise UsageError(f"--devices must be >= 1, got {a.devices}")
    if a.port is not None and not 1 <= a.port <= 65535:
        raise UsageError(f"--port {a.port} is outside 1-65535")
    if not a.init_timeout > 0:
        raise UsageError(f"--init-timeout must be > 0, got {a.init_timeout}")
    a.run_dir = _option(train, "--run-dir")
    if a.run_dir is None:
        raise UsageError("give the run directory after `--`, e.g. `-- --run-dir runs/x` (every process shares it)")
    for flag in ("--coordinator", "--num-processes", "--process-id", "--distributed"):
        if _option(train, flag, is_flag=True) is not None:
            raise UsageError(f"{flag} is set by the launcher; remove it from the train arguments")
    return a


def _option(args: list[str], name: str, is_flag: bool = False) -> str | None:
    for i, tok in enumerate(args):
        if tok == name:
            return "" if is_flag else (args[i + 1] if i + 1 < len(args) else None)
        if tok.startswith(name + "="):
            return tok.split("=", 1)[1]
    return None


def _count_gpus() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        raise UsageError("--gpus needs nvidia-smi to count the GPUs; give --processes N") from None
    n = sum(1 for line in out.splitlines() if line.startswith("GPU "))
    if n == 0:
        raise UsageError("--gpus: nvidia-smi lists no GPU")
    return n


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _xla_flags(devices: int) -> str:
    """The inherited XLA_FLAGS with this launcher's simulated device count (replacing any other)."""
    keep = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    return " ".join([*keep, f"--xla_force_host_platform_device_count={devices}"])


def deqdist(python: str, *args: str) -> list[str]:
    return [python, "-m", "deqdist.cli", *args]


def plan(a: argparse.Namespace) -> dict:
    """Commands, environments (only what the launcher sets) and log files; no side effects."""
    port = a.port or _free_port()
    log_dir = Path(a.log_dir) if a.log_dir else Path(a.run_dir) / "logs" / time.strftime("%Y%m%d-%H%M%S")
    procs = []
    for i in range(a.processes):
        env = {"JAX_PLATFORMS": "cuda", "JAX_LOCAL_DEVICE_IDS": str(i)} if a.gpus else {
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": _xla_flags(a.devices),
        }
        env["PYTHONUNBUFFERED"] = "1"
        cmd = deqdist(a.python, "train", *a.train, "--coordinator", f"127.0.0.1:{port}",
                      "--num-processes", str(a.processes), "--process-id", str(i),
                      "--init-timeout", f"{a.init_timeout:g}")
        procs.append({"cmd": cmd, "env": env, "log": str(log_dir / f"process_{i}.log")})
    pre = None
    if not a.no_preflight:
        # The same devices in one process: the mesh and layout checks see what the job will see.
        env = {"JAX_PLATFORMS": "cuda"} if a.gpus else {
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": _xla_flags(a.processes * a.devices),
        }
        keep = [t for t in a.train if "=" in t and not t.startswith("-")]
        for opt in ("--config", "--run-dir"):
            v = _option(a.train, opt)
            if v is not None:
                keep += [opt, v]
        pre = {"cmd": deqdist(a.python, "info", *keep), "env": env}
    return {"preflight": pre, "processes": procs, "log_dir": str(log_dir)}


def _show(env: dict, cmd: list[str]) -> str:
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(cmd)


def dry_run(p: dict) -> None:
    if p["preflight"]:
        print(f"# preflight\n{_show(p['preflight']['env'], p['preflight']['cmd'])}")
    for i, proc in enumerate(p["processes"]):
        print(f"# process {i}, log {proc['log']}\n{_show(proc['env'], proc['cmd'])}")


def newest_checkpoint(run_dir: str) -> str:
    # Sealed checkpoints only: deqdist writes this checksum manifest once a save is whole.
    d = Path(run_dir) / "checkpoints"
    steps = [int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / "deqdist.sha256.json").is_file()] \
        if d.is_dir() else []
    return f"newest complete checkpoint: step {max(steps)} in {d}" if steps else f"no checkpoint in {d} yet"


def _describe(rc: int) -> str:
    if rc < 0:
        return f"killed by {signal.Signals(-rc).name}"
    return "aborted by JAX (the coordination service reported a lost peer)" if rc == 134 else f"exit code {rc}"


def run(a: argparse.Namespace, p: dict) -> int:
    if p["preflight"]:
        pre = subprocess.run(p["preflight"]["cmd"], env={**os.environ, **p["preflight"]["env"]},
                             capture_output=True, text=True)
        if pre.returncode != 0:
            sys.stderr.write(pre.stderr.strip().splitlines()[-1] + "\n" if pre.stderr.strip() else
                             f"{PROG}: preflight `deqdist info` failed ({_describe(pre.returncode)})\n")
            return pre.returncode
    log_dir = Path(p["log_dir"])
    log_dir.mkdir(parents=True, exist_ok=True)
    children, logs = [], []
    for proc in p["processes"]:
        f = open(proc["log"], "w")
        logs.append(f)
        children.append(subprocess.Popen(proc["cmd"], env={**os.environ, **proc["env"]}, stdout=f,
                                         stderr=subprocess.STDOUT, start_new_session=True))
    status = log_dir / "status.json"

    def write_status(codes=None):
        tmp = status.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pids": [c.pid for c in children], "exit_codes": codes,
                                   "logs": [proc["log"] for proc in p["processes"]]}) + "\n")
        os.replace(tmp, status)

    write_status()
    print(f"{PROG}: {len(children)} processes, logs in {log_dir}", flush=True)

    def forward(signum, _frame):
        for c in children:
            if c.poll() is None:
                c.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    first_bad: int | None = None
    kill_at = None
    while any(c.poll() is None for c in children):
        for i, c in enumerate(children):
            if first_bad is None and c.poll() not in (None, 0):
                first_bad, kill_at = i, time.monotonic() + GRACE
                for other in children:  # the job cannot go on without it
                    if other.poll() is None:
                        other.terminate()
        if kill_at is not None and time.monotonic() > kill_at:
            for c in children:
                if c.poll() is None:
                    c.kill()
        time.sleep(0.2)
    for f in logs:
        f.close()
    codes = [c.returncode for c in children]
    write_status(codes)
    if first_bad is None:
        return 0
    rc = codes[first_bad]
    if rc not in HANDLED:
        print(f"{PROG}: error: lost process {first_bad} of {len(children)} ({_describe(rc)}, log "
              f"{p['processes'][first_bad]['log']}); {newest_checkpoint(a.run_dir)}; resume with the same "
              f"command: {shlex.join([sys.executable, PROG, *sys.argv[1:]])}", file=sys.stderr, flush=True)
        return 3
    last = _last_line(p["processes"][first_bad]["log"])
    if last:
        print(f"{PROG}: process {first_bad}: {last}", file=sys.stderr, flush=True)
    return rc


def _last_line(path: str) -> str:
    lines = [l for l in Path(path).read_text(errors="replace").splitlines() if l.strip()]
    return lines[-1] if lines else ""


def main(argv: list[str]) -> int:
    try:
        a = parse(argv)
        p = plan(a)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if a.dry_run:
        dry_run(p)
        return 0
    return run(a, p)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
