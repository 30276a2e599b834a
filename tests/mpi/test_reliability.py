"""Runs survive stops, kills and crashes: checkpoints, bit-exact --resume, a readable run file."""
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from helpers.jobs import (
    ONE_THREAD,
    debian_packages,
    job_log,
    mpirun,
    rank_pids,
    sets,
    start_job,
    system_test,
    wait_for_rows,
    wait_job,
)

from mpisub.io import readback, store

# partition masks are K-invariant to the bit (with one BLAS thread per rank), so a run stopped at
# K = 2 and resumed at K = 1 or 4 must end on exactly the weights of an unbroken run
ROUNDS = 150
JOB = dict(masks__subnets=4, train__rounds=ROUNDS, output__checkpoint_every=7, output__log_every=10, train__plan="rows")


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unbroken")
    r = mpirun(2, *sets(output__dir="out", **JOB), cwd=folder, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    return readback.read_run(str(folder / "out"))


def _check_resumed_equals_unbroken(run_dir, unbroken, ranks: int):
    r = mpirun(ranks, "--resume", str(run_dir), cwd=run_dir.parent, env=ONE_THREAD)
    assert r.returncode == 0, r.stdout + r.stderr
    run = readback.read_run(str(run_dir))
    assert run["attrs"]["status"] == "completed" and run["attrs"]["ranks"] == ranks
    np.testing.assert_array_equal(run["model/W"], unbroken["model/W"])   # every bit
    np.testing.assert_array_equal(run["metrics"]["round"], np.arange(1, ROUNDS + 1))  # no holes, no repeats
    # the loss is summed over the ranks' row blocks: equal to rounding when K differs
    np.testing.assert_allclose(run["eval"]["loss"], unbroken["eval"]["loss"], rtol=1e-12)
    ck = readback.read_checkpoint(str(run_dir))
    assert ck["round"] == ROUNDS
    np.testing.assert_array_equal(readback.read_checkpoint_W(str(run_dir)), unbroken["model/W"])


@pytest.mark.parametrize("sig,resume_ranks", [(signal.SIGTERM, 1), (signal.SIGUSR1, 4)])
def test_stop_signal_checkpoints_then_resume_is_bit_identical(tmp_path, unbroken, sig, resume_ranks):
    proc = start_job(2, tmp_path, *sets(output__dir="out", **JOB))
    wait_for_rows(proc, tmp_path / "out" / "run.h5", 20)
    proc.send_signal(sig)  # to mpirun, which forwards it to every rank, as Slurm does
    assert wait_job(proc, 30) == 3
    log = job_log(proc)
    stopped = int(re.search(rf"{sig.name}: stopped after round (\d+), checkpoint written; "
                                          r"continue with: mpirun -n 2 mpisub-train --resume out", log).group(1))
    assert 20 <= stopped < ROUNDS
    run = readback.read_run(str(tmp_path / "out"))
    assert run["attrs"]["status"] == "interrupted"
    np.testing.assert_array_equal(run["metrics"]["round"], np.arange(1, stopped + 1))
    assert readback.read_checkpoint(str(tmp_path / "out"))["round"] == stopped
    _check_resumed_equals_unbroken(tmp_path / "out", unbroken, resume_ranks)


@pytest.mark.parametrize("attempt", range(2))
def test_sigkill_of_a_random_rank_at_a_random_moment_then_resume(tmp_path, unbroken, attempt):
    seed = 20261129 + attempt          # the trial's moment and victim; a failure names it
    rng = random.Random(seed)
    marker = f"kill{seed}"
    proc = start_job(2, tmp_path, *sets(output__dir=marker, **JOB))
    wait_for_rows(proc, tmp_path / marker / "run.h5", 1)
    time.sleep(rng.uniform(0.0, 1.5))
    pids = rank_pids(marker)
    assert len(pids) == 2, pids
    victim = rng.choice(pids)
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    assert wait_job(proc, 30) != 0, f"seed {seed}"
    assert time.monotonic() - t0 < 30
    with h5py.File(tmp_path / marker / "run.h5", "r") as f:   # readable after the kill
        assert f.attrs["status"] == "running" and f["metrics/round"].shape[0] >= 1
    ck = readback.read_checkpoint(str(tmp_path / marker))
    assert 0 <= ck["round"] < ROUNDS, f"seed {seed}: the kill came after the end"
    _check_resumed_equals_unbroken(tmp_path / marker, unbroken, 2)


# a checkpoint every round, of shards large enough that a rank is writing one most of the time
SHARDED = dict(masks__subnets=4, train__rounds=30, output__checkpoint_every=1, model__width=2**16, data__n=32,
               train__plan="rows", theory__max_n=0, output__eval_every=10)


def test_sigkill_while_shards_are_written_in_the_background_loses_nothing(tmp_path):
    """kill -9 of a rank while shards of an asynchronous checkpoint are on their way to disk (a
    shard's temporary file is there): the checkpoint on disk is the last whole one, and the run
    resumes to the unbroken run's bits."""
    r = mpirun(2, *sets(output__dir="unbroken", **SHARDED), cwd=tmp_path, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    unbroken = readback.read_run(str(tmp_path / "unbroken"))["model/W"]
    marker = "asyncshards"
    proc = start_job(2, tmp_path, *sets(output__dir=marker, **SHARDED))
    shards = tmp_path / marker / "shards"
    in_flight = lambda: [n for n in os.listdir(shards) if n.endswith(".tmp") and ".r00000000." not in n]  # noqa: E731
    while not ((tmp_path / marker / "checkpoint.h5").exists() and in_flight()):
        assert proc.poll() is None, "the run ended before a shard was seen in flight: " + job_log(proc)
        time.sleep(0.001)
    os.kill(random.choice(rank_pids(marker)), signal.SIGKILL)
    assert wait_job(proc, 60) != 0
    ck = readback.read_checkpoint(str(tmp_path / marker))
    assert 0 <= ck["round"] < SHARDED["train__rounds"]
    r = mpirun(2, "--resume", marker, cwd=tmp_path, env=ONE_THREAD)
    assert r.returncode == 0, r.stdout + r.stderr
    np.testing.assert_array_equal(readback.read_run(str(tmp_path / marker))["model/W"], unbroken)
    left = sorted(os.listdir(shards))   # the old launch's shards went once the new run file replaced it
    assert len(left) == 4 and all(".r00000030." in n or n.startswith("W_init.") for n in left), left


WRITER = """
import os, signal, sys, numpy as np
from mpisub.io import store
folder, die_at, step = sys.argv[1], int(sys.argv[2]), sys.argv[3]
W = np.empty((1000, 1000))
for k in range(1, 10**6):
    if k == die_at:  # SIGKILL inside this checkpoint's write, at the named step
        kill = lambda *a, **kw: os.kill(os.getpid(), signal.SIGKILL)
        if step == "fsync":
            store._fsync = kill           # the data is in checkpoint.h5.tmp, not yet on disk
        else:
            store._replace = kill         # the whole file is on disk, not yet renamed
    W.fill(k)
    store.write_checkpoint(folder, W=W, rounds_done=k, metrics={"round": np.arange(1, k + 1)}, loss_init=1.0,
                           config_json="{}", data_sha256="", created="now")
"""


def _whole_checkpoint(folder) -> int:
    """The round of the checkpoint on disk, after checking that it is a whole one."""
    ck = readback.read_checkpoint(str(folder))
    assert ck["round"] >= 1
    assert np.all(readback.read_checkpoint_W(str(folder)) == ck["round"])
    np.testing.assert_array_equal(ck["metrics"]["round"], np.arange(1, ck["round"] + 1))
    return ck["round"]


@pytest.mark.parametrize("step", ["fsync", "rename"])
def test_a_writer_killed_inside_a_checkpoint_write_leaves_the_previous_one_whole(tmp_path, step):
    r = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path), "4", step], timeout=120)
    assert r.returncode == -signal.SIGKILL
    assert os.path.exists(tmp_path / (store.CHECKPOINT + ".tmp"))     # it died mid-write
    assert _whole_checkpoint(tmp_path) == 3


def test_killing_the_writer_at_random_moments_leaves_a_whole_checkpoint(tmp_path):
    """SIGKILL a process that does nothing but write 8 MB checkpoints, at random moments: the
    checkpoint on disk is always a whole one (W all equal to its round, metrics one row per round)."""
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "0", "-"])
        deadline = time.monotonic() + 30
        while not os.path.exists(tmp_path / store.CHECKPOINT):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        time.sleep(random.uniform(0.05, 0.4))
        proc.kill()
        proc.wait()
        _whole_checkpoint(tmp_path)


def _read_while_training(tmp_path, read) -> list[int]:
    """Calls read(path) -> rounds on disk, again and again while a run trains."""
    proc = start_job(2, tmp_path, *sets(output__dir="out", train__rounds=400, output__log_every=50))
    path = tmp_path / "out" / "run.h5"
    wait_for_rows(proc, path, 1)
    seen = []
    try:
        while proc.poll() is None and len(seen) < 20:
            seen.append(read(path))
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        wait_job(proc, 30)
    assert len(seen) >= 5 and seen == sorted(seen) and seen[-1] > seen[0]
    return seen


def test_run_file_is_readable_with_h5py_while_training(tmp_path):
    def read(path):
        with h5py.File(path, "r") as f:   # a plain h5py open, as any user would
            rounds = f["metrics/round"][()]
            loss = f["metrics/sub_loss"][: len(rounds)]
            assert f.attrs["status"] == "running" and f["model/W"].shape == f["model/W_init"].shape
        np.testing.assert_array_equal(rounds, np.arange(1, len(rounds) + 1))
        assert np.all(np.isfinite(loss))
        return len(rounds)
    _read_while_training(tmp_path, read)


@system_test
def test_run_file_is_readable_with_h5dump_while_training(tmp_path):
    why = debian_packages(["h5dump"], ["hdf5-tools"])
    if why:
        pytest.skip(f"no h5dump: {why}")

    def read(path):
        r = subprocess.run([shutil.which("h5dump"), "-d", "/metrics/round", str(path)], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        values = [int(v) for v in re.findall(r"\(\d+\): ([\d, ]+)", r.stdout) for v in v.split(",") if v.strip()]
        assert values == list(range(1, len(values) + 1))
        return len(values)
    _read_while_training(tmp_path, read)


def test_divergence_without_overflow_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    # p = 16 subnetworks of keep 1/16 at an lr that full GD takes: the loss grows for some rounds
    # without overflowing, and that counts as divergence too
    r = mpirun(2, *sets(output__dir="out", train__lr=8.0, masks__subnets=16, model__width=1024, data__n=128,
                        output__checkpoint_every=2), cwd=tmp_path)
    assert r.returncode == 2 and "training diverged" in r.stderr
    became, initial = map(float, re.search(r"loss became (\S+) in round \d+ \(initial loss (\S+);", r.stderr).groups())
    assert np.isfinite(became) and became > 1e3 * initial
    m = re.search(r"in round (\d+) .*the last checkpoint, round (\d+), whose losses were all finite and within "
                  r"the bounds, is kept", r.stderr)
    failed, kept = int(m.group(1)), int(m.group(2))
    ck = readback.read_checkpoint(str(tmp_path / "out"))
    assert ck["round"] == kept == (failed - 1) // 2 * 2
    assert np.all(np.isfinite(readback.read_checkpoint_W(str(tmp_path / "out"))))
    # the bounds: the full loss within 1000x the initial, the subnetworks' within 1000x / keep (1/16)
    assert np.all(ck["eval"]["loss"] <= 1e3 * ck["loss_init"])
    assert np.all(ck["metrics"]["sub_loss"] <= 16e3 * ck["loss_init"])


def test_a_subnetwork_loss_that_explodes_between_evaluations_stops_the_run_before_its_checkpoint(tmp_path):
    """Dropout at a huge lr: the subnetworks' loss explodes from round 1 while the full network is
    evaluated only every 50 rounds; the run stops in round 1, and only the initial checkpoint is
    there (none of a diverged state)."""
    r = mpirun(2, *sets(output__dir="out", train__lr=1e4, masks__kind="bernoulli", masks__subnets=2,
                        masks__keep=0.5, output__eval_every=50, output__checkpoint_every=1, model__width=256,
                        data__n=64), cwd=tmp_path)
    assert r.returncode == 2 and "the subnetworks' loss became " in r.stderr and " in round 1 " in r.stderr, r.stderr
    assert "the last checkpoint, round 0," in r.stderr
    assert readback.read_checkpoint(str(tmp_path / "out"))["round"] == 0
    with h5py.File(tmp_path / "out" / "run.h5") as f:
        assert f.attrs["status"] == "failed"


def test_a_finished_run_trains_longer_with_its_masks_rebuilt(tmp_path):
    job = dict(masks__kind="categorical", masks__subnets=2, model__width=256, data__n=64, output__record_masks=True,
               train__plan="rows")
    assert mpirun(2, *sets(output__dir="long", train__rounds=12, **job), cwd=tmp_path, env=ONE_THREAD).returncode == 0
    assert mpirun(2, *sets(output__dir="short", train__rounds=7, **job), cwd=tmp_path, env=ONE_THREAD).returncode == 0
    r = mpirun(1, "--resume", "short", "--set", "train.rounds=12", cwd=tmp_path, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    short, long = readback.read_run(str(tmp_path / "short")), readback.read_run(str(tmp_path / "long"))
    np.testing.assert_array_equal(short["model/W"], long["model/W"])
    np.testing.assert_array_equal(short["masks"], long["masks"])       # rows 1-7 rebuilt from (seed, round)
    np.testing.assert_array_equal(short["metrics"]["round"], np.arange(1, 13))
    assert short["attrs"]["status"] == "completed"
