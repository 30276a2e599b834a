"""Whole runs under mpirun (K = 1, 2, 4) against the plain-numpy replay, and K-invariance."""
import numpy as np
import pytest
from helpers.jobs import ONE_THREAD, mpirun, sets
from helpers.reference import replay, rows_received_by_rank0, rows_sent_by_rank0

from mpisub.io.readback import read_run
from mpisub.nn import masks as mpisub_masks

SMALL = dict(data__n=40, data__d=5, data__outputs=2, model__width=24, train__rounds=4, output__eval_every=1,
             train__local_steps=3, train__lr=1.5, output__record_masks=True, train__plan="rows")
KINDS = {
    "partition": dict(masks__kind="partition", masks__subnets=4),
    "categorical": dict(masks__kind="categorical", masks__subnets=4),
    "bernoulli": dict(masks__kind="bernoulli", masks__subnets=4, masks__keep=0.6),
    "full": dict(masks__kind="full", masks__subnets=1),
}
CASES = [(kind, K) for kind in KINDS for K in (1, 2, 4) if kind != "full" or K == 1]


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Each (kind, K) trained once for the whole session."""
    done = {}

    def get(kind, K, **extra):
        key = (kind, K, tuple(sorted(extra.items())))
        if key not in done:
            folder = tmp_path_factory.mktemp(f"{kind}-K{K}")
            r = mpirun(K, *sets(**SMALL, **KINDS[kind], **extra, output__dir=str(folder / "run")), cwd=folder,
                       env=ONE_THREAD)
            assert r.returncode == 0, r.stderr
            done[key] = read_run(str(folder / "run"))
        return done[key]
    return get


def rel_diff(x, y):
    return np.abs(x - y).max() / np.abs(y).max()


@pytest.mark.parametrize("kind,K", CASES)
def test_run_matches_numpy_replay(runs, kind, K):
    run = runs(kind, K)
    assert run["attrs"]["status"] == "completed"
    assert run["attrs"]["ranks"] == K
    keep = {"bernoulli": 0.6, "full": 1.0}.get(kind, 0.25)
    W, losses, sub_losses = replay(run["model/W_init"], run["model/a"], run["data/X"], run["data/Y"],
                                   run["masks"].astype(float), keep, lr=1.5, local_steps=3)
    assert rel_diff(W, run["model/W_init"]) > 1e-3  # training moved the weights
    assert rel_diff(run["model/W"], W) <= 1e-10
    np.testing.assert_array_equal(run["eval"]["round"], [0, 1, 2, 3, 4])   # output.eval_every = 1
    assert run["eval"]["loss"][0] == run["metrics"]["loss_init"]
    assert rel_diff(run["eval"]["loss"][1:], losses) <= 1e-10
    assert rel_diff(run["metrics"]["sub_loss"], sub_losses) <= 1e-10
    np.testing.assert_array_equal(run["metrics"]["round"], [1, 2, 3, 4])


def test_recorded_masks_follow_their_kind(runs):
    part = runs("partition", 2)["masks"]
    assert part.shape == (4, 4, 24)
    assert np.all(part.sum(axis=1) == 1) and np.all(part.sum(axis=2) == 6)  # disjoint, covering, balanced
    cat = runs("categorical", 2)["masks"]
    assert np.all(cat.sum(axis=1) == 1)
    assert len({m.tobytes() for m in cat}) == 4  # fresh every round
    bern = runs("bernoulli", 2)["masks"]
    assert 0.4 < bern.mean() < 0.8 and set(np.unique(bern)) == {0, 1}
    assert np.all(runs("full", 1)["masks"] == 1)


@pytest.mark.parametrize("kind", ["partition", "categorical", "bernoulli"])
def test_same_seed_same_weights_for_any_number_of_ranks(runs, kind):
    W1, W2, W4 = (runs(kind, K)["model/W"] for K in (1, 2, 4))
    for K in (2, 4):
        np.testing.assert_array_equal(runs(kind, K)["masks"], runs(kind, 1)["masks"])
    # each owner sums a neuron's trained copies in subnet order: identical bits for every kind,
    # overlapping (bernoulli) masks included
    assert W2.tobytes() == W1.tobytes() and W4.tobytes() == W1.tobytes()


def test_identical_bits_for_any_number_of_ranks_at_a_realistic_size(tmp_path):
    """Large enough that BLAS blocks its products: K = 1 and 4 still agree to the bit."""
    W = {}
    for K in (1, 4):
        args = sets(data__n=1000, data__d=100, data__outputs=3, model__width=2048, masks__kind="categorical",
                    masks__subnets=8, train__rounds=3, train__lr=4.0, train__plan="rows", output__dir=f"K{K}")
        r = mpirun(K, *args, cwd=tmp_path, env=ONE_THREAD)
        assert r.returncode == 0, r.stderr
        W[K] = read_run(str(tmp_path / f"K{K}"))["model/W"]
    assert W[1].tobytes() == W[4].tobytes()


def test_minibatch_local_steps_match_replay(runs):
    run = runs("partition", 2, train__batch_size=16)
    batches = [[mpisub_masks.minibatches(40, 16, 3, 0, k, l) for l in range(4)] for k in range(4)]
    W, losses, _ = replay(run["model/W_init"], run["model/a"], run["data/X"], run["data/Y"],
                          run["masks"].astype(float), 0.25, lr=1.5, local_steps=3, batches=batches)
    assert rel_diff(run["model/W"], W) <= 1e-10
    assert rel_diff(run["eval"]["loss"][1:], losses) <= 1e-10


def test_float32_run_tracks_the_float64_replay(runs):
    run = runs("bernoulli", 2, model__dtype="float32")
    assert run["model/W"].dtype == np.float32 and run["data/X"].dtype == np.float32
    W, losses, _ = replay(run["model/W_init"].astype(float), run["model/a"].astype(float),
                          run["data/X"].astype(float), run["data/Y"].astype(float),
                          run["masks"].astype(float), 0.6, lr=1.5, local_steps=3)
    assert rel_diff(run["model/W"], W) <= 1e-4
    assert rel_diff(run["eval"]["loss"][1:], losses) <= 1e-3


@pytest.mark.parametrize("kind,K", [("partition", 1), ("partition", 2), ("partition", 4),
                                    ("bernoulli", 2), ("bernoulli", 4)])
def test_bytes_are_the_rows_rank_0_sends_to_their_owners_and_holders(runs, kind, K):
    """Pull: rank 0's owned rows that other ranks' subnetworks hold; push: its subnetworks'
    trained rows that other ranks own. Plus the Allreduce of the n x c output block, the
    subnetwork loss sum, the stop flag and rank 0's failed-write flag (docs/design.md, section 8)."""
    run = runs(kind, K)
    n, c, d = 40, 2, 5
    metrics = (n * c + 8) * 8 + 8   # outputs, 4 flags, the sub-loss sum, 3 diagnostics; the largest row distance
    expected = [0 if K == 1 else rows_sent_by_rank0(M, K) * d * 8 + metrics for M in run["masks"]]
    np.testing.assert_array_equal(run["metrics"]["bytes_comm"], expected)
    expected = [0 if K == 1 else rows_received_by_rank0(M, K) * d * 8 + metrics for M in run["masks"]]
    np.testing.assert_array_equal(run["metrics"]["bytes_recv"], expected)


def test_evaluation_cadence_rows_and_bytes(tmp_path):
    """output.eval_every = 3 over 10 rounds: the full network is evaluated at round 0, every third
    round and at the last (docs/design.md, evaluation cadence),
    with the replay's losses there; rounds between move only the subnetworks' losses and the four
    flags (5 float64: stop, failed write, writing a shard, checkpoint clock) besides the plan's
    rows; evaluations add the n x c outputs, 3 lazy-regime
    sums and the largest row distance (a max)."""
    job = dict(SMALL, train__rounds=10, output__eval_every=3, output__log_every=1000)
    r = mpirun(2, *sets(**job, **KINDS["partition"], output__dir="out"), cwd=tmp_path, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    run = read_run(str(tmp_path / "out"))
    assert "loss" not in run["metrics"]
    np.testing.assert_array_equal(run["eval"]["round"], [0, 3, 6, 9, 10])
    _, losses, _ = replay(run["model/W_init"], run["model/a"], run["data/X"], run["data/Y"],
                          run["masks"].astype(float), 0.25, lr=1.5, local_steps=3)
    assert rel_diff(run["eval"]["loss"][1:], losses[run["eval"]["round"][1:] - 1]) <= 1e-10
    n, c, d = 40, 2, 5
    evaluated = np.isin(run["metrics"]["round"], run["eval"]["round"])
    expected = [rows_sent_by_rank0(M, 2) * d * 8 + ((n * c + 8) * 8 + 8 if e else 5 * 8)
                for M, e in zip(run["masks"], evaluated)]
    np.testing.assert_array_equal(run["metrics"]["bytes_comm"], expected)


def test_lr_scaling_keep_is_lr_times_keep(tmp_path):
    """train.lr_scaling = "keep" (the paper's lr = c keep) is the same run as lr = c x keep, to the bit."""
    base = dict(SMALL, **KINDS["bernoulli"])
    a = mpirun(2, *sets(**dict(base, train__lr=2.0, train__lr_scaling="keep"), output__dir="a"), cwd=tmp_path,
               env=ONE_THREAD)
    b = mpirun(2, *sets(**dict(base, train__lr=2.0 * 0.6), output__dir="b"), cwd=tmp_path, env=ONE_THREAD)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    A, B = read_run(str(tmp_path / "a")), read_run(str(tmp_path / "b"))
    np.testing.assert_array_equal(A["model/W"], B["model/W"])
    assert rel_diff(A["model/W"], A["model/W_init"]) > 1e-3


@pytest.mark.parametrize("plan", ["rows", "outputs"])
def test_cross_entropy_run_matches_the_replay(tmp_path, plan):
    """train.loss = cross_entropy on one-hot class targets, both plans, against the numpy replay
    with the softmax residual."""
    rng = np.random.default_rng(11)
    X = rng.standard_normal((40, 5))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    np.savez(tmp_path / "cls.npz", X=X, Y=rng.integers(0, 3, size=(40, 1)).astype(float))
    job = dict(SMALL, data__source="cls.npz", data__task="classification", train__loss="cross_entropy",
               train__plan=plan, **KINDS["bernoulli"])
    for key in ("data__n", "data__d", "data__outputs"):
        job.pop(key)
    r = mpirun(2, *sets(**job, output__dir="out"), cwd=tmp_path, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    run = read_run(str(tmp_path / "out"))
    Y = np.eye(3)[np.load(tmp_path / "cls.npz")["Y"][:, 0].astype(int)]
    W, losses, sub_losses = replay(run["model/W_init"], run["model/a"], X, Y, run["masks"].astype(float), 0.6,
                                   lr=1.5, local_steps=3, loss="cross_entropy")
    assert rel_diff(W, run["model/W_init"]) > 1e-3
    assert rel_diff(run["model/W"], W) <= 1e-10
    assert rel_diff(run["eval"]["loss"][1:], losses) <= 1e-10
    assert rel_diff(run["metrics"]["sub_loss"], sub_losses) <= 1e-10
