"""mpisub-train as a user runs it: the default job, the run file, errors, rank 0 alone printing."""
import json
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
from helpers.jobs import MPIRUN, ONE_THREAD, mpirun, sets
from helpers.reference import rows_sent_by_rank0

import mpisub
from mpisub.io import integrity, readback, store
from mpisub.nn import masks
from mpisub.parallel.threads import THREAD_VARS


@pytest.fixture(scope="module")
def default_job(tmp_path_factory):
    """`mpirun -n 4 mpisub-train` with no arguments, in a fresh folder."""
    folder = tmp_path_factory.mktemp("default")
    r = mpirun(4, cwd=folder)
    return folder, r


def test_default_job_trains_and_says_where_the_run_is(default_job):
    folder, r = default_job
    assert r.returncode == 0, r.stderr
    path = re.search(r"^run file: (\S+)$", r.stdout, re.M).group(1)
    assert re.fullmatch(r"runs/\d{8}-\d{6}(-\d+)?/run\.h5", path)
    assert "mpisub-inspect" in r.stdout
    with h5py.File(folder / path) as f:
        assert f.attrs["status"] == "completed"
        loss = f["eval/loss"][()]
        assert f["metrics"].attrs["loss_init"] / loss[-1] >= 10  # the loss fell at least 10x
        cfg = json.loads(f.attrs["config"])
        assert cfg["masks"]["kind"] == "partition" and cfg["masks"]["subnets"] == 4
        assert cfg["output"]["dir"] == os.path.dirname(path)
        assert f["metrics/sub_loss"].shape == (cfg["train"]["rounds"],)
        assert f["eval/round"][0] == 0 and f["eval/round"][-1] == cfg["train"]["rounds"]
        assert f.attrs["ranks"] == 4 and "MPICH" in f.attrs["mpi_library"]
        assert f.attrs["mpisub_version"] and f.attrs["created"]


def test_run_file_layout(default_job):
    folder, r = default_job
    path = re.search(r"^run file: (\S+)$", r.stdout, re.M).group(1)
    with h5py.File(folder / path) as f:
        cfg = json.loads(f.attrs["config"])
        n, d, m = cfg["data"]["n"], cfg["data"]["d"], cfg["model"]["width"]
        rounds = cfg["train"]["rounds"]
        assert f["data/X"].shape == (n, d) and f["data/Y"].shape == (n, 1)
        np.testing.assert_allclose(np.linalg.norm(f["data/X"][()], axis=1), 1.0)  # unit sphere
        assert f["model/a"].shape == (m, 1) and set(np.unique(f["model/a"][()])) == {-1.0, 1.0}
        assert f["model/W_init"].shape == f["model/W"].shape == (m, d)
        assert f["model/W"].attrs["round"] == rounds
        names = {"round", "sub_loss", "seconds_compute", "seconds_comm", "seconds_wall", "bytes_comm"}
        assert names <= set(f["metrics"]) and "loss" not in f["metrics"]
        assert f["eval/round"][0] == 0 and f["eval/round"][-1] == rounds and f["eval/loss"].maxshape == (None,)
        for name in names:
            assert f["metrics"][name].shape == (rounds,) and f["metrics"][name].maxshape == (None,)
        np.testing.assert_array_equal(f["metrics/round"][()], np.arange(1, rounds + 1))
        # the rows rank 0 sends in round 1 (masks rebuilt from the seed), + loss buffer, sub-loss sum,
        # stop and write flags
        M = masks.sample("partition", 4, 0.25, m, cfg["train"]["seed"], 0)
        evaluated = 1 in f["eval/round"][()]
        np.testing.assert_array_equal(f["metrics/bytes_comm"][()][0],
                                      rows_sent_by_rank0(M, 4) * d * 8 + (8 * (n + 8) + 8 if evaluated else 8 * 5))
        assert np.all(f["metrics/seconds_wall"][()] >= f["metrics/seconds_compute"][()])
        assert "masks" not in f


def test_only_rank_0_prints(default_job):
    _, r = default_job
    rounds = len(re.findall(r"^round +\d+/\d+ ", r.stdout, re.M))
    assert rounds == len(set(re.findall(r"^round +\d+/\d+ ", r.stdout, re.M))) > 2
    assert r.stdout.count("run file:") == 1 and r.stdout.count("[train]") == 1


def test_p_not_a_multiple_of_ranks(tmp_path):
    r = mpirun(4, *sets(masks__subnets=6, train__plan="rows"), cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    assert "masks.subnets = 6 is not a multiple of the 4 MPI ranks" in r.stderr
    assert r.stderr.count("error") == 1 and "Traceback" not in r.stderr
    r = mpirun(2, "--preset", "gd", *sets(train__rounds=3, output__dir="gd"), cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr                                 # plan auto: outputs
    assert "# plan outputs: auto: 1 subnetwork(s) over 2 ranks need plan outputs" in r.stdout


def test_existing_run_is_not_overwritten(tmp_path):
    args = sets(output__dir="out", train__rounds=2, model__width=64, data__n=32)
    assert mpirun(2, *args, cwd=tmp_path).returncode == 0
    before = (tmp_path / "out" / "run.h5").read_bytes()
    r = mpirun(2, *args, cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and "already holds a run" in r.stderr and "output.overwrite = true" in r.stderr
    assert (tmp_path / "out" / "run.h5").read_bytes() == before
    r = mpirun(2, *args, *sets(output__overwrite=True, train__rounds=3), cwd=tmp_path)
    assert r.returncode == 0
    with h5py.File(tmp_path / "out" / "run.h5") as f:
        assert f["metrics/round"].shape == (3,)


def test_print_config_shows_the_resolved_values(tmp_path):
    r = mpirun(2, "--preset", "multisample", "--print-config", cwd=tmp_path, timeout=60)
    assert r.returncode == 0
    assert 'kind = "bernoulli"' in r.stdout and "subnets = 4" in r.stdout and "keep = 0.5" in r.stdout
    assert not (tmp_path / "runs").exists()


def test_subnetwork_workers_give_the_bits_of_one_rank_per_subnetwork(tmp_path, monkeypatch):
    """K = 1 with the machine's cores split into subnetwork threads (when it has 2 or more) trains
    the same weights, bit for bit, as K = 4 ranks of one thread each."""
    job = sets(masks__subnets=4, model__width=512, data__n=128, train__rounds=10, train__plan="rows")
    for var in THREAD_VARS:
        monkeypatch.delenv(var, raising=False)   # mpisub chooses the threads
    r1 = mpirun(1, *job, "--set", 'output.dir="k1"', cwd=tmp_path)
    assert r1.returncode == 0, r1.stderr
    r4 = mpirun(4, *job, "--set", 'output.dir="k4"', cwd=tmp_path, env=ONE_THREAD)
    assert r4.returncode == 0, r4.stderr
    if len(os.sched_getaffinity(0)) >= 2:
        assert "BLAS threads per rank: 1 x 2 subnetwork workers" in r1.stdout
    with h5py.File(tmp_path / "k1" / "run.h5") as f, h5py.File(tmp_path / "k4" / "run.h5") as g:
        np.testing.assert_array_equal(f["model/W"][()], g["model/W"][()])


def test_inspect_reports_the_run(default_job):
    import subprocess
    import sys
    folder, r = default_job
    path = re.search(r"^run file: (\S+)$", r.stdout, re.M).group(1)
    run_dir = str(folder / os.path.dirname(path))
    inspect = os.path.join(os.path.dirname(sys.executable), "mpisub-inspect")
    text = subprocess.run([inspect, run_dir], capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and "completed" in text.stdout and "partition" in text.stdout
    js = json.loads(subprocess.run([inspect, run_dir, "--json"], capture_output=True, text=True, timeout=60).stdout)
    with h5py.File(folder / path) as f:
        assert js["loss_final"] == f["eval/loss"][-1]
        assert js["loss_init"] == f["metrics"].attrs["loss_init"] == f["eval/loss"][0]
        assert js["rounds_done"] == len(f["metrics/round"])
        assert js["bytes_comm"] == f["metrics/bytes_comm"][()].sum()
    missing = subprocess.run([inspect, str(folder / "nope")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


@pytest.mark.parametrize("preset,ranks", [("gd", 1), ("dropout", 1), ("multisample", 2), ("ist", 2)])
def test_every_preset_trains(tmp_path, preset, ranks):
    r = mpirun(ranks, "--preset", preset, *sets(output__dir="out", model__width=512, data__n=128,
                                                 train__rounds=15), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with h5py.File(tmp_path / "out" / "run.h5") as f:
        cfg = json.loads(f.attrs["config"])
        assert cfg["masks"]["kind"] == {"gd": "full", "dropout": "bernoulli", "multisample": "bernoulli",
                                        "ist": "partition"}[preset]
        loss = f["eval/loss"][()]
        assert loss[0] == f["metrics"].attrs["loss_init"] and loss[-1] < loss[0] / 3


def test_divergence_stops_with_a_hint_and_status_failed(tmp_path):
    r = mpirun(2, *sets(output__dir="out", train__lr=1e6, model__width=256, data__n=64), cwd=tmp_path)
    assert r.returncode == 2
    assert re.fullmatch(r"mpisub-train: error: the (subnetworks' )?loss became \S+ in round \d+ \(initial loss \S+; "
                        r"bound 1000x the initial loss( / keep)?\): "
                        r"training diverged; lower train.lr \(now 1e\+06\): .*\n", r.stderr)
    with h5py.File(tmp_path / "out" / "run.h5") as f:
        assert f.attrs["status"] == "failed"


def test_python_dash_m_mpisub_trains_also_under_mpi4py_run(tmp_path):
    """`python -m mpisub` is mpisub-train, and so is `python -m mpi4py -m mpisub` under mpirun."""
    job = sets(train__rounds=2, model__width=64, data__n=32)
    r = subprocess.run([sys.executable, "-m", "mpisub", *job, "--set", 'output.dir="one"'], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([MPIRUN, "-n", "2", sys.executable, "-m", "mpi4py", "-m", "mpisub", *job,
                        "--set", 'output.dir="two"'], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for folder, ranks in (("one", 1), ("two", 2)):
        with h5py.File(tmp_path / folder / "run.h5") as f:
            assert f.attrs["status"] == "completed" and f.attrs["ranks"] == ranks
            np.testing.assert_array_equal(f["metrics/round"][()], [1, 2])


def test_inspect_into_a_closed_pipe_ends_quietly(tmp_path):
    r = mpirun(1, *sets(train__rounds=2, model__width=64, data__n=32, output__dir="run"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    inspect = os.path.join(os.path.dirname(sys.executable), "mpisub-inspect")
    p = subprocess.run(f"{inspect} run run run run run run | head -1", shell=True, cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.stdout.count("\n") == 1 and "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr


def test_resume_with_other_code_needs_allow_version_change(tmp_path):
    """A checkpoint records the version and a hash of the code that computes results; other code
    may not continue bit for bit, so --resume refuses it unless asked (CHANGELOG.md, design doc)."""
    job = sets(output__dir="out", train__rounds=4, model__width=64, data__n=32, output__checkpoint_every=2)
    assert mpirun(2, *job, cwd=tmp_path).returncode == 0
    with h5py.File(tmp_path / "out" / "checkpoint.h5", "r+") as f:
        assert f.attrs["code_hash"] == store.code_hash()
        f.attrs["code_hash"] = "0123456789abcdef"        # as if written by other code
        f.attrs["checksum"] = integrity.content_digest(f)
    integrity.seal(str(tmp_path / "out" / "checkpoint.h5"))
    args = ["--resume", "out", "--set", "train.rounds=6"]
    r = mpirun(2, *args, cwd=tmp_path)
    assert r.returncode == 2 and "(code 0123456789abcdef)" in r.stderr and "--allow-version-change" in r.stderr
    r = mpirun(2, *args, "--allow-version-change", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"the checkpoint was written by mpisub {mpisub.__version__} (code 0123456789abcdef), continued by" \
        in r.stdout
    run = readback.read_run(str(tmp_path / "out"), arrays=False)
    np.testing.assert_array_equal(run["metrics"]["round"], np.arange(1, 7))
    assert run["attrs"]["code_hash"] == store.code_hash()


def test_a_printed_config_reproduces_the_run_at_another_k(tmp_path):
    """--print-config at one rank keeps the auto values auto (subnets = 0, plan = "auto"), with what
    they resolved to as comments; trained at two ranks it resolves them there."""
    job = sets(train__rounds=3, model__width=64, data__n=32)
    r = mpirun(1, *job, "--print-config", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "subnets = 0   # at 1 rank(s): 1" in r.stdout and 'plan = "auto"   # at 1 rank(s): "rows"' in r.stdout
    (tmp_path / "saved.toml").write_text(r.stdout)
    r = mpirun(2, "--config", "saved.toml", *sets(output__dir="two"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = readback.read_run(str(tmp_path / "two"), arrays=False)
    assert json.loads(run["attrs"]["config"])["masks"]["subnets"] == 2
    given = json.loads(run["attrs"]["config_given"])
    assert given["masks"]["subnets"] == 0 and given["train"]["plan"] == "auto" and given["train"]["rounds"] == 3
    r = mpirun(1, "--resume", "two", "--set", "train.rounds=5", cwd=tmp_path)    # kept on resume
    assert r.returncode == 0, r.stderr
    run = readback.read_run(str(tmp_path / "two"), arrays=False)
    assert json.loads(run["attrs"]["config_given"]) == given
    # every launch is a row of the segments table, and inspect shows them
    segments = json.loads(run["attrs"]["segments"])
    assert [(s["ranks"], s["first_round"], s["last_round"], s["ended"]) for s in segments] == \
        [(2, 0, 3, "completed"), (1, 3, 5, "completed")]
    assert all(s["mpisub_version"] == mpisub.__version__ and s["code_hash"] == store.code_hash() for s in segments)
    shown = subprocess.run([os.path.join(os.path.dirname(sys.executable), "mpisub-inspect"), "two"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60).stdout
    assert "2 launch(es):" in shown and "rounds 3-5: 1 rank(s)" in shown, shown
