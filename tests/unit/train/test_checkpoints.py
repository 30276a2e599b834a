"""Sharded, asynchronous checkpoints in process, on K simulated ranks: every rank writes its own
rows, rank 0 a manifest; the checkpoint and the run file read back as the weights the ranks hold,
for a resume at any K; the previous checkpoint's shards go once the next is whole; a rank whose
shard write fails stops every rank."""
import os

import numpy as np
import pytest
from helpers.simcomm import run_ranks

from mpisub import config
from mpisub._util.errors import UserError
from mpisub.io import data, readback, store
from mpisub.io.loggers import Loggers
from mpisub.train import loop
from mpisub.train.resolve import settle

JOB = ["data.n=40", "data.d=5", "data.outputs=2", "model.width=24", "train.rounds=5", "output.eval_every=1",
       "train.local_steps=2", "train.lr=1.5", "theory.max_n=0", "masks.subnets=4", "train.plan='rows'",
       "output.checkpoint_every=2"]


def train_at(K: int, folder: str, extra=()) -> list:
    cfg = settle(config.build(overrides=JOB + [f"output.dir='{folder}'", *extra]), K, (40, 5, 2))[0]
    sets = data.load_sets(cfg)

    def rank(comm):
        loggers = [store.RunFile(folder, store.Header(cfg.to_json()), overwrite=True)] if comm.rank == 0 else []
        log = Loggers(loggers)
        try:
            return loop.run(cfg, comm, sets, log, say=lambda text: None)
        except UserError as e:   # each rank's, as it would stop (rank 0 prints its own)
            return e
        finally:
            log.finalize("completed")
    return run_ranks(K, rank)


@pytest.mark.parametrize("K", [1, 2, 4])
def test_the_checkpoint_and_the_run_file_hold_the_ranks_weights(tmp_path, K):
    results = train_at(K, str(tmp_path))
    W = np.concatenate([r["W"] for r in results])
    ck = readback.read_checkpoint(str(tmp_path))
    assert ck["round"] == 5 and [s.lo for s in ck["shards"]] == [k * 24 // K for k in range(K)]
    np.testing.assert_array_equal(readback.read_checkpoint_W(str(tmp_path)), W)
    for lo, hi in ((0, 24), (3, 17), (11, 12)):       # any rank's block at any K, its chunks verified
        np.testing.assert_array_equal(readback.read_checkpoint_W(str(tmp_path), lo, hi), W[lo:hi])
    run = readback.read_run(str(tmp_path))
    np.testing.assert_array_equal(run["model/W"], W)
    assert np.isfinite(run["model/W_init"]).all() and not np.array_equal(run["model/W_init"], W)
    # the checkpoints of rounds 0, 2 and 4 went once round 5's was whole: its shards and W_init's are left
    left = sorted(os.listdir(tmp_path / "shards"))
    assert len(left) == 2 * K and all(".r00000005." in n or n.startswith("W_init.") for n in left), left


def test_a_shard_that_cannot_be_written_stops_every_rank_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from mpisub.io import shards
    real = shards.write

    def full_disk_on_rank_1_at_round_4(folder, name, rows, lo):
        if ".r00000004.k1of2" in name:
            raise OSError(28, "No space left on device")
        return real(folder, name, rows, lo)
    monkeypatch.setattr(shards, "write", full_disk_on_rank_1_at_round_4)
    stopped = train_at(2, str(tmp_path))
    assert all(isinstance(e, UserError) for e in stopped)
    assert "writing a shard of W failed on rank 1: No space left on device" in str(stopped[0])
    assert "the last good checkpoint (round 2) is kept" in str(stopped[0])
    assert readback.read_checkpoint(str(tmp_path))["round"] == 2


def test_a_checkpoint_trains_on_while_its_shard_is_written_and_commits_once_no_rank_writes(tmp_path, monkeypatch):
    """Checkpoints.start returns while the shard write still runs (it blocks here until released);
    the manifest comes only once the round's flags say no rank is writing."""
    import threading

    from mpisub.io import shards
    from mpisub.parallel.layout import Layout
    from mpisub.train.checkpoints import Checkpoints
    release, real = threading.Event(), shards.write
    monkeypatch.setattr(shards, "write", lambda *a: (release.wait(30), real(*a))[1])
    cfg = settle(config.build(overrides=JOB + [f"output.dir='{tmp_path}'"]), 1, (40, 5, 2))[0]

    def rank(comm):
        committed = []

        class Keeper(Loggers):
            def log_checkpoint(self, parts, state):
                committed.append((state["round"], [p.name for p in parts]))
        checkpoints = Checkpoints(cfg, comm, Layout.of(cfg, comm), Keeper([]))
        checkpoints.start(np.ones((24, 5)), {"round": 3})
        busy = checkpoints.busy
        checkpoints.poll(busy)             # a rank still writes: nothing is committed
        before = list(committed)
        release.set()
        checkpoints.writer.thread.join()
        checkpoints.poll(checkpoints.busy)
        return busy, before, committed
    busy, before, committed = run_ranks(1, rank)[0]
    assert busy == 1.0 and before == [] and [r for r, _ in committed] == [3]
    assert os.path.exists(tmp_path / committed[0][1][0])


def test_checkpoint_seconds_adds_checkpoints_on_rank_0s_clock(tmp_path, monkeypatch):
    """output.checkpoint_seconds: once that many seconds have passed (here: any time at all) rank 0's
    clock flag makes the round's checkpoint due on every rank; 0 leaves the rounds' cadence alone."""
    committed = []
    real = store.RunFile.log_checkpoint
    monkeypatch.setattr(store.RunFile, "log_checkpoint",
                        lambda self, parts, state: (committed.append(state["round"]), real(self, parts, state)))
    (tmp_path / "timed").mkdir()
    (tmp_path / "rounds").mkdir()
    train_at(2, str(tmp_path / "timed"), ["output.checkpoint_every=1000", "output.checkpoint_seconds=1e-9"])
    assert committed == [0, 1, 2, 3, 4, 5]
    committed.clear()
    train_at(2, str(tmp_path / "rounds"), ["output.checkpoint_every=1000"])
    assert committed == [0, 5]
