"""The round loop in process, on K simulated ranks (simcomm.py): both plans against the plain-numpy
replay, the same bits for any K under plan rows, and what a logger receives (the fast tier's
whole-loop tests; test_replay.py runs the same under mpirun)."""
import re
import time

import numpy as np
import pytest
from reference import replay
from simcomm import run_ranks

from mpisub import cadence, config, data, masks, model, schema, train
from mpisub.loggers import Logger, Loggers
from mpisub.resolve import settle

JOB = ["data.n=40", "data.d=5", "data.outputs=2", "model.width=24", "train.rounds=4", "output.eval_every=1",
       "train.local_steps=3", "train.lr=1.5", "theory.max_n=0"]
KINDS = {"partition": ["masks.kind='partition'", "masks.subnets=4"],
         "categorical": ["masks.kind='categorical'", "masks.subnets=4"],
         "bernoulli": ["masks.kind='bernoulli'", "masks.subnets=4", "masks.keep=0.6"],
         "full": ["masks.kind='full'", "masks.subnets=1"]}


class Recorder(Logger):
    """A logger that keeps what it is told (a new output writer is a class like this one)."""

    def __init__(self):
        self.rows, self.evals, self.saved = [], [], []

    def log_round(self, row, masks=None):
        self.rows.append(row)

    def log_eval(self, row):
        self.evals.append(row)


def train_at(K: int, overrides: list, recorder=None) -> tuple:
    """(settled config, data, every rank's train.run result) of a job on K simulated ranks."""
    cfg = settle(config.build(overrides=JOB + overrides), K, (40, 5, 2))[0]
    sets = data.load_sets(cfg)

    def rank(comm):
        loggers = Loggers([recorder] if recorder is not None and comm.rank == 0 else [])
        return train.run(cfg, comm, sets, loggers, say=lambda text: None)
    return cfg, sets, run_ranks(K, rank)


def whole(results) -> np.ndarray:
    return np.concatenate([r["W"] for r in results])


def the_replay(cfg, sets):
    M = np.array([masks.sample(cfg.masks.kind, cfg.masks.subnets, cfg.masks.keep, cfg.model.width, cfg.train.seed, k)
                  for k in range(cfg.train.rounds)], dtype=float)
    W0 = model.init_rows(cfg, 0, cfg.model.width)
    return replay(W0, model.output_weights(cfg), sets.X, sets.Y, M, cfg.masks.keep, lr=1.5, local_steps=3), W0


def rel(x, y) -> float:
    return float(np.abs(x - y).max() / np.abs(y).max())


CASES = [(kind, K, "rows") for kind in ("partition", "categorical", "bernoulli") for K in (1, 2, 4)] + \
    [("full", 1, "rows"), ("full", 3, "outputs"), ("bernoulli", 3, "outputs"), ("partition", 2, "outputs")]


@pytest.mark.parametrize("kind,K,plan", CASES)
def test_the_loop_on_K_ranks_matches_the_numpy_replay(kind, K, plan):
    cfg, sets, results = train_at(K, KINDS[kind] + [f"train.plan='{plan}'"])
    (W, losses, sub_losses), W0 = the_replay(cfg, sets)
    assert rel(W, W0) > 1e-3                                   # training moved the weights
    assert rel(whole(results), W) <= 1e-10
    assert rel(results[0]["eval"]["loss"][1:], losses) <= 1e-10
    assert rel(results[0]["metrics"]["sub_loss"], sub_losses) <= 1e-10


@pytest.mark.parametrize("kind", ["partition", "categorical", "bernoulli"])
def test_plan_rows_gives_the_same_bits_for_any_K(kind):
    one = whole(train_at(1, KINDS[kind] + ["train.plan='rows'"])[2])
    for K in (2, 4):
        assert whole(train_at(K, KINDS[kind] + ["train.plan='rows'"])[2]).tobytes() == one.tobytes()


def test_a_logger_gets_every_row_with_the_schemas_columns():
    recorder = Recorder()
    cfg, _, results = train_at(2, KINDS["bernoulli"] + ["output.eval_every=3"], recorder)
    assert [row["round"] for row in recorder.rows] == [1, 2, 3, 4]
    assert [row["round"] for row in recorder.evals] == [0, 3, 4]          # round 0, every third, the last
    assert all(list(row) == list(schema.METRICS) for row in recorder.rows)
    assert all(set(row) == set(schema.EVAL) for row in recorder.evals)
    np.testing.assert_array_equal([row["sub_loss"] for row in recorder.rows], results[0]["metrics"]["sub_loss"])


def test_progress_says_elapsed_rate_and_time_left():
    due = cadence.Cadence(config.build(overrides=["train.rounds=100"]))
    due.begin(10)
    due.t0 = time.perf_counter() - 9.0          # nine seconds for the launch's first nine rounds
    got = re.fullmatch(r"elapsed (\S+)s  (\S+) rounds/s  ETA (\d+)m(\d+)s", due.progress(19))
    assert got, due.progress(19)
    assert abs(float(got[1]) - 9.0) < 0.5 and abs(float(got[2]) - 1.0) < 0.05
    assert abs(int(got[3]) * 60 + int(got[4]) - 81) <= 3    # 81 rounds left at one a second
