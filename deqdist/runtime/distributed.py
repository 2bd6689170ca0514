"""Multi-host start-up and failure handling: one process per host, `jax.distributed.initialize` first.

Triggered by flags (--coordinator HOST:PORT --num-processes N --process-id I),
by the same values in the environment (DEQDIST_COORDINATOR,
DEQDIST_NUM_PROCESSES, DEQDIST_PROCESS_ID), or by --distributed / DEQDIST_DISTRIBUTED=1
alone, which lets JAX discover the cluster itself (TPU pods, SLURM, ...).

Joining is bounded: a process waits at most --init-timeout (DEQDIST_INIT_TIMEOUT,
default 300 s) for the coordinator and its peers, says so every ~15 s, and
then exits with EXIT_JOB and one line. JAX's own deadline is set later than
ours because JAX aborts the process with a C++ fatal log when it expires.

Once joined, every process publishes a heartbeat counter in the coordination
service's key-value store; a peer whose counter stops for DEQDIST_PEER_TIMEOUT
seconds (default 60) is lost, and the survivors exit with one line naming it,
the newest complete checkpoint and the resume command. JAX's own heartbeat
deadline is set longer, for the same reason. When the coordinator process
itself dies, JAX aborts the survivors at once; the launcher that started them
reports the same line (see launch/local.py).
"""
from __future__ import annotations

import inspect
import os
import socket
import sys
import threading
import time
from pathlib import Path

from deqdist.typed_config import ConfigError

EXIT_JOB = 3  # the job failed (a peer never came or was lost); the run dir is intact, resume it
PROGRESS_EVERY = 15.0
DEFAULT_INIT_TIMEOUT = 300.0
DEFAULT_PEER_TIMEOUT = 60.0
_KV_ALIVE = "deqdist/alive/"
_KV_DONE = "deqdist/done/"


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        raise ConfigError(f"environment variable {name}={v!r} must be an integer") from None


def _seconds(value, what: str) -> float:
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number of seconds, got {value!r}") from None
    if not s > 0:
        raise ConfigError(f"{what} must be > 0 seconds, got {value!r}")
    return s


def init_timeout(flag: float | None) -> float:
    if flag is not None:
        return _seconds(flag, "--init-timeout")
    env = os.environ.get("DEQDIST_INIT_TIMEOUT")
    return _seconds(env, "DEQDIST_INIT_TIMEOUT") if env else DEFAULT_INIT_TIMEOUT


def peer_timeout() -> float:
    env = os.environ.get("DEQDIST_PEER_TIMEOUT")
    return _seconds(env, "DEQDIST_PEER_TIMEOUT") if env else DEFAULT_PEER_TIMEOUT


def parse_coordinator(address: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT or [IPv6]:PORT; ConfigError unless the port is valid and the host resolves."""
    hint = "give --coordinator HOST:PORT, e.g. 10.0.0.1:12355 (the address of process 0)"
    host, sep, port_s = address.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"--coordinator {address!r} has no port; {hint}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_s)
    except ValueError:
        raise ConfigError(f"--coordinator {address!r}: port {port_s!r} is not a number; {hint}") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"--coordinator {address!r}: port {port} is outside 1-65535; {hint}")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(f"--coordinator {address!r}: host {host!r} does not resolve ({e}); {hint}") from None
    return host, port


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _fail(msg: str) -> None:
    """One line on stderr, then exit without running JAX's exit hooks (its shutdown barrier waits for the lost peer)."""
    prog = "deqdist " + sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "deqdist"
    sys.stdout.flush()
    print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)
    os._exit(EXIT_JOB)


class _JoinWatch(threading.Thread):
    """Prints progress while initialize() blocks in C++ and ends the process at the deadline."""

    def __init__(self, where: str, coord: tuple[str, int] | None, pid: int | None, n: int | None, timeout: float):
        super().__init__(daemon=True, name="deqdist-join-watch")
        self.where, self.coord, self.pid, self.n, self.timeout = where, coord, pid, n, timeout
        self.done = threading.Event()

    def _who(self) -> str:
        return f"process {self.pid} of {self.n}" if self.pid is not None else "this process"

    def _coordinator_up(self) -> bool:
        return self.pid == 0 or (self.coord is not None and _reachable(*self.coord))

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.done.wait(min(PROGRESS_EVERY, max(0.0, t0 + self.timeout - time.monotonic()))):
            waited = time.monotonic() - t0
            up = self._coordinator_up()
            if waited >= self.timeout:
                if up:
                    what = (f"not all {self.n or 'the'} processes joined the coordinator at {self.where}; start every "
                            f"process with the same --coordinator and --num-processes")
                else:
                    what = (f"no coordinator answered at {self.where}; start process 0 there (same --num-processes) "
                            f"or fix --coordinator")
                _fail(f"{self._who()} gave up after {waited:.0f} s (--init-timeout): {what}, or raise --init-timeout")
            state = "waiting for the other processes at" if up else "waiting for the coordinator at"
            print(f"deqdist: {state} {self.where}, {self._who()}, {waited:.0f} s", file=sys.stderr, flush=True)


class PeerWatch(threading.Thread):
    """Heartbeats through the coordination service; a silent peer ends this process with one line."""

    def __init__(self, client, pid: int, n: int, timeout: float):
        super().__init__(daemon=True, name="deqdist-peer-watch")
        self.client, self.pid, self.n, self.timeout = client, pid, n, timeout
        self.interval = min(2.0, timeout / 5)
        self.stopped = threading.Event()
        self.run_dir: Path | None = None

    def run(self) -> None:
        beat = 0
        seen: dict[int, tuple[str, float]] = {}
        unreachable_since: float | None = None
        while not self.stopped.wait(self.interval):
            now = time.monotonic()
            beat += 1
            try:
                self.client.key_value_set(f"{_KV_ALIVE}{self.pid}", str(beat), allow_overwrite=True)
                alive = {int(k.rsplit("/", 1)[-1]): v for k, v in self.client.key_value_dir_get(_KV_ALIVE)}
                done = {int(k.rsplit("/", 1)[-1]) for k, _ in self.client.key_value_dir_get(_KV_DONE)}
                unreachable_since = None
            except Exception:  # the coordination service (process 0) is gone or frozen
                if self.stopped.is_set():
                    return
                unreachable_since = unreachable_since or now
                if now - unreachable_since > self.timeout:
                    self.lost(0, f"the coordinator has not answered for {self.timeout:.0f} s")
                continue
            for p in range(self.n):
                if p == self.pid or p in done:
                    continue
                v = alive.get(p)
                if p not in seen or seen[p][0] != v:
                    seen[p] = (v, now)
                elif now - seen[p][1] > self.timeout:
                    self.lost(p, f"no heartbeat for {self.timeout:.0f} s")

    def lost(self, p: int, why: str) -> None:
        if self.stopped.is_set():
            return
        _fail(lost_message(p, self.n, why, self.run_dir))

    def stop(self, finished: bool) -> None:
        if finished:
            try:
                self.client.key_value_set(f"{_KV_DONE}{self.pid}", "1", allow_overwrite=True)
            except Exception:
                pass
        self.stopped.set()


def newest_checkpoint(run_dir: Path) -> int | None:
    """Highest sealed step in RUN_DIR/checkpoints (sealed: saved whole and checksummed, see checkpoint.py)."""
    from deqdist.store.checkpoint import is_sealed

    d = Path(run_dir) / "checkpoints"
    steps = [int(p.name) for p in d.iterdir() if p.name.isdigit() and is_sealed(p)] if d.is_dir() else []
    return max(steps, default=None)


def lost_message(p: int | None, n: int, why: str, run_dir: Path | None) -> str:
    who = f"process {p} of {n}" + (" (the coordinator)" if p == 0 else "") if p is not None else "a peer process"
    msg = f"lost {who}: {why}"
    if run_dir is not None:
        step = newest_checkpoint(run_dir)
        msg += (f"; newest complete checkpoint: step {step} in {run_dir}/checkpoints" if step is not None
                else f"; no checkpoint in {run_dir} yet")
        msg += (f"; resume with the same command on every process, or on one host: "
                f"deqdist train --run-dir {run_dir}")
    return msg


_watch: PeerWatch | None = None


def joined() -> bool:
    """Whether this process has joined a multi-process job (JAX then runs an exit barrier with its peers)."""
    import jax

    return jax.distributed.is_initialized()


def set_run_dir(run_dir: Path) -> None:
    """Name this run dir in the lost-peer line (its newest checkpoint, the resume command)."""
    if _watch is not None:
        _watch.run_dir = Path(run_dir)


def finished() -> None:
    """This process is done on purpose: peers must not count it as lost."""
    if _watch is not None:
        _watch.stop(finished=True)


def failed(exc: BaseException) -> None:
    """A runtime error in the main thread: if a collective failed because a peer went away, name it and exit."""
    import jax

    if _watch is None or not isinstance(exc, getattr(jax.errors, "JaxRuntimeError", RuntimeError)):
        return
    deadline = time.monotonic() + _watch.timeout + 3 * _watch.interval
    while time.monotonic() < deadline:  # the watch thread exits the process once the peer's heartbeat stops
        time.sleep(0.5)
    first = next((l for l in str(exc).splitlines() if l.strip()), type(exc).__name__)[:200]
    _fail(lost_message(None, _watch.n, f"a collective failed ({first})", _watch.run_dir))


def _client():
    """JAX's coordination-service client (private API: without it there is no peer watch, JAX's own remains)."""
    try:
        from jax._src import distributed as jd
    except ImportError:
        return None
    client = getattr(getattr(jd, "global_state", None), "client", None)
    return client if all(hasattr(client, m) for m in ("key_value_set", "key_value_dir_get")) else None


def maybe_initialize(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, auto: bool = False,
                     timeout: float | None = None) -> bool:
    """Call jax.distributed.initialize when asked to; returns whether it did."""
    global _watch
    coordinator = coordinator or os.environ.get("DEQDIST_COORDINATOR") or None
    num_processes = num_processes if num_processes is not None else _env_int("DEQDIST_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("DEQDIST_PROCESS_ID")
    auto = auto or os.environ.get("DEQDIST_DISTRIBUTED", "") not in ("", "0")
    given = [x is not None for x in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise ConfigError("multi-process runs need all of --coordinator, --num-processes and --process-id "
                          "(or DEQDIST_COORDINATOR / DEQDIST_NUM_PROCESSES / DEQDIST_PROCESS_ID)")
    wait = init_timeout(timeout)
    if not (auto or any(given)):
        return False
    lost_after = peer_timeout()
    coord = None
    if all(given):
        coord = parse_coordinator(coordinator)
        if num_processes < 1:
            raise ConfigError(f"--num-processes must be >= 1, got {num_processes}")
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"--process-id {process_id} is not in [0, --num-processes={num_processes})")
    import jax

    from deqdist.runtime.platform import skip_absent_tpu

    skip_absent_tpu()
    watch = _JoinWatch(coordinator or "the auto-detected coordinator", coord, process_id, num_processes, wait)
    watch.start()
    # JAX aborts with a fatal log at its own deadlines; ours come first. (Options this JAX lacks are left out.)
    kw = dict(initialization_timeout=int(wait) + 60, heartbeat_timeout_seconds=int(max(100, 2 * lost_after + 30)))
    accepted = inspect.signature(jax.distributed.initialize).parameters
    kw = {k: v for k, v in kw.items() if k in accepted}
    try:
        if all(given):
            jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                       process_id=process_id, **kw)
        else:
            jax.distributed.initialize(**kw)
    except (ValueError, RuntimeError) as e:  # e.g. --distributed where JAX finds no cluster
        watch.done.set()
        first = next((l for l in str(e).splitlines() if l.strip()), type(e).__name__)
        raise ConfigError(f"JAX could not set up the multi-process job ({first.strip().rstrip('.')}); --distributed "
                          f"finds TPU pods and SLURM jobs by itself, elsewhere give --coordinator, --num-processes "
                          f"and --process-id") from None
    from deqdist.runtime.platform import require_backend

    try:
        require_backend()  # the device exchange with every peer is part of joining
    finally:
        watch.done.set()
    client = _client()
    if client is not None and jax.process_count() > 1:
        _watch = PeerWatch(client, jax.process_index(), jax.process_count(), lost_after)
        _watch.start()
    return True
