"""Local stand-ins for `gcloud compute tpus`, `ssh`, `scp` and `docker` that execute what they are asked.

A world directory (STANDIN_WORLD) holds the machines:

    hosts/<host>/homes/<user>/   a user's HOME; ssh to an unknown host or user fails like ssh
    hosts/<host>/bin/            the host's own commands, first on its PATH (a TPU worker's old python3)
    hosts/<host>/env             KEY=VALUE lines: the host's environment (nothing else crosses ssh)
    hosts/<host>/docker/<name>.json   that host's docker containers
    images/<tag>.json            `docker build` results: the Dockerfile's ENV, USER and ENTRYPOINT,
                                 with a Python environment (STANDIN_IMAGE_BIN) for its pip layer
    tpu/<name>.json              a slice: state, accelerator type, worker hosts <name>-w-<i>
    tpu-image.json               what a fresh TPU worker has: {"bin": {cmd: target}, "env": {...}}

Remote commands run as `bash -c CMD` in the user's HOME with only the host's environment, in a
session of their own, with output relayed through pipes: a client that dies (a dropped
connection) leaves them running, and they get SIGPIPE only if they write to the dead session.
Every process of a host carries STANDIN_HOST=<host>, so deleting or preempting a slice kills them.
Containers run the image's entrypoint as another uid (setpriv; the caller is root) with -e
environment only, and get SIGTERM on `docker stop`. What a stand-in does not support is an error.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

WORLD = Path(os.environ.get("STANDIN_WORLD", "/nonexistent"))
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
TPU_HOSTS = {"v4-8": 1, "v4-16": 2, "v4-32": 4}  # accelerator type -> workers (4 chips each)


class Refused(Exception):
    def __init__(self, msg: str, code: int):
        super().__init__(msg)
        self.code = code


def host_dir(host: str) -> Path:
    d = WORLD / "hosts" / host
    if not host or "/" in host or not d.is_dir():
        raise Refused(f"ssh: Could not resolve hostname {host}: Name or service not known", 255)
    return d


def host_env(host: str, user: str, home: Path) -> dict:
    h = host_dir(host)
    env = {"HOME": str(home), "USER": user, "LOGNAME": user, "SHELL": "/bin/bash", "LANG": "C.UTF-8",
           "PATH": f"{h / 'bin'}:{WORLD / 'bin'}:{SYSTEM_PATH}", "STANDIN_WORLD": str(WORLD), "STANDIN_HOST": host}
    if (h / "env").is_file():
        env.update(l.split("=", 1) for l in (h / "env").read_text().splitlines() if "=" in l)
    return env


def remote(host: str, user: str, command: str, create_home: bool = False) -> int:
    """`bash -c COMMAND` on HOST as USER, output relayed; the exit code as ssh reports it."""
    home = host_dir(host) / "homes" / user
    if create_home:
        home.mkdir(parents=True, exist_ok=True)
    if not home.is_dir():
        raise Refused(f"{user}@{host}: Permission denied (publickey).", 255)
    p = subprocess.Popen(["bash", "-c", command], cwd=home, env=host_env(host, user, home), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    relays = [threading.Thread(target=_relay, args=(src, dst)) for src, dst in
              ((p.stdout, sys.stdout.buffer), (p.stderr, sys.stderr.buffer))]
    for t in relays:
        t.start()
    for t in relays:  # like ssh: the session ends when the command exits and its output is closed
        t.join()
    rc = p.wait()
    return rc if rc >= 0 else 255


def _relay(src, dst) -> None:
    for chunk in iter(lambda: src.read1(65536), b""):
        dst.write(chunk)
        dst.flush()


def kill_tagged(tag: str) -> None:
    """SIGKILL every process whose environment holds TAG (KEY=VALUE), found by pid in /proc."""
    want = tag.encode()
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if want in (d / "environ").read_bytes().split(b"\0"):
                    os.kill(int(d.name), signal.SIGKILL)
            except OSError:
                pass


def kill_host(host: str) -> None:
    """SIGKILL every process of HOST (a deleted or preempted VM)."""
    kill_tagged(f"STANDIN_HOST={host}")


def split_user(spec: str) -> tuple[str, str]:
    user, _, host = spec.rpartition("@")
    return user or os.environ.get("USER", "root"), host


def flags(argv: list[str], valued: set[str], boolean: set[str]) -> tuple[dict, list[str]]:
    """gcloud-style --flag value / --flag=value; an unknown flag is refused like gcloud does."""
    opts, pos, i = {}, [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            name, eq, val = a.partition("=")
            if name in boolean and not eq:
                opts[name] = True
            elif name in valued:
                if not eq:
                    i += 1
                    if i >= len(argv):
                        raise Refused(f"ERROR: (gcloud) argument {name}: expected one argument", 2)
                    val = argv[i]
                opts[name] = val
            else:
                raise Refused(f"ERROR: (gcloud) unrecognized arguments: {a}", 2)
        else:
            pos.append(a)
        i += 1
    return opts, pos


# ---------------------------------------------------------------- ssh / scp
def ssh(argv: list[str]) -> int:
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] in ("-o", "-p", "-i", "-l") else 1
    if i >= len(argv):
        raise Refused("usage: ssh [options] destination command", 255)
    user, host = split_user(argv[i])
    if len(argv) == i + 1:
        raise Refused("ssh stand-in: no interactive sessions; give a command", 255)
    return remote(host, user, " ".join(argv[i + 1:]))


def scp(argv: list[str]) -> int:
    recurse, args, i = False, [], 0
    while i < len(argv):
        if argv[i] == "-r":
            recurse = True
        elif argv[i] in ("-o", "-P", "-i"):
            i += 1
        elif not argv[i].startswith("-"):
            args.append(argv[i])
        i += 1
    *srcs, dest = args
    spec, sep, path = dest.partition(":")
    if not sep or not srcs or any(":" in s for s in srcs):
        raise Refused("scp stand-in: only uploads (local files to HOST:PATH)", 1)
    user, host = split_user(spec)
    return copy_to(host, user, srcs, path or ".", recurse)


def copy_to(host: str, user: str, srcs: list[str], dest: str, recurse: bool, create_home: bool = False) -> int:
    """cp has scp's rules: several sources need an existing directory, a directory needs -r."""
    cmd = "cp " + ("-r " if recurse else "") + " ".join(map(_q, [str(Path(s).resolve()) for s in srcs])) + " " + _q(dest)
    return remote(host, user, cmd, create_home)


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


# ---------------------------------------------------------------- gcloud compute tpus
def slice_file(name: str) -> Path:
    return WORLD / "tpu" / f"{name}.json"


def read_slice(name: str, what: str) -> dict:
    f = slice_file(name)
    if not f.is_file():
        raise Refused(f"ERROR: (gcloud.compute.tpus.{what}) NOT_FOUND: {name} was not found", 1)
    return json.loads(f.read_text())


def create_slice(node: str, qr: str, acc: str) -> None:
    if acc not in TPU_HOSTS:
        raise Refused(f"ERROR: (gcloud) stand-in knows accelerator types {sorted(TPU_HOSTS)}, not {acc}", 1)
    if slice_file(node).exists():
        raise Refused(f"ERROR: (gcloud.compute.tpus.queued-resources.create) ALREADY_EXISTS: {qr}", 1)
    image = json.loads((WORLD / "tpu-image.json").read_text())
    n = TPU_HOSTS[acc]
    with socket.socket() as s:  # stands in for the slice's metadata: where process 0 listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workers = [f"{node}-w-{i}" for i in range(n)]
    for i, w in enumerate(workers):
        h = WORLD / "hosts" / w
        shutil.rmtree(h, ignore_errors=True)  # a new VM has a fresh disk
        (h / "bin").mkdir(parents=True)
        (h / "homes").mkdir()
        for cmd, target in image["bin"].items():
            (h / "bin" / cmd).symlink_to(target)
        (h / "bin" / "hostname").write_text(f"#!/bin/sh\necho {w}\n")
        (h / "bin" / "hostname").chmod(0o755)
        env = {**image["env"], "DEQDIST_COORDINATOR": f"127.0.0.1:{port}", "DEQDIST_NUM_PROCESSES": str(n),
               "DEQDIST_PROCESS_ID": str(i)}
        (h / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    slice_file(node).parent.mkdir(parents=True, exist_ok=True)
    slice_file(node).write_text(json.dumps({"qr": qr, "type": acc, "state": "READY", "workers": workers}))


def delete_slice(name: str) -> None:
    for w in read_slice(name, "queued-resources.delete")["workers"]:
        kill_host(w)
        shutil.rmtree(WORLD / "hosts" / w, ignore_errors=True)
    slice_file(name).unlink()


def preempt(name: str) -> None:
    """What Cloud TPU does to a spot slice: its VMs stop; describe says PREEMPTED."""
    s = read_slice(name, "tpu-vm.describe")
    for w in s["workers"]:
        kill_host(w)
    slice_file(name).write_text(json.dumps({**s, "state": "PREEMPTED"}))


def workers(name: str, which: str, what: str) -> list[str]:
    s = read_slice(name, what)
    if s["state"] != "READY":
        raise Refused(f"ERROR: (gcloud.compute.tpus.{what}) TPU {name} is {s['state']}", 1)
    if which == "all":
        return s["workers"]
    if not which.isdigit() or int(which) >= len(s["workers"]):
        raise Refused(f"ERROR: (gcloud.compute.tpus.{what}) invalid --worker={which}", 2)
    return [s["workers"][int(which)]]


def on_workers(hosts: list[str], job) -> int:
    """Run job(host) on every worker at once, as gcloud does for --worker=all; the first failure's code."""
    codes = [0] * len(hosts)

    def one(i):
        try:
            codes[i] = job(hosts[i])
        except Refused as e:
            print(e, file=sys.stderr)
            codes[i] = e.code
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(hosts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return next((c for c in codes if c), 0)


def gcloud(argv: list[str]) -> int:
    if argv[:2] != ["compute", "tpus"] or len(argv) < 4:
        raise Refused(f"ERROR: (gcloud) stand-in runs only 'compute tpus', not {' '.join(argv[:4])}", 2)
    group, verb, rest = argv[2], argv[3], argv[4:]
    where = {"--zone", "--project", "--format"}
    user = os.environ.get("USER", "root")
    if group == "queued-resources":
        opts, pos = flags(rest, where | {"--node-id", "--accelerator-type", "--runtime-version"},
                          {"--spot", "--force", "--quiet", "--async"})
        if "--zone" not in opts or len(pos) != 1:
            raise Refused("ERROR: (gcloud) give one queued resource name and --zone", 2)
        node = pos[0].removesuffix("-qr")
        if verb == "create":
            create_slice(opts["--node-id"], pos[0], opts["--accelerator-type"])
        elif verb == "describe":
            state = read_slice(node, "queued-resources.describe")["state"]
            print({"READY": "ACTIVE", "PREEMPTED": "SUSPENDED"}[state])
        elif verb == "delete":
            delete_slice(node)
        else:
            raise Refused(f"ERROR: (gcloud) stand-in: no queued-resources {verb}", 2)
        return 0
    if group != "tpu-vm":
        raise Refused(f"ERROR: (gcloud) stand-in: no 'compute tpus {group}'", 2)
    opts, pos = flags(rest, where | {"--worker", "--command"}, {"--recurse", "--quiet"})
    if "--zone" not in opts:
        raise Refused("ERROR: (gcloud) --zone is required", 2)
    if verb == "describe":
        print(read_slice(pos[0], "tpu-vm.describe")["state"])
        return 0
    if verb == "ssh":
        if "--command" not in opts:
            raise Refused("ERROR: (gcloud) stand-in: give --command", 2)
        hosts = workers(pos[0], opts.get("--worker", "0"), "tpu-vm.ssh")
        return on_workers(hosts, lambda h: remote(h, user, opts["--command"], create_home=True))
    if verb == "scp":
        *srcs, dest = pos
        name, _, path = dest.partition(":")
        hosts = workers(name, opts.get("--worker", "0"), "tpu-vm.scp")
        return on_workers(hosts, lambda h: copy_to(h, user, srcs, path or ".", "--recurse" in opts, True))
    raise Refused(f"ERROR: (gcloud) stand-in: no tpu-vm {verb}", 2)


if __name__ == "__main__":
    from docker_standin import docker  # noqa: E402  (beside this file)

    cmd, args = sys.argv[1], sys.argv[2:]
    try:
        sys.exit({"gcloud": gcloud, "ssh": ssh, "scp": scp, "docker": docker}[cmd](args))
    except Refused as e:
        print(e, file=sys.stderr)
        sys.exit(e.code)
