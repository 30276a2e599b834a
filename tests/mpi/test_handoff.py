"""Handing a trained network on: the run file's record of the inputs' normalization, Run.predict and
mpisub-predict, mpisub-export (.npz and a PyTorch state_dict), and mpisub-train --init-from. Every
number is checked against plain numpy on the run file's own W and a (or against PyTorch)."""
import hashlib
import subprocess

import h5py
import numpy as np
import pytest
from helpers.jobs import BIN, mpirun, sets

from mpisub.analysis.runs import open_run

pytestmark = pytest.mark.slow   # launches jobs

RNG = np.random.default_rng(11)


def command(name: str, *args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([f"{BIN}/{name}", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def numpy_outputs(run_dir, X_raw, mean, std) -> np.ndarray:
    """f(W, x) of the run file's W and a on raw inputs standardized by (mean, std): plain numpy."""
    with h5py.File(run_dir / "run.h5") as f:
        W, a = f["model/W"][()], f["model/a"][()]
    Z = (X_raw - mean) / std
    return np.maximum(Z @ W.T, 0) @ a / np.sqrt(len(W))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A classification run on a file of large, shifted inputs (so standardizing matters)."""
    tmp = tmp_path_factory.mktemp("handoff")
    X = RNG.standard_normal((90, 4)) * [1.0, 5.0, 0.2, 3.0] + [10.0, -3.0, 0.0, 7.0]
    y = (X[:, 0] - 10 + (X[:, 1] + 3) / 5 > 0).astype(float)
    np.savez(tmp / "train.npz", X=X, Y=y)
    r = mpirun(2, *sets(data__source="train.npz", data__task="classification", data__normalize="standardize",
                        output__dir="first", train__rounds=12, train__lr=0.5, model__width=64), cwd=tmp)
    assert r.returncode == 0, r.stderr
    return tmp, X


def test_the_run_file_stores_the_normalization_and_the_data_files_absolute_path(trained):
    tmp, X = trained
    with h5py.File(tmp / "first" / "run.h5") as f:
        g = f["data"]
        assert g.attrs["source"] == str(tmp / "train.npz")
        assert g.attrs["sha256"] == hashlib.sha256((tmp / "train.npz").read_bytes()).hexdigest()
        assert g.attrs["normalize"] == b"standardize"      # fixed-length bytes
        np.testing.assert_allclose(g["mean"][()], X.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(g["std"][()], X.std(axis=0), rtol=1e-12)


def test_predict_applies_the_training_normalization_and_the_network(trained):
    tmp, X = trained
    new = RNG.standard_normal((15, 4)) * 4 + 5
    expected = numpy_outputs(tmp / "first", new, X.mean(axis=0), X.std(axis=0))
    np.testing.assert_allclose(open_run(str(tmp / "first")).predict(new), expected, rtol=1e-10, atol=1e-12)
    # the command, from a .npz and from a CSV with or without the target column
    np.savez(tmp / "new.npz", X=new)
    np.savetxt(tmp / "new.csv", new, delimiter=",", header="a,b,c,d", comments="")
    np.savetxt(tmp / "new_y.csv", np.column_stack([new, np.zeros(15)]), delimiter=",", header="a,b,c,d,y", comments="")
    for source in ("new.npz", "new.csv", "new_y.csv"):
        r = command("mpisub-predict", "first", source, "-o", "pred.npz", cwd=tmp)
        assert r.returncode == 0, r.stderr
        assert "15 samples -> pred.npz" in r.stdout
        with np.load(tmp / "pred.npz") as out:
            np.testing.assert_allclose(out["outputs"], expected, rtol=1e-10, atol=1e-12)
            np.testing.assert_array_equal(out["labels"], np.argmax(expected, axis=1))
    r = command("mpisub-predict", "first", "train.npz", "-o", "pred.npz", cwd=tmp)   # its own training data
    with np.load(tmp / "pred.npz") as out:
        with h5py.File(tmp / "first" / "run.h5") as f:
            assert np.mean(out["labels"] == labels_of(X)) == pytest.approx(f["eval/train_acc"][-1])
    # wrong inputs: one line, exit 2, nothing written
    np.savez(tmp / "narrow.npz", X=new[:, :3])
    r = command("mpisub-predict", "first", "narrow.npz", "-o", "bad.npz", cwd=tmp)
    assert r.returncode == 2 and "the network takes 4 inputs" in r.stderr and not (tmp / "bad.npz").exists()


def labels_of(X):
    return (X[:, 0] - 10 + (X[:, 1] + 3) / 5 > 0).astype(int)


def test_export_writes_the_network_that_numpy_and_torch_reproduce(trained):
    tmp, X = trained
    new = RNG.standard_normal((9, 4)) * 3 + 4
    expected = numpy_outputs(tmp / "first", new, X.mean(axis=0), X.std(axis=0))
    r = command("mpisub-export", "first", "-o", "model.npz", cwd=tmp)
    assert r.returncode == 0, r.stderr
    with np.load(tmp / "model.npz") as net:
        assert str(net["normalize"]) == "standardize" and str(net["task"]) == "classification"
        Z = (new - net["mean"]) / net["std"]
        np.testing.assert_allclose(net["scale"] * np.maximum(Z @ net["W"].T, 0) @ net["a"], expected, rtol=1e-12)
    torch = pytest.importorskip("torch")
    r = command("mpisub-export", "first", "-o", "model.pt", cwd=tmp)
    assert r.returncode == 0, r.stderr
    ck = torch.load(tmp / "model.pt")
    m, d = ck["state_dict"]["0.weight"].shape
    net = torch.nn.Sequential(torch.nn.Linear(d, m, bias=False), torch.nn.ReLU(),
                              torch.nn.Linear(m, 2, bias=False)).double()
    net.load_state_dict(ck["state_dict"])
    with torch.no_grad():
        out = net((torch.from_numpy(new) - ck["mean"]) / ck["std"]).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-13)


def test_init_from_starts_a_new_run_from_a_finished_runs_weights(trained):
    tmp, X = trained
    r = mpirun(2, *sets(data__source="train.npz", data__task="classification", data__normalize="standardize",
                        output__dir="second", train__rounds=6, train__lr=0.25, model__width=64, train__seed=3),
               "--init-from", "first", cwd=tmp)
    assert r.returncode == 0, r.stderr
    with h5py.File(tmp / "first" / "run.h5") as f1, h5py.File(tmp / "second" / "run.h5") as f2:
        np.testing.assert_array_equal(f2["model/W_init"][()], f1["model/W"][()])
        np.testing.assert_array_equal(f2["model/a"][()], f1["model/a"][()])
        # the new run starts where the first ended: its initial loss is the first's final one
        assert f2["metrics"].attrs["loss_init"] == pytest.approx(f1["eval/loss"][-1], rel=1e-12)
        assert f2.attrs["init_round"] == 12
    r = command("mpisub-inspect", "second", cwd=tmp)
    assert f"started from the weights of {tmp / 'first' / 'run.h5'} (its round 12" in r.stdout
    # another width: one line naming the key, exit 2
    r = mpirun(2, *sets(data__source="train.npz", data__task="classification", output__dir="third",
                        model__width=32), "--init-from", "first", cwd=tmp)
    assert r.returncode == 2 and "the new run must have the same model.width" in r.stderr
    assert not (tmp / "third").exists()

