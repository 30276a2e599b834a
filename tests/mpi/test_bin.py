"""bin/'s launchers do what the installed console scripts do: the same --help, the same run."""
import os
import subprocess
import sys

import h5py
from helpers import ROOT, console_scripts
from helpers.jobs import BIN, ONE_THREAD, mpirun, sets


def test_each_launcher_prints_the_same_help_as_its_console_script(tmp_path):
    for name in console_scripts():
        installed = subprocess.run([os.path.join(BIN, name), "--help"], capture_output=True, text=True, cwd=tmp_path)
        launcher = subprocess.run([sys.executable, os.path.join(ROOT, "bin", name), "--help"], capture_output=True,
                                  text=True, cwd=tmp_path)
        assert installed.returncode == launcher.returncode == 0, launcher.stderr
        assert launcher.stdout == installed.stdout and "usage:" in launcher.stdout, name


def test_bin_mpisub_train_trains_the_same_run_as_the_console_script(tmp_path):
    job = sets(train__rounds=4, model__width=128, data__n=64)
    for folder, program in (("installed", (os.path.join(BIN, "mpisub-train"),)),
                            ("checkout", (sys.executable, os.path.join(ROOT, "bin", "mpisub-train")))):
        r = mpirun(2, *job, *sets(output__dir=folder), cwd=tmp_path, env=ONE_THREAD, program=program)
        assert r.returncode == 0, r.stdout + r.stderr
    with h5py.File(tmp_path / "installed" / "run.h5") as a, h5py.File(tmp_path / "checkout" / "run.h5") as b:
        assert a["model/W"][()].tobytes() == b["model/W"][()].tobytes()
        assert list(a["metrics/loss" if "metrics/loss" in a else "metrics/sub_loss"]) == \
            list(b["metrics/loss" if "metrics/loss" in b else "metrics/sub_loss"])
