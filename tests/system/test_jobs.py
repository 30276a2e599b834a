"""The job scripts' own logic, run by bash with stand-ins for the scheduler's commands on PATH:
the PBS watchdog that asks the run to checkpoint before the wall time and the resubmission with
qsub, and both scripts' requeue decisions (the limit, no progress). The Slurm script also runs on
a real Slurm in test_slurm.py."""
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from helpers import ROOT
from helpers.jobs import ONE_THREAD, sets

from mpisub.io import readback, store

PBS, SLURM = os.path.join(ROOT, "jobs", "pbs.sh"), os.path.join(ROOT, "jobs", "slurm.sbatch")


def _stand_ins(folder, **scripts) -> str:
    """A bin folder of shell scripts named after the commands they stand in for; returns PATH."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        os.chmod(bin_dir / name, 0o755)
    return f"{bin_dir}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"


def _recorder(log) -> str:
    return f'echo "$@" >> {log}\necho 1001.server\n'


def _checkpoint(folder, rounds_done: int) -> None:
    folder.mkdir(exist_ok=True)
    store.write_checkpoint(str(folder), W=np.zeros((4, 2)), rounds_done=rounds_done, metrics={}, loss_init=1.0,
                           config_json="{}", data_sha256="", created="now")


def _run(script, cwd, env, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", script], cwd=cwd, env={**os.environ, **ONE_THREAD, **env}, capture_output=True,
                          text=True, timeout=timeout)


def test_pbs_watchdog_checkpoints_before_the_wall_time_and_the_job_resubmits_itself(tmp_path):
    qsub_log = tmp_path / "qsub.log"
    env = {"PBS_JOBID": "123.server", "PBS_O_WORKDIR": str(tmp_path), "NPROCS": "2", "VENV": sys.prefix,
           "RUN_DIR": "run", "MPISUB_STOP_BEFORE": "25", "MPISUB_JOB_SCRIPT": PBS,
           "MPISUB_ARGS": " ".join(sets(train__rounds=100000, model__width=256, data__n=64, output__log_every=1000,
                                        output__checkpoint_every=1000)),
           "PATH": _stand_ins(tmp_path, qsub=_recorder(qsub_log),
                              qstat='echo "    Resource_List.walltime = 00:00:33"\n')}
    r = _run(PBS, tmp_path, env)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "wall time 00:00:33: the run is asked to checkpoint 25 s before it" in r.stdout
    assert "asking the run to checkpoint" in r.stdout and "resubmitting to resume" in r.stdout, r.stdout
    kept = readback.read_checkpoint(str(tmp_path / "run"))["round"]
    assert kept >= 1
    args = qsub_log.read_text().split()
    assert args[0] == "-v" and args[-1] == PBS
    assert "RUN_DIR=run" in args[1] and "MPISUB_ATTEMPT=1" in args[1] and "MPISUB_STOP_BEFORE=25" in args[1]
    # the resubmitted job: a longer wall time, a finite goal; it resumes and finishes
    env.update(MPISUB_ATTEMPT="1", MPISUB_ARGS=f"--set train.rounds={kept + 3}",
               PATH=_stand_ins(tmp_path, qstat='echo "    Resource_List.walltime = 01:00:00"\n'))
    r = _run(PBS, tmp_path, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming run (attempt 1)" in r.stdout
    with h5py.File(tmp_path / "run" / "run.h5") as f:
        assert f.attrs["status"] == "completed"
        np.testing.assert_array_equal(f["metrics/round"][()], np.arange(1, kept + 4))
    assert len(qsub_log.read_text().splitlines()) == 1          # no resubmission after a finished run


@pytest.mark.parametrize("script", ["pbs", "slurm"])
def test_requeue_stops_at_the_limit_and_when_an_attempt_made_no_progress(tmp_path, script):
    """mpirun stands in for a run stopped by the signal (exit 3) at the checkpoint on disk."""
    log = tmp_path / "scheduler.log"
    path = _stand_ins(tmp_path, mpirun="exit 3\n", qsub=_recorder(log), qstat="exit 0\n", scontrol=_recorder(log),
                      srun='echo "MPI plugin types are..."; echo "none"\n')
    # VENV names no environment: activating one would put the real mpirun before the stand-in
    env = {"PATH": path, "VENV": "no-venv", "RUN_DIR": "run", "MPISUB_MAX_REQUEUES": "3", "MPISUB_JOB_SCRIPT": PBS,
           "PBS_JOBID": "9.server", "PBS_O_WORKDIR": str(tmp_path), "SLURM_JOB_ID": "9", "SLURM_NTASKS": "2"}
    attempt = "MPISUB_ATTEMPT" if script == "pbs" else "SLURM_RESTART_COUNT"
    file = PBS if script == "pbs" else SLURM
    requeued = "resubmitting to resume" if script == "pbs" else "requeueing to resume"
    _checkpoint(tmp_path / "run", 7)
    r = _run(file, tmp_path, {**env, attempt: "1"})
    assert r.returncode == 3 and "checkpointed at round 7; " + requeued in r.stdout, r.stdout + r.stderr
    assert len(log.read_text().splitlines()) == 1
    r = _run(file, tmp_path, {**env, attempt: "2"})              # the next attempt ended at round 7 too
    assert r.returncode == 3 and "at round 7 again" in r.stdout and "no progress" in r.stdout, r.stdout
    _checkpoint(tmp_path / "run", 9)
    r = _run(file, tmp_path, {**env, attempt: "3"})              # progress, but the limit is reached
    assert r.returncode == 3 and "MPISUB_MAX_REQUEUES=3" in r.stdout, r.stdout
    assert len(log.read_text().splitlines()) == 1                # neither of the last two requeued


def test_mpisub_jobs_prints_the_installed_scripts(capsys):
    from mpisub.study import jobs
    for name, file in jobs.SCRIPTS.items():
        jobs.jobs_main([name])
        with open(os.path.join(ROOT, "jobs", file)) as f:
            assert capsys.readouterr().out == f.read()
    with pytest.raises(SystemExit) as stop:
        jobs.jobs_main(["lsf"])
    assert stop.value.code == 2 and "invalid choice: 'lsf'" in capsys.readouterr().err
