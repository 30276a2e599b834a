"""Work is never lost (docs/design.md, "Reliability"): a run killed before its second checkpoint
resumes; a resume that fails leaves the run file it would have replaced; one job writes a run
folder at a time; a stop signal at any moment ends in an orderly exit; a full disk stops the run
with its last good checkpoint named and nothing that blocks a rerun."""
import os
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
from helpers.jobs import ONE_THREAD, job_log, mpirun, rank_pids, sets, start_job, system_test, wait_for_rows, wait_job

from mpisub.io import readback

# a slow enough round (about 0.1 s on 2 cores) to act while it trains; no checkpoint between the
# one before round 1 and the last
SLOW = dict(data__n=2048, model__width=4096, theory__max_n=0, train__rounds=30, output__checkpoint_every=1000)


def _files(folder) -> list[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


@pytest.mark.parametrize("plan", ["rows", "outputs"])
def test_a_run_killed_before_its_second_checkpoint_resumes_bit_for_bit(tmp_path, plan):
    ref = mpirun(2, *sets(output__dir="ref", train__plan=plan, **SLOW), cwd=tmp_path, env=ONE_THREAD)
    assert ref.returncode == 0, ref.stderr
    proc = start_job(2, tmp_path, *sets(output__dir="cut", train__plan=plan, **SLOW))
    wait_for_rows(proc, tmp_path / "cut" / "run.h5", 1)
    os.kill(rank_pids("output.dir=\"cut\"")[-1], signal.SIGKILL)
    assert wait_job(proc, 30) != 0
    assert readback.read_checkpoint(str(tmp_path / "cut"))["round"] == 0   # only the one before round 1

    r = mpirun(2, "--resume", "cut", cwd=tmp_path, env=ONE_THREAD)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "waiting" not in r.stdout                                     # the killed job left no lock
    assert _files(tmp_path / "cut") == ["checkpoint.h5", "run.h5", "shards"]
    cut, ref = readback.read_run(str(tmp_path / "cut")), readback.read_run(str(tmp_path / "ref"))
    np.testing.assert_array_equal(cut["model/W"], ref["model/W"])
    np.testing.assert_array_equal(cut["metrics"]["round"], np.arange(1, 31))
    np.testing.assert_array_equal(cut["eval"]["loss"], ref["eval"]["loss"])
    np.testing.assert_array_equal(cut["eval"]["round"], ref["eval"]["round"])
    assert cut["attrs"]["status"] == "completed"


def test_one_writer_per_folder_and_a_requeued_job_waits_for_the_last_one(tmp_path):
    first = start_job(2, tmp_path, *sets(output__dir="out", train__rounds=5000, output__log_every=100))
    wait_for_rows(first, tmp_path / "out" / "run.h5", 5)
    rank0 = min(rank_pids('output.dir="out"'))
    quick = {"MPISUB_LOCK_WAIT": "1", **ONE_THREAD}
    for args in (["--resume", "out"], [*sets(output__dir="out", output__overwrite=True)]):
        r = mpirun(2, *args, cwd=tmp_path, env=quick, timeout=60)
        assert r.returncode == 2, r.stdout + r.stderr
        line, = r.stderr.strip().splitlines()
        assert "output.dir 'out' is in use by another mpisub job" in line and f"PID {rank0}" in line, line

    # a requeued attempt starts while the last one is still writing its checkpoint: it waits, then
    # continues from the checkpoint that the last one wrote as it stopped
    waiter = start_job(2, tmp_path, "--resume", "out", env={"MPISUB_LOCK_WAIT": "300"})
    t0 = time.monotonic()
    while "waiting up to 300 s for the job writing 'out'" not in job_log(waiter):   # an event, not a time
        assert waiter.poll() is None and time.monotonic() - t0 < 300, job_log(waiter)
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    assert wait_job(first, 30) == 3
    stopped = readback.read_checkpoint(str(tmp_path / "out"))["round"]
    t0 = time.monotonic()
    while f"round {stopped:>4}/5000  loss" not in job_log(waiter):
        assert waiter.poll() is None and time.monotonic() - t0 < 60, job_log(waiter)
        time.sleep(0.05)
    wait_for_rows(waiter, tmp_path / "out" / "run.h5", stopped + 5)
    waiter.send_signal(signal.SIGTERM)
    assert wait_job(waiter, 30) == 3
    run = readback.read_run(str(tmp_path / "out"))
    rounds = run["metrics"]["round"]
    assert len(rounds) > stopped
    np.testing.assert_array_equal(rounds, np.arange(1, len(rounds) + 1))
    assert run["attrs"]["status"] == "interrupted"
    assert _files(tmp_path / "out") == ["checkpoint.h5", "run.h5", "shards"]       # no lock file left behind


def test_a_stop_signal_before_training_exits_3_and_leaves_nothing_that_blocks_a_restart(tmp_path):
    # n = 4000: the NTK Gram matrix's eigenvalue takes a few seconds before round 1
    job = sets(output__dir="out", data__n=4000, train__rounds=3, model__width=512)
    proc = start_job(2, tmp_path, *job)
    t0 = time.monotonic()
    while "computing the NTK Gram matrix" not in job_log(proc):
        assert proc.poll() is None and time.monotonic() - t0 < 60, job_log(proc)
        time.sleep(0.02)
    proc.send_signal(signal.SIGUSR1)
    assert wait_job(proc, 60) == 3, job_log(proc)
    assert "mpisub-train: SIGUSR1: stopped before training; nothing to resume, start again" in job_log(proc)
    assert _files(tmp_path / "out") == []
    r = mpirun(2, *job, "--set", "theory.max_n=0", cwd=tmp_path)       # the job script's restart
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_non_finite_initial_loss_blames_the_data_or_init_not_the_lr(tmp_path, dtype):
    r = mpirun(2, *sets(output__dir="out", model__init_scale=1e200, model__dtype=dtype), cwd=tmp_path)
    assert r.returncode == 2
    line, = r.stderr.strip().splitlines()                                # no RuntimeWarning lines either
    assert "at the initial weights, before any training step" in line and "model.init_scale" in line
    assert "train.lr" not in line
    assert _files(tmp_path / "out") == []


def _mount_tmpfs(path, megabytes: int) -> None:
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")


@system_test
def test_a_full_or_read_only_disk_stops_in_one_line_and_keeps_the_last_checkpoint(tmp_path):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, 12)
    try:
        # full at the start: the estimate refuses it before anything is written
        r = mpirun(2, *sets(output__dir="big", model__width=65536), cwd=disk)
        assert r.returncode == 2
        line, = r.stderr.strip().splitlines()
        assert "output.dir 'big': the run needs about" in line and "MiB is free there" in line, line
        assert _files(disk) == []

        # full while it trains: a checkpoint fails, the run stops, the last good one stays
        job = sets(output__dir="out", model__width=256, theory__store_H_max_n=0, train__rounds=12000,
                   output__checkpoint_every=50, output__log_every=1000)
        proc = start_job(2, disk, *job)
        wait_for_rows(proc, disk / "out" / "run.h5", 200)
        subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=64k"], capture_output=True)
        assert wait_job(proc, 60) == 2, job_log(proc)
        line = job_log(proc).strip().splitlines()[-1]
        kept = readback.read_checkpoint(str(disk / "out"))["round"]
        assert line.startswith("mpisub-train: error: output.dir 'out': writing the run file or checkpoint failed")
        assert "No space left on device" in line and f"the last good checkpoint (round {kept}) is kept" in line
        assert _files(disk / "out") == ["checkpoint.h5", "run.h5", "shards"]       # no .tmp left
        with h5py.File(disk / "out" / "run.h5", "r") as f:    # whole and readable; its status says failed
            # unless even that attr found no room (the status is a courtesy, the checkpoint the truth)
            assert f.attrs["status"] in ("failed", "running") and f["metrics/round"].shape[0] >= 200
        os.remove(disk / "filler")
        r = mpirun(2, "--resume", "out", "--set", f"train.rounds={kept + 20}", cwd=disk)
        assert r.returncode == 0, r.stderr
        np.testing.assert_array_equal(readback.read_run(str(disk / "out"))["metrics"]["round"], np.arange(1, kept + 21))

        # read-only: one line naming the folder
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        r = mpirun(2, *sets(output__dir="ro"), cwd=disk)
        assert r.returncode == 2
        line, = r.stderr.strip().splitlines()
        assert "output.dir 'ro'" in line and "Read-only file system" in line, line
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
