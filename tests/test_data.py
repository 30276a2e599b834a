"""User data files: .h5, .npz and .csv read into the same X, Y; normalisation; a run on a file."""
import hashlib
import json

import h5py
import numpy as np
import pytest
from conftest import mpirun, sets

from mpisub import data
from mpisub.errors import UserError
from mpisub.store import read_run

RNG = np.random.default_rng(1)
X = RNG.standard_normal((30, 4))
Y = RNG.standard_normal((30, 2))


def test_the_three_formats_give_the_same_arrays(tmp_path):
    np.savez(tmp_path / "d.npz", inputs=X, targets=Y)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["X"], f["Y"] = X, Y[:, 0]          # a 1-D target is one output column
    header = "a,b,t1,c,d,t2"
    table = np.column_stack([X[:, :2], Y[:, 0], X[:, 2:], Y[:, 1]])
    np.savetxt(tmp_path / "d.csv", table, delimiter=",", header=header, comments="", fmt="%.17g")

    Xn, Yn = data.read_file(str(tmp_path / "d.npz"), "inputs", "targets")
    np.testing.assert_array_equal(Xn, X)
    np.testing.assert_array_equal(Yn, Y)
    Xh, Yh = data.read_file(str(tmp_path / "d.h5"))
    np.testing.assert_array_equal(Xh, X)
    np.testing.assert_array_equal(Yh, Y[:, :1])
    Xc, Yc = data.read_file(str(tmp_path / "d.csv"), target="t1, t2")
    np.testing.assert_array_equal(Xc, X)
    np.testing.assert_array_equal(Yc, Y)
    Xl, Yl = data.read_file(str(tmp_path / "d.csv"))   # default target: the last column
    np.testing.assert_array_equal(Yl, Y[:, 1:])
    assert Xl.shape == (30, 5)


def normalize(X, how):
    return data.Inputs.fit(X, how)(X)


def test_normalize():
    S = normalize(np.column_stack([X, np.full(30, 3.0)]), "standardize")
    np.testing.assert_allclose(S[:, :4].mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(S[:, :4].std(axis=0), 1)
    np.testing.assert_array_equal(S[:, 4], 0)     # a constant column stays finite
    U = normalize(X, "unit")
    np.testing.assert_allclose(np.sqrt((U**2).sum(axis=1)), 1)
    np.testing.assert_allclose(U * np.linalg.norm(X, axis=1)[:, None], X)
    assert normalize(X, "none") is X
    with pytest.raises(UserError, match="some samples are all zeros"):
        normalize(np.zeros((2, 3)), "unit")
    # new inputs are treated with the training set's statistics
    fit = data.Inputs.fit(X, "standardize")
    np.testing.assert_allclose(fit(X[:3] + 1.0), (X[:3] + 1.0 - X.mean(axis=0)) / X.std(axis=0))


@pytest.mark.slow
def test_a_run_on_a_csv_file_records_its_source_and_hash(tmp_path):
    Xs = RNG.standard_normal((64, 3))
    ys = np.maximum(Xs @ np.array([1.0, -2.0, 0.5]), 0)
    np.savetxt(tmp_path / "train.csv", np.column_stack([Xs, ys]), delimiter=",", header="x1,x2,x3,y",
               comments="", fmt="%.17g")
    r = mpirun(2, *sets(data__source="train.csv", data__normalize="unit", output__dir="out", train__rounds=20,
                        model__width=256), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    digest = hashlib.sha256((tmp_path / "train.csv").read_bytes()).hexdigest()
    with h5py.File(tmp_path / "out" / "run.h5") as f:
        cfg = json.loads(f.attrs["config"])
        assert (cfg["data"]["n"], cfg["data"]["d"], cfg["data"]["outputs"]) == (64, 3, 1)
        assert f["data"].attrs["source"] == str(tmp_path / "train.csv") and f["data"].attrs["sha256"] == digest
        assert "X" not in f["data"]
        assert f["eval/loss"][-1] < f["metrics"].attrs["loss_init"] / 3
    # a run continues only on the data it started with
    (tmp_path / "train.csv").write_text((tmp_path / "train.csv").read_text() + "1,1,1,0\n")
    r = mpirun(2, "--resume", "out", "--set", "train.rounds=30", cwd=tmp_path)
    assert r.returncode == 2 and "data.source 'train.csv' changed since the run started" in r.stderr


@pytest.mark.slow
def test_classification_with_a_held_out_split_matches_numpy(tmp_path):
    """Integer labels become one-hot targets; data.holdout = 0.25 holds out the last quarter of a
    permutation from SeedSequence(data.seed, spawn_key=(0, 1)) (docs/design.md). The run's
    accuracies and test loss at its last evaluation equal plain numpy's on its final W."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((120, 6))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    labels = np.argmax(X @ rng.standard_normal((6, 3)), axis=1)          # 3 classes a network can learn
    np.savez(tmp_path / "cls.npz", X=X, Y=labels[:, None].astype(float))
    r = mpirun(2, *sets(data__source="cls.npz", data__task="classification", data__holdout=0.25,
                        output__dir="out", train__rounds=30, model__width=256, output__eval_every=1),
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = read_run(str(tmp_path / "out"))
    cfg = json.loads(run["attrs"]["config"])
    assert cfg["data"]["outputs"] == 3 and cfg["data"]["n"] == 90
    order = np.random.default_rng(np.random.SeedSequence(0, spawn_key=(0, 1))).permutation(120)
    train, test = order[:90], order[90:]
    W, a = run["model/W"], run["model/a"]
    out = np.maximum(X @ W.T, 0) @ a / np.sqrt(W.shape[0])
    onehot = np.eye(3)[labels]
    last = {name: values[-1] for name, values in run["eval"].items()}
    assert last["round"] == 30
    assert last["train_acc"] == np.mean(np.argmax(out[train], axis=1) == labels[train])
    assert last["test_acc"] == np.mean(np.argmax(out[test], axis=1) == labels[test])
    assert abs(last["test_loss"] / (0.5 * np.mean(np.sum((out[test] - onehot[test]) ** 2, axis=1))) - 1) < 1e-10
    assert abs(last["loss"] / (0.5 * np.mean(np.sum((out[train] - onehot[train]) ** 2, axis=1))) - 1) < 1e-10
    assert last["train_acc"] > 0.6                                      # it learned something
    assert "test_loss" in r.stdout and "train_acc" in r.stdout


def test_synthetic_test_points_come_from_the_same_teacher(tmp_path):
    """data.test_n draws more points after the training set: the training data is unchanged, and the
    test points follow the teacher (here without noise: a fit of the teacher to the training data
    predicts them)."""
    X, Y = data.synthetic(300, 5, 1, 0.0, 7)
    X2, Y2, Xt, Yt = data.synthetic(300, 5, 1, 0.0, 7, test_n=50)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(Y, Y2)
    np.testing.assert_allclose(np.linalg.norm(Xt, axis=1), 1.0)
    # the same teacher: relu(X V^T) b / scale, with V and b drawn right after X (masks.stream(seed, DATA))
    rng = np.random.default_rng(np.random.SeedSequence(7, spawn_key=(0,)))
    rng.standard_normal((300, 5))
    V, b = rng.standard_normal((data.TEACHER_WIDTH, 5)), rng.standard_normal((data.TEACHER_WIDTH, 1))
    scale = np.sqrt(np.mean((np.maximum(X @ V.T, 0) @ b) ** 2))
    np.testing.assert_allclose(Yt, np.maximum(Xt @ V.T, 0) @ b / scale, rtol=1e-12)


def test_read_inputs_takes_the_input_columns_and_names_the_file(tmp_path):
    A = np.random.default_rng(2).standard_normal((5, 3))
    np.savetxt(tmp_path / "x.csv", np.column_stack([A[:, :1], np.ones(5), A[:, 1:]]), delimiter=",",
               header="u,label,v,w", comments="")
    np.testing.assert_array_equal(data.read_inputs(str(tmp_path / "x.csv"), "X", "label", 3), A)
    with pytest.raises(UserError, match=r"x.csv.*give its 2 input columns"):
        data.read_inputs(str(tmp_path / "x.csv"), "X", "", 2)
    with pytest.raises(UserError, match="not found"):
        data.read_inputs(str(tmp_path / "none.npz"), "X", "", 3)
