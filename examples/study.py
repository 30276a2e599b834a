"""Example 7: a study from question to table. Which scheme reaches the best held-out accuracy on
scikit-learn's breast_cancer data (569 samples, 30 features, 2 classes; no download) for the same
compute? Gradient descent, dropout, multi-sample dropout and IST (the presets, at the default lr) at a matched budget
of full-gradient equivalents (train.budget: each scheme gets the rounds that cost the same), three
seeds each, a quarter of the data held out. It is one sweep file (written to <out>/study.toml, so
it runs the same with mpisub-sweep, and on Slurm as `mpisub-sweep study.toml --slurm` prints):
the held-out accuracy table over seeds, and the accuracy and loss against compute with seed bands.

    pip install scikit-learn                  # or: pip install -e '.[examples]'
    python examples/study.py                  # about a minute on 2 cores; writes examples/out/study.png
"""
import os

import numpy as np
from common import example_args, sklearn_data

from mpisub.analysis.plot import plot_runs
from mpisub.analysis.report import spread_table
from mpisub.analysis.runs import seed_groups
from mpisub.study import slurm
from mpisub.study.sweep import read_sweep, run_sweep

SCHEMES = ("gd", "dropout", "multisample", "ist")

args = example_args(__doc__.split("\n")[0])
data = sklearn_data("breast_cancer")
folder = os.path.abspath(os.path.join(args.out, "study"))
os.makedirs(folder, exist_ok=True)
# the features' scales differ by 10^4: columns standardized here, rows to unit norm by mpisub (data.normalize)
X = (data.data - data.data.mean(axis=0)) / data.data.std(axis=0)
np.savez(os.path.join(folder, "breast_cancer.npz"), X=X, Y=data.target[:, None].astype(float))
budget, seeds, width = (4, 2, 128) if args.quick else (100, 3, 1024)
cases = "".join(f'[[case]]\nname = "{scheme}"\npreset = "{scheme}"\n' for scheme in SCHEMES)
sweep_file = os.path.join(folder, "study.toml")
with open(sweep_file, "w") as f:
    f.write(f'''# {__doc__.splitlines()[0]}
out = "{folder}"
ranks = {args.ranks}
seeds = {seeds}
minutes = 1
[set]
"data.source" = "breast_cancer.npz"
"data.task" = "classification"
"data.normalize" = "unit"
"data.holdout" = 0.25
"model.width" = {width}
"train.budget" = {budget}
{cases}''')
os.chdir(folder)     # the data file's path in the sweep file is relative to where the sweep runs
sweep = read_sweep(sweep_file)
runs = run_sweep(sweep)

print("\nheld-out accuracy and losses after the same compute, mean +- std (min-max) over the seeds:")
print(spread_table(runs))
for group in seed_groups(runs):
    acc = np.array([r.eval["test_acc"][-1] for r in group])
    cfg = group[0].config
    print(f"{os.path.basename(group[0].folder).rsplit('-seed', 1)[0]:12s} {cfg['train']['rounds']:4d} rounds of "
          f"{cfg['masks']['subnets']} x {cfg['masks']['kind']} keep {cfg['masks']['keep']:g} tau "
          f"{cfg['train']['local_steps']}: held-out accuracy {acc.mean():.3f} +- {acc.std(ddof=1):.3f}")
names = [os.path.basename(g[0].folder).rsplit("-seed", 1)[0] for g in seed_groups(runs)]
title = f"breast_cancer, {budget} full gradients each, m = {width}, {seeds} seeds (band: min-max)"
out = plot_runs(runs, os.path.join(args.out, "study.png"), x="compute", metric="test_acc", title=title, labels=names)
plot_runs(runs, os.path.join(args.out, "study-loss.png"), x="compute", title=title, labels=names)
print(f"wrote {out} and study-loss.png beside it")
print("the same study on Slurm (run from anywhere; add --account/--partition as your site needs):\n  "
      + slurm.sbatch_command(sweep_file, sweep.out, sweep.points, sweep.task_minutes))
