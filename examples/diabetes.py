"""Example 5: real data. scikit-learn's bundled diabetes set (442 patients, 10 features, disease
progression after a year; no download), written to a CSV and trained through `data.source` like
any user file, with every sample scaled to unit norm (as the theory assumes) and a standardised target;
IST against full gradient descent.

    pip install scikit-learn                  # or: pip install -e '.[examples]'
    python examples/diabetes.py               # about a minute on 2 cores; writes examples/out/diabetes.png
"""
import os

import numpy as np
from common import example_args, sklearn_data

from mpisub.analysis.plot import plot_runs
from mpisub.study.sweep_point import launch

args = example_args(__doc__.split("\n")[0])
d = sklearn_data("diabetes")
os.makedirs(args.out, exist_ok=True)
csv = os.path.join(args.out, "diabetes.csv")
y = (d.target - d.target.mean()) / d.target.std()   # the target in units of its spread
np.savetxt(csv, np.column_stack([d.data, y]), delimiter=",", header=",".join(d.feature_names + ["progression"]),
           comments="", fmt="%.17g")
base = {"data.source": csv, "data.target": "progression", "data.normalize": "unit", "model.width": 4096,
        "train.rounds": 150}
if args.quick:
    base.update({"model.width": 256, "train.rounds": 5})
jobs = [("gd", "full gradient descent, lr=2", {"masks.kind": "full", "masks.subnets": 1, "train.local_steps": 5,
                                             "train.lr": 2.0}, 1),
        ("ist", "IST, partition p=4, tau=5, lr=2", {"masks.kind": "partition", "masks.subnets": 4,
                                                   "train.local_steps": 5, "train.lr": 2.0}, args.ranks)]
runs = [launch(os.path.join(args.out, "diabetes", name), {**base, **settings}, ranks, tag=f"[{i + 1}/{len(jobs)}] ")
        for i, (name, _, settings, ranks) in enumerate(jobs)]
for run in runs:  # the fraction of the target's variance still unexplained: loss = MSE / 2
    print(f"{run.folder}: training R^2 = {1 - 2 * run.eval['loss'][-1]:.3f}")
out = plot_runs(runs, os.path.join(args.out, "diabetes.png"), labels=[j[1] for j in jobs],
                title="scikit-learn diabetes (n=442, d=10), unit-norm samples")
print(f"wrote {out}")
