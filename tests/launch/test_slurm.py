"""launch/slurm.sbatch for real, on a one-node SLURM cluster started by launch/slurm_cluster.sh.

One run goes through three jobs, each resuming the last: a task killed with SIGKILL after the
first checkpoint (exit 3, one line), SIGTERM from the time limit (--signal=TERM@N, the limit
pulled in with `scontrol update`: checkpoint, exit 0), and the rest of the steps; its losses
equal, bitwise, those of `launch/local.py -n 2 -d 4` (2 tasks x 4 simulated CPU devices
either way). A fourth job loses a task before any checkpoint. The cluster has no GPU gres and
the jobs ask for none. Jobs are judged by exit codes, files and scontrol's key=value records;
a trainer is held with SIGSTOP while it is signalled, so no step can race the test. Every job
compiles afresh: JAX's compilation cache would let task 0 start from it while task 1 (which
never writes it) compiles, longer than gloo waits for a peer on a busy machine.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from trainutil import ROOT, checkpoint_steps, losses

CLUSTER = ROOT / "launch" / "slurm_cluster.sh"
EXIT_CANNOT = 4  # slurm_cluster.sh: this machine cannot run the cluster
STEPS = 10
# Small enough to compile and train in seconds on 2 busy cores; the (2,1,4) mesh splits the batch
# across the two tasks and the sequence across each task's four devices.
CFG = [
    "model.d_model=16", "model.n_heads=4", "model.d_mlp=32", "model.seq_len=16", "data.global_batch_size=8",
    "data.eval_batches=1", "train.test_batches=1", f"train.steps={STEPS}", "train.warmup_steps=2",
    "train.warmup_explicit_steps=0", "train.jac_reg_every=0", "train.lr=3e-3", "train.log_every=1",
    "train.eval_every=0", "train.spectral_every=0", "checkpoint.every=2", "checkpoint.keep=5",
    "logging.sample_tokens=0", "logging.progress=lines", "solver.max_iter=6", "solver.bwd.max_iter=6",
    "parallel.data=2", "parallel.fsdp=1", "parallel.tensor=4",
]
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE"}
JOB_TIMEOUT = 900  # a loaded 2-core machine compiles slowly


@pytest.fixture(scope="module")
def cluster():
    """SLURM_CONF of a running one-node cluster; skipped with the script's reason where it cannot run.
    Its own folder, not pytest's: the daemons must outlive any clean-up of old pytest folders."""
    where = Path(tempfile.mkdtemp(prefix="deqdist-slurm-"))
    p = subprocess.run(["bash", str(CLUSTER), "start", "--dir", str(where)], capture_output=True, text=True,
                       timeout=900)
    if p.returncode == EXIT_CANNOT:
        shutil.rmtree(where)
        pytest.skip(p.stderr.strip())
    try:
        assert p.returncode == 0, p.stdout + p.stderr
        yield where / "slurm.conf"
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", "--dir", str(where)], capture_output=True, timeout=300)
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(scope="module")
def env(cluster) -> dict:
    """The submitter's environment: it reaches every task (JAX_PLATFORMS=cpu, 4 devices per task)."""
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    e.update(SLURM_CONF=str(cluster), JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4",
             PYTHONUNBUFFERED="1")
    return e


def submit(env: dict, run_dir: Path, *train: str, sbatch=(), launcher=()) -> str:
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["sbatch", "--parsable", "--ntasks-per-node=2", "--cpus-per-task=1", f"--output={run_dir}.%j.out",
           *sbatch, "launch/slurm.sbatch", "--python", sys.executable, *launcher, "--", "--run-dir", str(run_dir),
           *CFG, *train]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().split(";")[0]


def record(env: dict, kind: str, name: str) -> dict:
    """scontrol's one-line key=value record of a job or node (values without spaces only)."""
    p = subprocess.run(["scontrol", "-o", "show", kind, name], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return dict(t.split("=", 1) for t in p.stdout.split() if "=" in t)


def wait_end(env: dict, job: str, timeout: float = JOB_TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    while (rec := record(env, "job", job))["JobState"] not in ENDED:
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job], env=env, timeout=30)
            raise AssertionError(f"job {job} still {rec['JobState']} after {timeout} s")
        time.sleep(0.5)
    return rec


def exit_code(rec: dict) -> tuple[int, int]:
    code, sig = rec["ExitCode"].split(":")
    return int(code), int(sig)


def output(run_dir: Path, job: str) -> str:
    return Path(f"{run_dir}.{job}.out").read_text()


def trainers(job: str) -> dict[int, int]:
    """SLURM task -> pid of its `deqdist train` process, read from /proc (environment and command line)."""
    found = {}
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            environ = dict(kv.split(b"=", 1) for kv in (d / "environ").read_bytes().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if environ.get(b"SLURM_JOB_ID") == job.encode() and cmd[1:4] == [b"-m", b"deqdist.cli", b"train"]:
            found[int(environ[b"SLURM_PROCID"])] = int(d.name)
    return found


def send(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:  # it ended meanwhile; the caller sees that
        pass


def wait_trainers(env: dict, job: str, ready=lambda: True, what: str = "the trainers") -> dict[int, int]:
    """The two trainer pids once `ready()` holds while both run, stopped (SIGSTOP): the caller continues them."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:
        pids = trainers(job)
        if len(pids) == 2 and ready():
            for pid in pids.values():
                send(pid, signal.SIGSTOP)
            if trainers(job) == pids:  # both still there, now held
                return pids
            for pid in pids.values():
                send(pid, signal.SIGCONT)
        state = record(env, "job", job)["JobState"]
        assert state in ("PENDING", "CONFIGURING", "RUNNING"), f"job {job} is {state} before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def trained_since(run_dir: Path, t0: float, after_step: int) -> bool:
    """Whether a step after `after_step` was logged since `t0` (older lines may still wait to be cut on resume)."""
    p = run_dir / "metrics.jsonl"
    recs = [json.loads(l) for l in (p.read_text().splitlines() if p.exists() else []) if l.endswith("}")]
    return any(r["kind"] == "train" and r["step"] > after_step and r["time"] >= t0 for r in recs)


def signalled(pid: int, sig: int) -> bool:
    """Whether a held process got `sig`: it waits in /proc's pending masks, or the sender also sent SIGCONT
    (slurmstepd does, with SIGTERM) and the process runs again or is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    masks = re.findall(r"^(?:SigPnd|ShdPnd):\s*([0-9a-f]+)$", status, re.M)
    stopped = re.search(r"^State:\s*T", status, re.M)
    return not stopped or any(int(m, 16) >> (sig - 1) & 1 for m in masks)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, env) -> Path:
    """The same training by launch/local.py -n 2 -d 4 (no SLURM), uninterrupted."""
    run_dir = tmp_path_factory.mktemp("local") / "run"
    e = {k: v for k, v in env.items() if k != "SLURM_CONF"}
    p = subprocess.run([sys.executable, "launch/local.py", "-n", "2", "-d", "4", "--no-preflight", "--",
                        "--run-dir", str(run_dir), *CFG], cwd=ROOT, env=e, capture_output=True, text=True,
                       timeout=JOB_TIMEOUT)
    assert p.returncode == 0, p.stderr[-3000:]
    return run_dir


def kill_task_1(env: dict, run_dir: Path, *train: str, launcher=(), ready=lambda: True,
                what="the trainers") -> tuple[str, dict]:
    job = submit(env, run_dir, *train, launcher=launcher)
    pids = wait_trainers(env, job, ready, what)
    os.kill(pids[1], signal.SIGKILL)
    os.kill(pids[0], signal.SIGCONT)
    return job, wait_end(env, job)


def time_limit_sigterm(env: dict, run_dir: Path, after_step: int) -> tuple[str, dict]:
    """A job that slurmctld sends SIGTERM (--signal=TERM@240) once it trains past `after_step`."""
    t0 = time.time()
    job = submit({**env, "DEQDIST_PEER_TIMEOUT": "600"}, run_dir,  # held trainers must not count each other lost
                 sbatch=("--time=60", "--signal=TERM@240"), launcher=("--no-preflight",))
    pids = wait_trainers(env, job, lambda: trained_since(run_dir, t0, after_step), f"step {after_step + 1}")
    # Pull the time limit in to 3-4 minutes from now: slurmctld sends TERM (240 s before the limit)
    # at its next check, while the trainers are held (they cannot finish first).
    minutes = sum(int(x) * m for x, m in zip(reversed(re.split("[-:]", record(env, "job", job)["RunTime"])),
                                             (1 / 60, 1, 60, 24 * 60)))
    subprocess.run(["scontrol", "update", f"JobId={job}", f"TimeLimit={int(minutes) + 4}"], env=env, check=True,
                   timeout=30, capture_output=True)
    deadline = time.monotonic() + 120
    while not all(signalled(pid, signal.SIGTERM) for pid in pids.values()):
        assert time.monotonic() < deadline, "no SIGTERM from the time limit within 120 s"
        time.sleep(0.2)
    for pid in pids.values():  # slurmstepd may have continued them with the SIGTERM already
        send(pid, signal.SIGCONT)
    return job, wait_end(env, job)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, env) -> dict:
    """One run through three jobs: {"run_dir", "killed", "termed", "done": (job id, final record), "ckpt": step}."""
    run_dir = tmp_path_factory.mktemp("sbatch") / "run"
    out = {"run_dir": run_dir}
    out["killed"] = kill_task_1(env, run_dir, ready=lambda: checkpoint_steps(run_dir), what="the first checkpoint")
    out["ckpt"] = max(checkpoint_steps(run_dir), default=0)
    out["termed"] = time_limit_sigterm(env, run_dir, out["ckpt"])
    job = submit(env, run_dir, launcher=("--no-preflight",))
    out["done"] = job, wait_end(env, job)
    return out


def lost_line(run_dir: Path, job: str) -> str:
    out = output(run_dir, job)
    lines = [l for l in out.splitlines() if l.startswith("launch/slurm.sbatch: error:")]
    assert len(lines) == 1, out
    return lines[0]


def assert_lost_task_1(run_dir: Path, job: str, rec: dict) -> str:
    assert (rec["JobState"], exit_code(rec)) == ("FAILED", (3, 0)), output(run_dir, job)
    line = lost_line(run_dir, job)
    assert "lost task 1 of 2 (killed by SIGKILL" in line and f"{run_dir}/logs/{job}-1.log" in line, line
    assert re.search(r"resume with sbatch .*launch/slurm\.sbatch .*--run-dir " + re.escape(str(run_dir)), line)
    return line


def test_task_killed_after_the_first_checkpoint_ends_the_job_with_exit_3_and_one_line(chain):
    run_dir, (job, rec), step = chain["run_dir"], chain["killed"], chain["ckpt"]
    line = assert_lost_task_1(run_dir, job, rec)
    assert step > 0 and f"newest complete checkpoint: step {step} in {run_dir}/checkpoints; " in line, line
    for task in (0, 1):  # the preflight ran on both tasks
        assert (run_dir / "logs" / f"{job}-{task}-info.log").stat().st_size > 0


def test_task_killed_before_any_checkpoint_ends_the_job_with_exit_3_and_one_line(tmp_path, env):
    run_dir = tmp_path / "run"
    # Held from the moment they start, the trainers cannot save a checkpoint before the kill.
    job, rec = kill_task_1(env, run_dir, "checkpoint.every=1000", launcher=("--no-preflight",))
    line = assert_lost_task_1(run_dir, job, rec)
    assert not checkpoint_steps(run_dir) and "newest complete checkpoint: none yet; " in line, line


def test_time_limit_sigterm_checkpoints_and_exits_0(chain):
    run_dir, (job, rec) = chain["run_dir"], chain["termed"]
    assert (rec["JobState"], exit_code(rec)) == ("COMPLETED", (0, 0)), output(run_dir, job)
    starts = [r["start_step"] for r in json.loads((run_dir / "run.json").read_text())]
    assert starts[:2] == [0, chain["ckpt"]]  # it resumed the killed job's checkpoint
    assert chain["ckpt"] < starts[2] < STEPS and starts[2] in checkpoint_steps(run_dir)  # saved where TERM stopped it


def test_resubmitted_jobs_train_like_local_py_bitwise(chain, local_run):
    run_dir, (job, rec) = chain["run_dir"], chain["done"]
    assert (rec["JobState"], exit_code(rec)) == ("COMPLETED", (0, 0)), output(run_dir, job)
    got = losses(run_dir)  # also: no step logged twice across the three jobs
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == losses(local_run)  # same processes, devices and mesh: the same numbers
    assert (run_dir / "results.json").is_file()


def test_cpu_partition_without_gpu_gres(env, chain):
    run_dir, (job, rec) = chain["run_dir"], chain["done"]
    node = record(env, "node", rec["NodeList"])
    assert node["Gres"] == "(null)"  # the node has no GPUs to give
    sbatch = (ROOT / "launch" / "slurm.sbatch").read_text()
    assert not re.search(r"^#SBATCH .*(gpu|gres)", sbatch, re.M)  # and the job asks for none
    assert exit_code(rec) == (0, 0)
    assert "8 cpu device(s), 2 process(es)" in (run_dir / "logs" / f"{job}-0.log").read_text()


def test_a_platform_that_is_not_there_is_exit_2_with_the_tasks_line(tmp_path, env):
    run_dir = tmp_path / "run"
    job = submit({**env, "JAX_PLATFORMS": "cuda"}, run_dir)  # the user's choice reaches the tasks as is
    rec = wait_end(env, job)
    assert (rec["JobState"], exit_code(rec)) == ("FAILED", (2, 0)), output(run_dir, job)
    lines = [l for l in output(run_dir, job).splitlines() if l.startswith("launch/slurm.sbatch: ")]
    assert len(lines) == 1 and re.match(r"launch/slurm\.sbatch: task [01]: deqdist info: error: JAX_PLATFORMS=cuda",
                                        lines[0]), lines
    assert not (run_dir / "metrics.jsonl").exists()  # the preflight stopped it before training
