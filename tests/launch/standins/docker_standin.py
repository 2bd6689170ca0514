"""The `docker` stand-in: build (reads the Dockerfile), run, stop, kill, rm, inspect, ps on one host's daemon.

The image's pip layer is a Python environment given as STANDIN_IMAGE_BIN at build time; everything
else of the image (ENV, USER, ENTRYPOINT) comes from the Dockerfile. `run` stays attached like
`docker run` without -d: its exit code is the container's, SIGTERM/SIGINT to it are proxied to the
container, and a killed client leaves the container running under its name.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from standin import SYSTEM_PATH, WORLD, Refused

RUN_VALUED = {"--name", "--gpus", "--user", "-u", "--network", "--ipc", "--shm-size", "--ulimit", "--stop-timeout",
              "-v", "--volume", "-e", "--env", "-w", "--workdir"}
RUN_BOOLEAN = {"--rm", "--init", "-i", "-t"}


def daemon() -> Path:
    d = WORLD / "hosts" / os.environ.get("STANDIN_HOST", "local") / "docker"
    d.mkdir(parents=True, exist_ok=True)
    return d


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def container(name: str) -> dict | None:
    f = daemon() / f"{name}.json"
    c = json.loads(f.read_text()) if f.is_file() else None
    if c is not None and c["rm"] and not alive(c["pid"]):  # the daemon removes --rm containers when they exit
        f.unlink(missing_ok=True)
        return None
    return c


def need(name: str) -> dict:
    c = container(name)
    if c is None:
        raise Refused(f"Error response from daemon: No such container: {name}", 1)
    return c


def build(argv: list[str]) -> int:
    tag, ctx = None, None
    i = 0
    while i < len(argv):
        if argv[i] in ("-t", "--tag"):
            tag, i = argv[i + 1], i + 1
        else:
            ctx = argv[i]
        i += 1
    if not tag or not ctx:
        raise Refused("docker build stand-in: give -t TAG and a context directory", 1)
    env, user, entry = {}, "root", []
    text = re.sub(r"\\\n", " ", (Path(ctx) / "Dockerfile").read_text())
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENV":
            env.update(dict(t.split("=", 1) for t in shlex.split(rest)))
        elif word == "USER":
            user = rest.strip()
        elif word == "ENTRYPOINT":
            entry = json.loads(rest)
    image = {"env": env, "user": user, "entrypoint": entry, "bin": os.environ["STANDIN_IMAGE_BIN"]}
    (WORLD / "images").mkdir(parents=True, exist_ok=True)
    (WORLD / "images" / f"{tag}.json").write_text(json.dumps(image))
    return 0


def parse_run(argv: list[str]) -> tuple[dict, list, str, list[str]]:
    opts, multi, i = {}, [], 0
    while i < len(argv) and argv[i].startswith("-"):
        name, eq, val = argv[i].partition("=")
        if name in RUN_BOOLEAN and not eq:
            opts[name] = True
        elif name in RUN_VALUED:
            if not eq:
                i += 1
                val = argv[i]
            if name in ("-v", "--volume", "-e", "--env", "--ulimit"):
                multi.append((name, val))
            else:
                opts[name] = val
        else:
            raise Refused(f"unknown flag: {name}\nSee 'docker run --help'.", 125)
        i += 1
    if i >= len(argv):
        raise Refused("\"docker run\" requires at least 1 argument.", 125)
    return opts, multi, argv[i], argv[i + 1:]


def run(argv: list[str]) -> int:
    opts, multi, tag, args = parse_run(argv)
    f = WORLD / "images" / f"{tag}.json"
    if not f.is_file():
        raise Refused(f"Unable to find image '{tag}' locally\ndocker: Error response from daemon: pull access "
                      f"denied for {tag.split(':')[0]}, repository does not exist.", 125)
    image = json.loads(f.read_text())
    if "--gpus" in opts and not (WORLD / "gpus").exists():
        raise Refused('docker: Error response from daemon: could not select device driver "" with capabilities: '
                      '[[gpu]].', 125)
    name = opts.get("--name") or f"standin-{os.getpid()}"
    if container(name) is not None:
        raise Refused(f'docker: Error response from daemon: Conflict. The container name "/{name}" is already in '
                      f"use. You have to remove (or rename) that container to be able to reuse that name.", 125)
    env = {"PATH": f"{image['bin']}:{SYSTEM_PATH}", "HOSTNAME": name, "HOME": "/", **image["env"],
           "STANDIN_WORLD": str(WORLD)}  # only so that the tests can clean up
    for flag, val in multi:
        if flag in ("-e", "--env"):
            k, eq, v = val.partition("=")
            env[k] = v if eq else os.environ.get(k, "")
        elif flag in ("-v", "--volume"):
            src, _, dst = val.partition(":")
            if src != dst.split(":")[0]:
                raise Refused(f"docker stand-in: mounts must keep their path (no mount namespace), got {val}", 125)
            if not Path(src).exists():  # the daemon creates a missing bind source, owned by root
                Path(src).mkdir(parents=True)
    user = opts.get("--user") or opts.get("-u") or image["user"]
    uid, _, gid = (user if user != "root" else "0").partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise Refused(f"docker stand-in: --user must be numeric (UID[:GID]), got {user}", 125)
    cmd = ["setpriv", "--reuid", uid, "--regid", gid or uid, "--clear-groups", *image["entrypoint"], *args]
    p = subprocess.Popen(cmd, env=env, cwd="/", start_new_session=True)
    record = {"pid": p.pid, "stop_timeout": int(opts.get("--stop-timeout", 10)), "rm": "--rm" in opts}
    (daemon() / f"{name}.json").write_text(json.dumps(record))
    for sig in (signal.SIGTERM, signal.SIGINT):  # --sig-proxy
        signal.signal(sig, lambda s, _f: os.killpg(p.pid, s) if alive(p.pid) else None)
    rc = p.wait()
    if record["rm"]:
        (daemon() / f"{name}.json").unlink(missing_ok=True)
    else:
        (daemon() / f"{name}.json").write_text(json.dumps({**record, "exit": rc}))
    return rc if rc >= 0 else 128 - rc


def stop(argv: list[str], sig: int = signal.SIGTERM) -> int:
    t = None
    if argv[:1] in (["-t"], ["--time"]):
        t, argv = int(argv[1]), argv[2:]
    for name in argv:
        c = need(name)
        if alive(c["pid"]):
            os.killpg(c["pid"], sig)
            deadline = time.monotonic() + (t if t is not None else c["stop_timeout"])
            while alive(c["pid"]) and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive(c["pid"]):
                os.killpg(c["pid"], signal.SIGKILL)
        print(name)
    return 0


def kill(argv: list[str]) -> int:
    sig = signal.SIGKILL
    if argv[:1] in (["-s"], ["--signal"]):
        sig, argv = signal.Signals["SIG" + argv[1].removeprefix("SIG")], argv[2:]
    for name in argv:
        c = need(name)
        if not alive(c["pid"]):
            raise Refused(f"Error response from daemon: container {name} is not running", 1)
        os.killpg(c["pid"], sig)
        print(name)
    return 0


def rm(argv: list[str]) -> int:
    force = bool(argv) and argv[0] in ("-f", "--force")
    for name in argv[1:] if force else argv:
        c = need(name)
        if alive(c["pid"]):
            if not force:
                raise Refused(f"Error response from daemon: cannot remove container \"/{name}\": container is "
                              f"running: stop the container before removing or force remove", 1)
            os.killpg(c["pid"], signal.SIGKILL)
        (daemon() / f"{name}.json").unlink(missing_ok=True)
        print(name)
    return 0


def inspect(argv: list[str]) -> int:
    name = argv[-1]
    c = need(name)
    print("running" if alive(c["pid"]) else "exited")
    return 0


def ps(argv: list[str]) -> int:
    for f in sorted(daemon().glob("*.json")):
        if "-a" in argv or alive(json.loads(f.read_text())["pid"]):
            print(f.stem)
    return 0


def docker(argv: list[str]) -> int:
    verbs = {"build": build, "run": run, "stop": stop, "kill": kill, "rm": rm, "inspect": inspect, "ps": ps}
    if not argv or argv[0] not in verbs:
        raise Refused(f"docker stand-in: no 'docker {argv[0] if argv else ''}'", 1)
    return verbs[argv[0]](argv[1:])
