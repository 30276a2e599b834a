"""mpisub-sweep: a grid times seeds from SWEEP.toml, reused when run again, an interrupted run
resumed; a cluster sweep's tasks and stop signals; seeds as one curve with a band (pixels) and as spreads in inspect."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
from helpers.jobs import job_log, rank_pids, rows_on_disk, start_job, wait_for_rows, wait_job

import mpisub
from mpisub.study import sweep
from mpisub.study.launch import set_args

BIN = os.path.dirname(sys.executable)
SWEEP = """out = "grid"
ranks = 2
seeds = 2
[set]
"model.width" = 128
"data.n" = 64
"masks.kind" = "bernoulli"
"masks.subnets" = 2
"train.rounds" = {rounds}
"train.lr" = 2.0
"train.lr_scaling" = "keep"
[grid]
"masks.keep" = [0.25, 0.75]
"""


def _sweep(folder, *args):
    return subprocess.run([os.path.join(BIN, "mpisub-sweep"), "sweep.toml", *args], cwd=folder, capture_output=True,
                          text=True, timeout=300)


def test_sweep_trains_every_point_reuses_and_resumes(tmp_path):
    (tmp_path / "sweep.toml").write_text(SWEEP.format(rounds=400))
    todo = [(p.folder, p.settings) for p in sweep.read_sweep(str(tmp_path / "sweep.toml")).points]
    assert [os.path.basename(f) for f, _ in todo] == ["keep=0.25-seed0", "keep=0.25-seed1", "keep=0.75-seed0",
                                                      "keep=0.75-seed1"]
    # the first point, started as the sweep would start it and stopped by a signal: interrupted
    folder, settings = todo[0]
    proc = start_job(2, tmp_path, *set_args({**settings, "output.dir": folder, "output.checkpoint_every": 5}))
    wait_for_rows(proc, tmp_path / folder / "run.h5", 20)
    for pid in rank_pids(folder):
        os.kill(pid, signal.SIGUSR1)
    assert wait_job(proc, 120) == 3, job_log(proc)
    r = _sweep(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("[")]
    assert [line.split("] ")[0] for line in lines][:1] == ["[1/4"] and len(lines) == 4
    assert ": resumed in " in lines[0] and " from round " in lines[0], r.stdout
    assert all(": trained in " in line for line in lines[1:]), r.stdout
    assert "s left]" in lines[2]                                       # an ETA once a run has been timed
    for folder, settings in todo:
        with h5py.File(tmp_path / folder / "run.h5") as f:
            cfg = json.loads(f.attrs["config"])
            assert f.attrs["status"] == "completed" and f["metrics/round"].shape == (400,)
            assert (cfg["masks"]["keep"], cfg["train"]["seed"]) == (settings["masks.keep"], settings["train.seed"])
    again = _sweep(tmp_path)
    assert again.returncode == 0 and again.stdout.count(": reused (") == 4, again.stdout


def test_slurm_command_packs_points_into_tasks_and_a_task_runs_its_own(tmp_path):
    """--slurm: every path absolute, --ntasks the most ranks a point uses (a case's 3), the tasks
    packed by minutes (4 points of 1 minute and a case's 2 of 3 minutes, task_minutes 2: 2 + 2 + 1
    + 1 tasks); --task 1/4 trains the second task's points only."""
    (tmp_path / "sweep.toml").write_text(SWEEP.format(rounds=5).replace("seeds = 2\n", "seeds = 2\nminutes = 1\n"
                                                                          "task_minutes = 2\n")
                                         + '[[case]]\nname = "a"\n[[case]]\nname = "b"\nranks = 3\nminutes = 3\n'
                                         + '"masks.subnets" = 3\n')
    r = _sweep(tmp_path, "--slurm")
    assert r.returncode == 0, r.stderr
    args = shlex.split(r.stdout)
    options = dict(a[2:].split("=", 1) for a in args if a.startswith("--"))
    assert args[0] == "sbatch" and options["array"] == "0-5" and options["ntasks"] == "3"
    assert options["time"] == str(3 + 2) and options["chdir"] == str(tmp_path)     # the longest task, + 2 min
    assert options["output"] == str(tmp_path / "grid" / "slurm-%A_%a.out")
    assert options["export"] == f"ALL,VENV={sys.prefix}"
    assert args[-3].endswith("jobs/slurm-sweep.sbatch") and os.path.isfile(args[-3])
    assert args[-2:] == [str(tmp_path / "sweep.toml"), "6"] and int(options["mem-per-cpu"].rstrip("M")) >= 256
    r = _sweep(tmp_path, "--task", "1/6")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(os.listdir(tmp_path / "grid")) == ["a-keep=0.75-seed0", "a-keep=0.75-seed1"]
    assert _sweep(tmp_path, "--task", "1/5").returncode == 2


def test_a_stop_signal_to_the_sweep_checkpoints_the_running_point_and_the_rerun_resumes_it(tmp_path):
    """USR1 or TERM to mpisub-sweep (Slurm's warning, passed on by the array script) reaches the
    running point as USR1: it checkpoints, the sweep exits 3 without starting the next point, and
    the sweep run again resumes the point."""
    (tmp_path / "sweep.toml").write_text(SWEEP.format(rounds=3000).replace("seeds = 2", "seeds = 1"))
    proc = subprocess.Popen([os.path.join(BIN, "mpisub-sweep"), "sweep.toml"], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    first = tmp_path / "grid" / "keep=0.25-seed0" / "run.h5"
    deadline = time.monotonic() + 120
    while rows_on_disk(first) < 20:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, out
    assert "stopped by a signal; the sweep continues it when run again" in out, out
    assert not (tmp_path / "grid" / "keep=0.75-seed0").exists()
    with h5py.File(first) as f:
        assert f.attrs["status"] == "interrupted"
    r = _sweep(tmp_path)
    assert r.returncode == 0 and ": resumed in " in r.stdout.splitlines()[0], r.stdout + r.stderr
    with h5py.File(first) as f:
        assert f.attrs["status"] == "completed" and f["metrics/round"].shape == (3000,)


def test_bad_sweep_file_is_one_line(tmp_path):
    (tmp_path / "sweep.toml").write_text('[grid]\n"masks.kepp" = [0.5]\n')
    r = _sweep(tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == ("mpisub-sweep: error: sweep file 'sweep.toml', point "
                                                      "kepp=0.5-seed0: unknown config key 'masks.kepp'; "
                                                      "did you mean 'masks.keep'?")
    (tmp_path / "sweep.toml").write_text('[grid]\npreset = ["gd", "sgd"]\n')
    r = _sweep(tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == ("mpisub-sweep: error: sweep file 'sweep.toml', point "
                                                      "preset=sgd-seed0: unknown preset 'sgd'; choose one of "
                                                      "ist, gd, dropout, multisample")


def test_seeds_become_one_band_and_a_spread(tmp_path):
    (tmp_path / "sweep.toml").write_text(SWEEP.format(rounds=20))
    assert _sweep(tmp_path).returncode == 0
    runs = [mpisub.open_run(str(p)) for p in sorted((tmp_path / "grid").iterdir()) if p.is_dir()]
    shown = subprocess.run([os.path.join(BIN, "mpisub-inspect"), *[r.folder for r in runs]], capture_output=True,
                           text=True, timeout=60).stdout
    for keep in (0.25, 0.75):
        finals = np.array([r.eval["loss"][-1] for r in runs if r.config["masks"]["keep"] == keep])
        assert f"masks.keep={keep}: 2 seeds; final loss {finals.mean():.4g} +- {finals.std(ddof=1):.2g}" in shown
    # the band: pixels of C0 at alpha 0.25 over white, with the seeds and without (one seed per point)
    from matplotlib.image import imread

    from mpisub.analysis.plot import plot_runs
    band = imread(plot_runs(runs, str(tmp_path / "band.png")))[..., :3]
    single = imread(plot_runs(runs[::2], str(tmp_path / "single.png")))[..., :3]
    tint = 0.25 * np.array([0.122, 0.467, 0.706]) + 0.75                # C0, as fill_between draws it

    def count(img):
        return int(np.sum(np.all(np.abs(img - tint) < 0.03, axis=-1)))
    assert count(band) > 1000 and count(band) > 5 * count(single), (count(band), count(single))  # edges tint too


def test_the_sweep_files_entries_are_checked_and_train_seed_in_the_grid_is_honoured(tmp_path):
    for text, fragment in (('out = 3\n', "out = 3 must be a folder name"),
                           ('ranks = "two"\n', "ranks = 'two' must be a whole number of at least 1"),
                           ('config = 5\n', "config = 5 must be a config file's path"),
                           ('set = 1\n', "set = 1 must be a table of config keys and values"),
                           ('seeds = 2\n[grid]\n"train.seed" = [3, 4]\n', "seeds = 2 and train.seed in [set], "
                                                                        "[grid] or a [[case]] both give the seeds")):
        (tmp_path / "sweep.toml").write_text(text)
        r = _sweep(tmp_path)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and fragment in r.stderr, r.stderr
    (tmp_path / "sweep.toml").write_text('[grid]\n"train.seed" = [3, 4]\n"masks.keep" = [0.5]\n')
    todo = sweep.read_sweep(str(tmp_path / "sweep.toml")).points
    assert [(os.path.basename(p.folder), p.settings["train.seed"]) for p in todo] == [("seed=3-keep=0.5", 3),
                                                                                      ("seed=4-keep=0.5", 4)]


def test_ctrl_c_in_a_sweep_is_one_line_and_leaves_no_job_behind(tmp_path):
    (tmp_path / "sweep.toml").write_text(SWEEP.format(rounds=100000).replace('"train.lr" = 2.0', '"train.lr" = 0.1'))
    proc = subprocess.Popen([os.path.join(BIN, "mpisub-sweep"), "sweep.toml"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_rows(proc, tmp_path / "grid" / "keep=0.25-seed0" / "run.h5", 3)
    proc.send_signal(signal.SIGINT)                     # to the sweep alone, as a scheduler or a kill would
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip().splitlines() == ["mpisub-sweep: interrupted"], err
    assert not rank_pids("keep=0.25-seed0")


STUDY = """out = "study"
ranks = 2
config = "base.toml"
[set]
"model.width" = 64
"data.n" = 32
"train.rounds" = 6
[[case]]
name = "ist"
preset = "ist"
[[case]]
name = "dropout"
"masks.kind" = "bernoulli"
"masks.subnets" = 2
"""


def _lines(r) -> list[str]:
    assert r.returncode == 0, r.stdout + r.stderr
    return [line for line in r.stdout.splitlines() if line.startswith("[")]


def test_a_changed_base_file_trains_the_points_again_and_auto_values_are_reused(tmp_path):
    """The sweep's identity of a point is its resolved config (base file included), the data and
    the code: after the base file's lr changes, no point is reported as reused, each is trained
    again with the new lr, the old runs are kept in .stale/; then everything is reused, the
    points with auto values (ist: masks.subnets and keep; dropout: keep) too."""
    (tmp_path / "sweep.toml").write_text(STUDY)
    (tmp_path / "base.toml").write_text("[train]\nlr = 1.0\n")
    first = _lines(_sweep(tmp_path))
    assert [line.split(": ")[1].split(" ")[0] for line in first] == ["trained", "trained"], first
    (tmp_path / "base.toml").write_text("[train]\nlr = 4.0\n")
    second = _lines(_sweep(tmp_path))
    assert not any("reused" in line for line in second), second
    for line, name in zip(second, ("ist-seed0", "dropout-seed0")):
        assert f"study/{name}: trained again in " in line and ", as the run there was not this point's " \
            "(train.lr 1.0 -> 4.0); the old run is in study/.stale/" + name in line, line
        assert mpisub.open_run(str(tmp_path / "study" / name)).config["train"]["lr"] == 4.0
    stale = sorted(p.name for p in (tmp_path / "study" / ".stale").iterdir())
    assert [s.rsplit("-", 2)[0] for s in stale] == ["dropout-seed0", "ist-seed0"]
    assert all(mpisub.open_run(str(tmp_path / "study" / ".stale" / s)).config["train"]["lr"] == 1.0 for s in stale)
    third = _lines(_sweep(tmp_path))
    assert all(": reused (6 rounds" in line for line in third), third
    # more rounds continue the finished runs; a changed data seed trains them again
    (tmp_path / "sweep.toml").write_text(STUDY.replace('"train.rounds" = 6', '"train.rounds" = 9'))
    fourth = _lines(_sweep(tmp_path))
    assert all(": resumed in " in line and "(9 rounds" in line and "from round 6" in line for line in fourth), fourth
    (tmp_path / "sweep.toml").write_text(STUDY.replace('"train.rounds" = 6', '"train.rounds" = 9\n"data.seed" = 1'))
    assert all("data.seed 0 -> 1" in line for line in _lines(_sweep(tmp_path)))


MATCHED = """out = "matched"
ranks = 2
[set]
"model.width" = 64
"data.n" = 32
"train.budget" = {budget}
[grid]
preset = ["gd", "dropout", "ist"]
"""


def test_presets_in_the_grid_train_at_matched_compute_and_a_larger_budget_continues_them(tmp_path):
    """train.budget (full gradients) sets each scheme's rounds: gd 1 a round, dropout keep 0.5, ist
    on 2 ranks p keep tau = 5; the run file's compute column counts them; a larger budget resumes
    every run to it instead of training again."""
    per_round = {"gd": 1.0, "dropout": 0.5, "ist": 5.0}
    for budget in (10, 20):
        (tmp_path / "sweep.toml").write_text(MATCHED.format(budget=budget))
        lines = _lines(_sweep(tmp_path))
        assert len(lines) == 3 and all((": trained in " if budget == 10 else ": resumed in ") in line
                                       for line in lines), lines
        for name, each in per_round.items():
            run = mpisub.open_run(str(tmp_path / "matched" / f"preset={name}-seed0"))
            rounds = -(-budget // each)
            assert run.config["train"]["rounds"] == rounds and len(run.metrics["round"]) == rounds
            np.testing.assert_allclose(run.metrics["compute"], each * np.arange(1, rounds + 1))
    assert all(": reused (" in line for line in _lines(_sweep(tmp_path)))
