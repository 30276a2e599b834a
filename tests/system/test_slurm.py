"""The job scripts (jobs/slurm.sbatch, and the job array mpisub-sweep --slurm prints) on a
real single-node Slurm cluster started by this test (munged, slurmctld,
slurmd as plain processes, stopped by their PIDs at the end). The Debian packages are installed
when missing (root, apt-get); when that is impossible the tests say so and skip."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from helpers import ROOT
from helpers.jobs import ONE_THREAD, debian_packages, mpirun, sets, system_test

from mpisub.io import readback

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = ["munged", "slurmctld", "slurmd", "sbatch"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid(path) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


pytestmark = system_test


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = debian_packages(DAEMONS, PACKAGES)
    if why:
        pytest.skip(f"no Slurm: {why}")
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "munge"):
        (d / sub).mkdir()
    os.chmod(d / "munge", 0o700)
    key = d / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    probe = subprocess.run(["slurmd", "-C"], capture_output=True, text=True).stdout
    node = re.search(r"NodeName=(\S+)", probe).group(1)
    memory = re.search(r"RealMemory=(\d+)", probe).group(1)
    conf = d / "slurm.conf"
    conf.write_text(f"""ClusterName=mpisubtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge/munge.socket
SlurmUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=pmi2
MinJobAge=4
EnforcePartLimits=ALL
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
SchedulerParameters=sched_interval=1
NodeName={node} NodeAddr=127.0.0.1 CPUs=4 RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    subprocess.run(["munged", f"--socket={d}/munge/munge.socket", f"--key-file={key}", f"--pid-file={d}/munged.pid",
                    f"--log-file={d}/munged.log", f"--seed-file={d}/munge/seed", "--force"], check=True, env=env,
                   timeout=30)
    subprocess.run(["slurmctld", "-i"], check=True, env=env, timeout=30)
    try:
        deadline = time.monotonic() + 60
        while "UP" not in subprocess.run(["scontrol", "ping"], capture_output=True, text=True, env=env).stdout:
            assert time.monotonic() < deadline, (d / "slurmctld.log").read_text()[-2000:]
            time.sleep(0.3)
        subprocess.run(["slurmd"], check=True, env=env, timeout=30)
        def state():
            return subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env).stdout.strip()
        while state() != "idle":
            assert time.monotonic() < deadline, (d / "slurmd.log").read_text()[-2000:]
            time.sleep(0.3)
        yield env
    finally:  # stop every daemon this test started, by the PID it wrote
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for name in ("slurmd", "slurmctld", "munged"):
                pid = _pid(d / f"{name}.pid")
                try:
                    if pid:
                        os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(1)


def _sbatch(env, folder, run_dir: str, options: list[str], wait: bool = True, timeout: float = 240) -> str:
    """Submit jobs/slurm.sbatch from folder, `options` for mpisub-train after the script's name;
    returns the job id (after it ends, with wait)."""
    job_env = {**env, "RUN_DIR": run_dir, "VENV": sys.prefix}
    cmd = ["sbatch", "--parsable", f"--chdir={folder}", "--ntasks=4", "--cpus-per-task=1", "--time=5",
           *(["--wait"] if wait else []), os.path.join(ROOT, "jobs", "slurm.sbatch"), *options]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=job_env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        subprocess.run(["scancel", "--user=root"], env=env)
        pytest.fail(f"sbatch did not return within {timeout} s")
    assert out.strip(), err
    return out.strip().split(";")[0]


def _small(rounds: int, every: int = 10) -> list[str]:
    return sets(masks__subnets=4, model__width=1024, data__n=256, train__rounds=rounds,
                output__checkpoint_every=every, output__log_every=50)


def test_sbatch_runs_the_job_with_srun_and_4_ranks(slurm, tmp_path):
    job = _sbatch(slurm, tmp_path, "run", _small(30))
    log = (tmp_path / f"mpisub-{job}.out").read_text()
    assert f"mpisub job {job}: starting run" in log, log
    with h5py.File(tmp_path / "run" / "run.h5") as f:
        assert f.attrs["status"] == "completed", log
        assert f.attrs["ranks"] == 4            # srun --mpi=pmi2 made one MPI job of 4 ranks
        np.testing.assert_array_equal(f["metrics/round"][()], np.arange(1, 31))
        assert f["eval/loss"][-1] < f["metrics"].attrs["loss_init"] / 5


def test_signal_before_the_time_limit_checkpoints_requeues_and_resumes(slurm, tmp_path):
    """The script's header example, `sbatch jobs/slurm.sbatch --config job.toml --set
    train.rounds=N`, into a run folder whose name has a quote and a space, and what
    --signal=B:USR1@120 does near the limit, sent now: the script passes it on, the run checkpoints
    and exits 3, the job requeues itself and the next attempt, given the same options again,
    resumes to the weights of an unbroken run."""
    rounds = 600
    (tmp_path / "job.toml").write_text("[masks]\nsubnets = 4\n[model]\nwidth = 1024\n[data]\nn = 256\n"
                                       "[output]\ncheckpoint_every = 25\nlog_every = 50\n")
    run_dir = 'run "1" here'
    job = _sbatch(slurm, tmp_path, run_dir, ["--config", "job.toml", "--set", f"train.rounds={rounds}"], wait=False)
    path = tmp_path / run_dir / "run.h5"
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline, "the job did not start training"
        try:
            with h5py.File(path) as f:
                if f["metrics/round"].shape[0] >= 5:
                    break
        except (OSError, KeyError):
            pass
        time.sleep(0.2)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True, env=slurm)
    deadline = time.monotonic() + 240
    log = tmp_path / f"mpisub-{job}.out"
    nudged = False
    while True:
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
        text = log.read_text() if log.exists() else ""
        state = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=slurm).stdout
        if "resuming" in text and "JobState=COMPLETED" in state:
            break
        assert "JobState=FAILED" not in state, text
        if not nudged and "JobState=PENDING" in state and "Restarts=1" in state:
            # Slurm holds a requeued job back for a couple of minutes; a test need not wait for that.
            # But not within the second of the requeue: slurmd revokes the job's credentials with a
            # 1 s timestamp, and a restart in that same second is killed ("Job credential revoked")
            time.sleep(2.0)
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, env=slurm)
            nudged = True
        time.sleep(0.5)
    assert "asking the run to checkpoint" in text and "; requeueing to resume" in text, text
    assert "launching with srun --mpi=pmi2" in text and "(MPI: MPICH" in text, text
    stopped = int(re.search(r"USR1: stopped after round (\d+)", text).group(1))
    assert 5 <= stopped < rounds
    r = mpirun(4, *_small(rounds, 25), "--set", 'output.dir="unbroken"', cwd=tmp_path, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    with h5py.File(path) as f, h5py.File(tmp_path / "unbroken" / "run.h5") as g:
        assert f.attrs["status"] == "completed"
        np.testing.assert_array_equal(f["metrics/round"][()], np.arange(1, rounds + 1))
        np.testing.assert_array_equal(f["model/W"][()], g["model/W"][()])


def test_srun_without_an_mpi_plugin_is_refused(slurm, tmp_path):
    train = os.path.join(os.path.dirname(sys.executable), "mpisub-train")
    r = subprocess.run(["srun", "--mpi=none", "-n", "2", train, *sets(output__dir="x")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env=slurm)
    assert r.returncode == 2
    assert "srun started 2 tasks but MPI sees 1 rank in each" in r.stderr and "--mpi=pmi2" in r.stderr
    assert not (tmp_path / "x").exists()


def test_the_sweep_command_printed_by_slurm_runs_as_printed(slurm, tmp_path):
    """mpisub-sweep SWEEP.toml --slurm prints an sbatch command; run as printed (from another
    folder: every path in it is absolute), its job array packs the 4 points into 2 tasks of 2
    (minutes = 1, task_minutes = 2), each point on the sweep's 2 ranks; afterwards the sweep run
    by hand finds every point finished and reuses it."""
    study = tmp_path / "study"
    study.mkdir()
    (study / "base.toml").write_text("[model]\nwidth = 256\n[data]\nn = 64\n[train]\nrounds = 6\n")
    (study / "s.toml").write_text('out = "runs"\nranks = 2\nseeds = 2\nminutes = 1\ntask_minutes = 2\n'
                                  'config = "base.toml"\n[grid]\n"masks.kind" = ["partition", "bernoulli"]\n')
    sweep = os.path.join(os.path.dirname(sys.executable), "mpisub-sweep")
    r = subprocess.run([sweep, "s.toml", "--slurm"], cwd=study, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    printed = r.stdout.strip()
    assert "--array=0-1 --ntasks=2 " in printed and f"--chdir={study} " in printed, printed
    r = subprocess.run(printed, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60, env=slurm)
    assert r.returncode == 0, r.stdout + r.stderr
    array = re.search(r"Submitted batch job (\d+)", r.stdout).group(1)
    deadline = time.monotonic() + 300
    while subprocess.run(["squeue", "-h", "-j", array], capture_output=True, text=True, env=slurm).stdout.strip():
        assert time.monotonic() < deadline, "the job array did not end"
        time.sleep(1)
    logs = sorted((study / "runs").glob("slurm-*.out"))
    assert len(logs) == 2, logs
    for log in logs:
        assert log.read_text().count(": trained in ") == 2, log.read_text()
    for kind in ("partition", "bernoulli"):
        for seed in (0, 1):
            run = readback.read_run(str(study / "runs" / f"kind={kind}-seed{seed}"), arrays=False)
            config = json.loads(run["attrs"]["config"])
            assert run["attrs"]["status"] == "completed" and run["attrs"]["ranks"] == 2
            assert (config["masks"]["kind"], config["train"]["seed"], config["train"]["rounds"]) == (kind, seed, 6)
    r = subprocess.run([sweep, "s.toml"], cwd=study, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.count(": reused (") == 4, r.stdout + r.stderr
