"""Every example runs as one command (in its --quick size here), writes its runs and its PNG, and
trains what it says it trains."""
import os
import subprocess
import sys

import matplotlib.image
import pytest
from helpers import ROOT

import mpisub

EXAMPLES = {  # script: (runs it writes, a check of their configs)
    "fig2a_keep": (8, lambda runs: sorted({r.config["masks"]["keep"] for r in runs}) == [0.3, 0.5]
                   and all(r.config["masks"]["subnets"] == 10 and r.config["train"]["local_steps"] == 10 for r in runs)
                   and all(r.config["model"]["parametrization"] == "standard"
                           and r.config["masks"]["uncovered"] == "zero"
                           and r.config["train"]["lr"] == pytest.approx(0.2 * r.config["masks"]["keep"])
                           for r in runs if "official" in r.folder)
                   and all(r.config["model"]["parametrization"] == "ntk" and r.config["masks"]["uncovered"] == "keep"
                           and r.config["train"]["lr"] == pytest.approx(0.2 * r.config["masks"]["keep"] * 64 / 10)
                           for r in runs if "analysis" in r.folder)),
    "heatmap_p_keep": (6, lambda runs: {(r.config["masks"]["subnets"], r.config["masks"]["keep"]) for r in runs}
                       == {(1, 0.5), (1, 1.0), (2, 0.5)}
                       and all(r.config["train"]["plateau_window"] == 11 for r in runs)),
    "width": (8, lambda runs: sorted({r.config["model"]["width"] for r in runs}) == [64, 128]
              and all(r.config["train"]["plateau_patience"] == 6 and r.config["masks"]["uncovered"] == "zero"
                      for r in runs)),
    "schemes": (4, lambda runs: sorted(r.config["masks"]["kind"] for r in runs)
                == ["bernoulli", "bernoulli", "full", "partition"]),
    "diabetes": (2, lambda runs: all(r.config["data"]["n"] == 442 and r.config["data"]["d"] == 10 for r in runs)),
    "digits": (4, lambda runs: {(r.config["masks"]["keep"], r.config["train"]["seed"]) for r in runs}
               == {(0.25, 0), (0.25, 1), (0.75, 0), (0.75, 1)}
               and all(r.config["data"]["outputs"] == 10 and r.config["data"]["n"] == 1348
                       and 0 < r.eval["test_acc"][-1] <= 1 for r in runs)),
    "study": (8, lambda runs: sorted({r.config["masks"]["kind"] for r in runs}) == ["bernoulli", "full", "partition"]
              # matched compute: train.budget = 4, each scheme's rounds the fewest that reach it
              and all(4 <= r.metrics["compute"][-1] < 4 + r.metrics["compute"][0] for r in runs)
              and all(0 < r.eval["test_acc"][-1] <= 1 for r in runs)),
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_example(name, tmp_path):
    script = os.path.join(ROOT, "examples", f"{name}.py")
    r = subprocess.run([sys.executable, script, "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    count, check = EXAMPLES[name]
    assert len([line for line in r.stdout.splitlines() if line.startswith("[")]) == count  # one line per run
    runs = mpisub.open_runs(str(tmp_path / name / "*"))
    assert len(runs) == count and all(run.status == "completed" for run in runs)
    assert check(runs)
    image = matplotlib.image.imread(str(tmp_path / f"{name}.png"))
    assert image.shape[0] > 200 and image[..., :3].std() > 0.05   # a picture, not a blank
    if name != "width":   # all examples train through sweep.launch: one of them shows its reuse here
        return
    # a second time, every run is reused, not trained again (test_sweep.py tests the reuse itself)
    again = subprocess.run([sys.executable, os.path.join(ROOT, "examples", f"{name}.py"), "--quick", "--out",
                            str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count(": reused (") == count, again.stdout
