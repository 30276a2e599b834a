"""User data files: .h5, .npz and .csv read into the same X, Y; normalisation; a run on a file."""
import hashlib
import json

import h5py
import numpy as np
import pytest
from conftest import mpirun, sets

from mpisub import data
from mpisub.errors import UserError

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


def test_normalize():
    S = data.normalize(np.column_stack([X, np.full(30, 3.0)]), "standardize")
    np.testing.assert_allclose(S[:, :4].mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(S[:, :4].std(axis=0), 1)
    np.testing.assert_array_equal(S[:, 4], 0)     # a constant column stays finite
    U = data.normalize(X, "unit")
    np.testing.assert_allclose(np.sqrt((U**2).sum(axis=1)), 1)
    np.testing.assert_allclose(U * np.linalg.norm(X, axis=1)[:, None], X)
    assert data.normalize(X, "none") is X
    with pytest.raises(UserError, match="some samples are all zeros"):
        data.normalize(np.zeros((2, 3)), "unit")


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
        assert f["data"].attrs["source"] == "train.csv" and f["data"].attrs["sha256"] == digest
        assert "X" not in f["data"]
        assert f["eval/loss"][-1] < f["metrics"].attrs["loss_init"] / 3
    # a run continues only on the data it started with
    (tmp_path / "train.csv").write_text((tmp_path / "train.csv").read_text() + "1,1,1,0\n")
    r = mpirun(2, "--resume", "out", "--set", "train.rounds=30", cwd=tmp_path)
    assert r.returncode == 2 and "data.source 'train.csv' changed since the run started" in r.stderr
