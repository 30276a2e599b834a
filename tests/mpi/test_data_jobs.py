"""Runs on users' data files: the source and hash a run records, a held-out split against numpy."""
import hashlib
import json

import h5py
import numpy as np
from helpers.jobs import mpirun, sets

from mpisub.io.readback import read_run

RNG = np.random.default_rng(1)

X = RNG.standard_normal((30, 4))

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
