"""The round loop in process, on K simulated ranks (simcomm.py): both plans against the plain-numpy
replay, the same bits for any K under plan rows, and what a logger receives (the fast tier's
whole-loop tests; test_replay.py runs the same under mpirun)."""
import re
import time

import numpy as np
import pytest
from helpers.reference import replay, surrogate_output
from helpers.simcomm import run_ranks

from mpisub import config
from mpisub.io import data, schema
from mpisub.io.loggers import Logger, Loggers
from mpisub.nn import masks, model
from mpisub.nn.theory import running_plateau
from mpisub.train import due, loop
from mpisub.train.resolve import settle

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
        return loop.run(cfg, comm, sets, loggers, say=lambda text: None)
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


@pytest.mark.parametrize("K,plan", [(1, "rows"), (2, "rows"), (3, "outputs")])
def test_uncovered_neurons_zeroed_as_the_authors_code_does_match_the_replay(K, plan):
    """masks.uncovered = 'zero' (Bernoulli keep 0.3, p = 2: about half the neurons are held by no
    subnetwork in a round) against the replay with the authors' aggregate: every plan and K."""
    job = ["masks.kind='bernoulli'", "masks.subnets=2", "masks.keep=0.3", "masks.uncovered='zero'",
           f"train.plan='{plan}'"]
    cfg, sets, results = train_at(K, job)
    M = np.array([masks.sample("bernoulli", 2, 0.3, cfg.model.width, cfg.train.seed, k) for k in range(4)], float)
    W0 = model.init_rows(cfg, 0, cfg.model.width)
    W, losses, _ = replay(W0, model.output_weights(cfg), sets.X, sets.Y, M, 0.3, lr=1.5, local_steps=3,
                          uncovered="zero")
    assert (M[-1].sum(axis=0) == 0).sum() >= 5 and np.all(W[M[-1].sum(axis=0) == 0] == 0)
    assert rel(whole(results), W) <= 1e-10
    assert rel(results[0]["eval"]["loss"][1:], losses) <= 1e-10
    keep, _, kept = train_at(K, job[:3] + [f"train.plan='{plan}'"])
    assert rel(whole(kept), W) > 1e-3                           # keeping them is another run


def test_the_standard_parametrization_is_the_ntk_run_with_mapped_kappa_and_lr():
    """f = relu(X W^T) a / sqrt(c), w ~ N(0, s^2 I / m), lr eta (the authors' code) equals the NTK
    run with kappa = s / sqrt(c) and lr = eta m / c, with W scaled by sqrt(c / m), to rounding."""
    m, c, s, eta = 24, 2, 0.7, 0.05
    _, _, standard = train_at(2, KINDS["bernoulli"] + ["model.parametrization='standard'",
                                                       f"model.init_scale={s}", f"train.lr={eta}"])
    _, _, ntk = train_at(2, KINDS["bernoulli"] + [f"model.init_scale={s / np.sqrt(c)}", f"train.lr={eta * m / c}"])
    assert rel(whole(standard), np.sqrt(c / m) * whole(ntk)) <= 1e-12
    assert rel(standard[0]["eval"]["loss"], ntk[0]["eval"]["loss"]) <= 1e-12
    assert rel(standard[0]["eval"]["loss"][-1:], standard[0]["eval"]["loss"][:1]) > 1e-2   # it trained


@pytest.mark.parametrize("K,plan", [(1, "rows"), (3, "outputs")])
def test_the_surrogate_mismatch_is_the_subnetworks_spread_around_the_full_network(K, plan):
    """theory.mismatch at the last evaluation: the mean over the next round's (round 4's) masks of
    ||f_l(W) - f(W)||^2 / 2n, f_l the surrogate the local steps train, in plain numpy."""
    cfg, sets, results = train_at(K, KINDS["bernoulli"] + ["theory.mismatch=true", f"train.plan='{plan}'"])
    W, a, X = whole(results), model.output_weights(cfg).astype(float), sets.X
    M = masks.sample("bernoulli", 4, 0.6, cfg.model.width, cfg.train.seed, 4).astype(float)
    f = surrogate_output(W, a, X, np.ones(cfg.model.width), 1.0)
    want = np.mean([np.sum((surrogate_output(W, a, X, M[l], 0.6) - f) ** 2) for l in range(4)]) / (2 * len(X))
    got = results[0]["eval"]["mismatch"]
    assert want > 1e-4 and abs(got[-1] - want) <= 1e-10 * want and np.all(np.isfinite(got))


def test_a_run_stops_where_the_authors_rule_says_on_its_own_losses():
    """train.plateau_window = 3: the run ends at the round the rule (theory.running_plateau, tested
    against the authors' loop in test_theory.py) picks on the losses of the same run left to go on."""
    job = KINDS["bernoulli"] + ["masks.keep=0.3", "train.rounds=60", "train.lr=0.5"]
    _, _, full = train_at(2, job)
    stop = running_plateau(full[0]["eval"]["loss"], 3)[0]
    assert stop is not None and 1 < stop < 60
    _, _, stopped = train_at(2, job + ["train.plateau_window=3"])
    assert len(stopped[0]["metrics"]["round"]) == stop
    np.testing.assert_array_equal(stopped[0]["eval"]["loss"], full[0]["eval"]["loss"][:stop + 1])


def test_a_logger_gets_every_row_with_the_schemas_columns():
    recorder = Recorder()
    cfg, _, results = train_at(2, KINDS["bernoulli"] + ["output.eval_every=3"], recorder)
    assert [row["round"] for row in recorder.rows] == [1, 2, 3, 4]
    assert [row["round"] for row in recorder.evals] == [0, 3, 4]          # round 0, every third, the last
    assert all(list(row) == list(schema.METRICS) for row in recorder.rows)
    assert all(set(row) == set(schema.EVAL) for row in recorder.evals)
    np.testing.assert_array_equal([row["sub_loss"] for row in recorder.rows], results[0]["metrics"]["sub_loss"])


def test_progress_says_elapsed_rate_and_time_left():
    schedule = due.Due(config.build(overrides=["train.rounds=100"]))
    schedule.begin(10)
    schedule.t0 = time.perf_counter() - 9.0          # nine seconds for the launch's first nine rounds
    got = re.fullmatch(r"elapsed (\S+)s  (\S+) rounds/s  ETA (\d+)m(\d+)s", schedule.progress(19))
    assert got, schedule.progress(19)
    assert abs(float(got[1]) - 9.0) < 0.5 and abs(float(got[2]) - 1.0) < 0.05
    assert abs(int(got[3]) * 60 + int(got[4]) - 81) <= 3    # 81 rounds left at one a second
