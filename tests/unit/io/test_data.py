"""User data files: .h5, .npz and .csv read into the same X, Y; normalisation; a run on a file."""

import h5py
import numpy as np
import pytest

from mpisub._util.errors import UserError
from mpisub.io import data

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
