"""Reading runs: lambda_0 against an independent eigenvalue computation, the notebook API,
mpisub-inspect's numbers and comparison table, mpisub-plot's image and its missing-matplotlib message."""
import json
import math
import os
import re
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from helpers.jobs import mpirun, sets, start_job, wait_job

import mpisub
from mpisub.analysis import report
from mpisub.nn import theory

BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two small runs that differ in masks.subnets only, and one with n above theory.store_H_max_n."""
    folder = tmp_path_factory.mktemp("runs")
    for name, p in (("p2", 2), ("p4", 4)):
        r = mpirun(2, *sets(output__dir=name, masks__subnets=p, train__rounds=25, data__n=200, model__width=1024),
                   cwd=folder)
        assert r.returncode == 0, r.stderr
    return folder


def _independent_ntk(X):
    """H from its definition as an expectation, by Monte Carlo-free closed form written out
    per pair with the angle from arccos of normalised inner products (a loop, not gram_rows)."""
    n = X.shape[0]
    H = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            c = X[i] @ X[j] / (np.linalg.norm(X[i]) * np.linalg.norm(X[j]))
            theta = math.acos(max(-1.0, min(1.0, c)))
            H[i, j] = X[i] @ X[j] * (math.pi - theta) / (2 * math.pi)
    return H


def test_lambda0_matches_an_independent_eigenvalue_computation(two_runs):
    with h5py.File(two_runs / "p2" / "run.h5") as f:
        X, H, lam = f["data/X"][()], f["theory/H"][()], f["theory/lambda0"][()]
    ref = _independent_ntk(X)
    np.testing.assert_allclose(H, ref, atol=1e-7)   # arccos near cos = 1 is ill-conditioned at 1e-8
    assert math.isclose(lam, np.linalg.eigvalsh(ref)[0], rel_tol=1e-6)
    assert lam > 0


def test_lambda0_skipped_above_max_n_and_H_only_for_small_n(tmp_path):
    r = mpirun(2, *sets(output__dir="big", data__n=300, theory__store_H_max_n=100, train__rounds=2,
                        model__width=256), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = mpirun(2, *sets(output__dir="off", data__n=300, theory__max_n=299, train__rounds=2, model__width=256),
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with h5py.File(tmp_path / "big" / "run.h5") as f:
        assert "theory/lambda0" in f and "theory/H" not in f
    with h5py.File(tmp_path / "off" / "run.h5") as f:
        assert "theory" not in f


def test_open_run_and_open_runs(two_runs):
    run = mpisub.open_run(str(two_runs / "p4"))
    with h5py.File(two_runs / "p4" / "run.h5") as f:
        np.testing.assert_array_equal(run.W, f["model/W"][()])
        np.testing.assert_array_equal(run.W_init, f["model/W_init"][()])
        np.testing.assert_array_equal(run.eval["loss"], f["eval/loss"][()])
        assert run.config == json.loads(f.attrs["config"]) and run.status == f.attrs["status"] == "completed"
        assert run.lambda0 == f["theory/lambda0"][()]
    assert run.config["masks"]["subnets"] == 4
    runs = mpisub.open_runs(str(two_runs / "p*"))
    assert [os.path.basename(r.folder) for r in runs] == ["p2", "p4"]
    assert mpisub.open_runs(str(two_runs / "nothing*")) == []


def test_inspect_numbers_and_comparison_table(two_runs):
    inspect = os.path.join(BIN, "mpisub-inspect")
    paths = [str(two_runs / "p2"), str(two_runs / "p4")]
    js = json.loads(subprocess.run([inspect, *paths, "--json"], capture_output=True, text=True, timeout=60).stdout)
    for path, s in zip(paths, js):
        with h5py.File(os.path.join(path, "run.h5")) as f:
            rounds, loss = f["eval/round"][1:], f["eval/loss"][1:]     # row 0: the initial weights
            assert s["loss_final"] == loss[-1] and s["loss_best"] == loss.min()
            assert s["loss_init"] == f["metrics"].attrs["loss_init"]
            best = int(np.argmin(loss))
            assert s["scores"]["loss"] == {"final": loss[-1], "best": loss[best], "best_round": rounds[best]}
            sub = f["metrics/sub_loss"][()]
            assert s["scores"]["sub_loss"] == {"final": sub[-1], "best": sub.min(), "best_round": 1 + np.argmin(sub)}
            assert s["lambda0"] == f["theory/lambda0"][()]
            slope = np.polyfit(rounds, np.log(loss), 1)[0]
            assert math.isclose(s["rate_per_round"], math.exp(slope), rel_tol=1e-9)
            assert s == {**s, **theory.curve_summary(f["eval/round"][()], f["eval/loss"][()])}
            assert math.isclose(s["seconds"]["wall"], f["metrics/seconds_wall"][()].sum())
            assert s["bytes_comm"] == f["metrics/bytes_comm"][()].sum()
            assert len(s["peak_rss_mb"]) == 2
    text = subprocess.run([inspect, *paths], capture_output=True, text=True, timeout=60).stdout
    table = text[text.index("\nrun "):].strip().splitlines()
    header = table[0].split()
    # only the keys the user set apart are columns (subnets; not keep, which followed from it)
    assert header[:6] == ["run", "masks.subnets", "status", "rounds", "final", "loss"]
    assert "(config keys that differ: masks.subnets)" in text
    rows = {line.split()[0]: line.split() for line in table[2:4]}
    assert rows[paths[0]][1] == "2" and rows[paths[1]][1] == "4"
    assert float(rows[paths[1]][4]) == pytest.approx(js[1]["loss_final"], rel=1e-4)
    assert float(rows[paths[1]][5]) == pytest.approx(js[1]["loss_best"], rel=1e-4)


def test_plot_writes_an_image_with_the_curves(two_runs, tmp_path):
    plot = os.path.join(BIN, "mpisub-plot")
    out = tmp_path / "loss.png"
    r = subprocess.run([plot, str(two_runs / "p2"), str(two_runs / "p4"), "-o", str(out), "--theory", "--x", "seconds"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    import matplotlib.image
    img = matplotlib.image.imread(str(out))
    assert img.shape[0] > 300 and img.shape[1] > 500
    # the first two colours of the cycle (C0 blue, C1 orange) are drawn: two runs
    rgb = img[..., :3]
    for colour in ((0x1f, 0x77, 0xb4), (0xff, 0x7f, 0x0e)):
        assert (np.abs(rgb - np.array(colour) / 255).sum(axis=-1) < 0.05).sum() > 100


def test_plot_without_matplotlib_says_how_to_install_it(two_runs, tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None; from mpisub.analysis.plot import plot_main; "
            f"plot_main([{str(two_runs / 'p2')!r}, '-o', {str(tmp_path / 'x.png')!r}])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == ("mpisub-plot: error: plotting needs matplotlib: pip install 'mpisub[plot]' "
                                "(or pip install matplotlib)")


def test_inspect_says_when_a_running_run_has_gone_quiet(two_runs, tmp_path):
    """A job killed outright leaves status 'running'; inspect points at --resume once the file
    has not changed for far longer than a round takes."""
    import shutil
    shutil.copytree(two_runs / "p2", tmp_path / "dead")
    path = tmp_path / "dead" / "run.h5"
    with h5py.File(path, "r+") as f:
        f.attrs["status"] = "running"
    inspect = os.path.join(BIN, "mpisub-inspect")
    fresh = subprocess.run([inspect, str(tmp_path / "dead")], capture_output=True, text=True, timeout=60).stdout
    assert "may have died" not in fresh
    hour_ago = os.path.getmtime(path) - 3600
    os.utime(path, (hour_ago, hour_ago))
    old = subprocess.run([inspect, str(tmp_path / "dead")], capture_output=True, text=True, timeout=60).stdout
    assert "running (but no new round for 60 min: the job may have died; continue it with mpirun -n K " \
           f"mpisub-train --resume {tmp_path / 'dead'})" in old


def test_a_reader_catching_columns_mid_append_sees_the_rows_all_of_them_hold(two_runs, tmp_path):
    """A running job grows /eval and /metrics one column after another (store.Run.write_pending),
    so inspect --watch can find `round` a batch longer than `loss`: the reader keeps the common rows."""
    import shutil
    shutil.copytree(two_runs / "p2", tmp_path / "mid")
    path = tmp_path / "mid" / "run.h5"
    with h5py.File(path, "r") as f:
        rounds, loss = f["eval/round"][()], f["eval/loss"][()]
        metric_rounds = f["metrics/round"][()]
    with h5py.File(path, "r+") as f:
        for column, last in (("eval/round", rounds[-1]), ("metrics/round", metric_rounds[-1])):
            ds = f[column]
            ds.resize((ds.shape[0] + 1,))
            ds[-1] = last + 1
    run = mpisub.open_run(tmp_path / "mid")
    np.testing.assert_array_equal(run.eval["round"], rounds)
    np.testing.assert_array_equal(run.eval["loss"], loss)
    np.testing.assert_array_equal(run.metrics["round"], metric_rounds)
    assert {len(v) for v in run.metrics.values()} == {len(metric_rounds)}
    s = report.summary(run)
    assert s["loss_final"] == loss[-1] and s["rounds_done"] == len(metric_rounds)


def test_exports_tensorboard_and_dataframe_hold_the_run_files_numbers(tmp_path):
    """--csv, --jsonl, Run.to_dataframe, open_runs(...).to_dataframe and the TensorBoard events
    (read back with TensorBoard's own reader) against both of the run file's tables as h5py reads
    them: every per-round metric and every evaluation column (held-out loss included)."""
    import csv
    import io

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    for name, lr in (("tb", 4.0), ("tb2", 2.0)):
        r = mpirun(2, *sets(output__dir=name, output__tensorboard=True, train__rounds=7, model__width=128,
                            data__n=64, data__test_n=16, output__eval_every=2, train__lr=lr), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    with h5py.File(tmp_path / "tb" / "run.h5") as f:
        tables = {table: {name: f[table][name][()] for name in f[table]} for table in ("metrics", "eval")}
    assert list(tables["eval"]["round"]) == [0, 2, 4, 6, 7] and np.isfinite(tables["eval"]["test_loss"]).all()
    inspect = os.path.join(os.path.dirname(sys.executable), "mpisub-inspect")
    def inspect_as(flag):
        return subprocess.run([inspect, flag, "tb"], cwd=tmp_path, capture_output=True, text=True, timeout=60).stdout
    rows = list(csv.DictReader(io.StringIO(inspect_as("--csv"))))
    lines = [json.loads(line) for line in inspect_as("--jsonl").splitlines()]
    frame = mpisub.open_run(str(tmp_path / "tb")).to_dataframe()
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    assert len(rows) == len(lines) == 7 + 5 and list(frame.index) == list(range(8))
    for table, columns in tables.items():
        mine = [row for row in rows if row["table"] == table]
        theirs = [line for line in lines if line["table"] == table]
        for name, values in columns.items():
            np.testing.assert_array_equal([float(row[name]) for row in mine], values)     # repr round-trips
            np.testing.assert_array_equal([line[name] for line in theirs], values)
            if name == "round":
                continue
            np.testing.assert_array_equal(frame.loc[columns["round"], name].to_numpy(), values)
            scalars = events.Scalars(name)
            assert [s.step for s in scalars] == list(columns["round"])
            np.testing.assert_allclose([s.value for s in scalars], values, rtol=1e-6)   # TensorBoard keeps float32
    assert frame.loc[1, ["loss", "test_loss"]].isna().all() and frame.loc[0, ["sub_loss"]].isna().all()
    both = mpisub.open_runs(str(tmp_path / "tb*")).to_dataframe()
    assert list(both.columns[:3]) == ["run", "train.lr", "round"] and len(both) == 16
    np.testing.assert_array_equal(both[both["train.lr"] == 4.0]["loss"].to_numpy(), frame["loss"].to_numpy())
    # mpisub-plot --metric any column, against compute: the held-out loss at the evaluated rounds,
    # x = rounds x p tau keep (IST on 2 ranks: 5 full gradients a round)
    from mpisub.analysis import plot
    x, y = plot._curve(mpisub.open_run(str(tmp_path / "tb")), "test_loss", "compute")
    np.testing.assert_array_equal(x, 5.0 * tables["eval"]["round"])
    np.testing.assert_array_equal(y, tables["eval"]["test_loss"])
    drawn = subprocess.run([os.path.join(BIN, "mpisub-plot"), "tb", "tb2", "--metric", "test_loss", "--x", "compute",
                            "-o", "held.png"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert drawn.returncode == 0 and (tmp_path / "held.png").stat().st_size > 10000, drawn.stderr
    wrong = subprocess.run([os.path.join(BIN, "mpisub-plot"), "tb", "--metric", "tset_loss"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and wrong.stderr.startswith("mpisub-plot: error: --metric 'tset_loss': the runs have "
                                                             "no such column; they have bytes_comm"), wrong.stderr


def test_watch_follows_a_running_job_until_it_ends(tmp_path):
    # about 4 s of training on 2 cores: several refreshes at --every 0.5 after inspect has started
    proc = start_job(2, tmp_path, *sets(output__dir="w", train__rounds=2500, model__width=256, data__n=128,
                                        output__log_every=100))
    inspect = os.path.join(os.path.dirname(sys.executable), "mpisub-inspect")
    deadline = time.monotonic() + 60
    while not (tmp_path / "w" / "run.h5").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    r = subprocess.run([inspect, "--watch", "--every", "0.5", "w"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert wait_job(proc, 120) == 0
    assert r.returncode == 0, r.stderr
    views = r.stdout.count("mpisub-inspect --watch (")
    assert views >= 2, r.stdout                       # it refreshed while the job ran
    assert "s left at the pace of the last rounds" in r.stdout
    assert r.stdout.rstrip().split("mpisub-inspect --watch (")[-1].count("w: completed, 2500/2500 rounds") == 1


def test_lazy_regime_diagnostics_match_numpy_on_w_and_w_init(tmp_path):
    """dw_max, dw_rel, flips and lambda_min(H(W_k)) at the last evaluation, from an independent
    numpy computation on the run file's W, W_init and X (at K = 2: the ranks' sums add up; 1250
    rows per rank: W_init is drawn again in chunks, rank 1's not aligned to the streams' chunks)."""
    r = mpirun(2, *sets(output__dir="lazy", train__rounds=12, model__width=2500, data__n=96, train__lr=8.0,
                        theory__gram_max_n=200), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = mpisub.open_run(str(tmp_path / "lazy"))
    W, W0, X = run.W, run.W_init, run.X
    m = W.shape[0]
    last = {name: values[-1] for name, values in run.eval.items()}
    assert math.isclose(last["dw_max"], np.linalg.norm(W - W0, axis=1).max(), rel_tol=1e-12)
    assert math.isclose(last["dw_rel"], np.linalg.norm(W - W0) / np.linalg.norm(W0), rel_tol=1e-12)
    assert last["flips"] == np.mean((X @ W.T > 0) != (X @ W0.T > 0)) > 0
    D = (X @ W.T > 0).astype(float)
    H = (X @ X.T) * (D @ D.T) / m
    assert math.isclose(last["lambda_min"], np.linalg.eigvalsh(H)[0], rel_tol=1e-8)
    first = {name: values[0] for name, values in run.eval.items()}
    assert first["round"] == 0 and first["dw_max"] == 0 and first["flips"] == 0
    # inspect warns exactly when the run left the lazy regime (the numbers computed above)
    left = np.mean((X @ W.T > 0) != (X @ W0.T > 0)) > 0.10 or np.linalg.eigvalsh(H)[0] < run.lambda0 / 2
    shown = subprocess.run([os.path.join(BIN, "mpisub-inspect"), str(tmp_path / "lazy")], capture_output=True,
                           text=True, timeout=60).stdout
    assert ("WARNING: this run left the lazy regime" in shown) == left, shown
    assert "% of activation patterns flipped" in shown


def test_inspect_warns_when_a_run_leaves_the_lazy_regime(tmp_path):
    """A narrow network at a large step moves far from W_init: most activation patterns flip."""
    r = mpirun(2, *sets(output__dir="far", train__rounds=30, model__width=64, train__lr=40.0), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = mpisub.open_run(str(tmp_path / "far"))
    flips = np.mean((run.X @ run.W.T > 0) != (run.X @ run.W_init.T > 0))
    assert flips > 0.10
    shown = subprocess.run([os.path.join(BIN, "mpisub-inspect"), str(tmp_path / "far")], capture_output=True,
                           text=True, timeout=60).stdout
    assert f"WARNING: this run left the lazy regime the theory covers: {100 * flips:.1f}% of activation " \
           f"patterns flipped (over 10%)" in shown, shown


@pytest.mark.parametrize("command,args,fragment", [
    ("mpisub-inspect", ["--watch", "--every", "-1"], "argument --every: '-1' is not a number of seconds above 0"),
    ("mpisub-inspect", ["--watch", "--every", "nan"], "argument --every: 'nan' is not a number of seconds above 0"),
    ("mpisub-inspect", ["--watch", "--every", "inf"], "argument --every: 'inf' is not a number of seconds above 0"),
    ("mpisub-inspect", ["--watch", "--every", "0"], "argument --every: '0' is not a number of seconds above 0"),
    ("mpisub-plot", ["-o", "curves.foo"], "-o 'curves.foo': matplotlib writes no .foo files; give one of"),
])
def test_command_line_values_are_checked_in_one_line(two_runs, tmp_path, command, args, fragment):
    r = subprocess.run([os.path.join(BIN, command), str(two_runs / "p2"), *args], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"{command}: error: "), r.stderr
    assert fragment in r.stderr and not os.listdir(tmp_path)


def test_plot_without_an_extension_writes_a_png_and_says_so(two_runs, tmp_path):
    r = subprocess.run([os.path.join(BIN, "mpisub-plot"), str(two_runs / "p2"), "-o", "curves"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("wrote curves.png "), r.stdout + r.stderr
    assert sorted(os.listdir(tmp_path)) == ["curves.png"]


@pytest.mark.parametrize("damage,fragment", [
    (lambda f: f.attrs.__setitem__("status", 5), "attr 'status' is not a string"),
    (lambda f: f.attrs.__setitem__("config", "not json"), "attr 'config' is not a json dict"),
    (lambda f: f.__delitem__("metrics/sub_loss"), "metrics/sub_loss is missing"),
    (lambda f: (f.__delitem__("metrics/round"), f.create_dataset("metrics/round", data=np.zeros((3, 2)))),
     "metrics/round is float64 of shape (3, 2), not a column of numbers"),
])
def test_readers_refuse_a_run_file_of_another_layout_in_one_line(two_runs, tmp_path, damage, fragment):
    """mpisub-inspect, mpisub-plot and open_run read back what mpisub wrote as untrusted input."""
    import shutil
    shutil.copytree(two_runs / "p2", tmp_path / "run")
    with h5py.File(tmp_path / "run" / "run.h5", "r+") as f:
        damage(f)
    for command in ("mpisub-inspect", "mpisub-plot"):
        r = subprocess.run([os.path.join(BIN, command), str(tmp_path / "run"), "-o" if command == "mpisub-plot" else
                            "--json", *(["x.png"] if command == "mpisub-plot" else [])], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and fragment in r.stderr, r.stderr
    with pytest.raises(mpisub._util.errors.UserError, match=re.escape(fragment)):
        mpisub.open_run(str(tmp_path / "run"))
