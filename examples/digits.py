"""Example 6: classification on real data, as in the paper's experiments. scikit-learn's digits
(1797 8x8 images, 10 classes; no download) with every image scaled to unit norm, one-hot targets
and the paper's squared error, a quarter held out. A keep sweep with Bernoulli masks (p = 4,
tau = 5) at the paper's step size lr = c keep (train.lr_scaling = "keep"), three seeds each: the
loss curves with their seed bands, the held-out accuracy, and the lazy-regime diagnostic (the
fraction of activation patterns that flipped since initialisation) side by side.

    pip install scikit-learn                  # or: pip install -e '.[examples]'
    python examples/digits.py                 # about 2 minutes on 2 cores; writes examples/out/digits.png
"""
import os

import numpy as np
from common import example_args, sklearn_data

from mpisub.analysis.plot import pyplot
from mpisub.analysis.runs import seed_groups
from mpisub.study.sweep_point import launch

args = example_args(__doc__.split("\n")[0])
digits = sklearn_data("digits")
os.makedirs(args.out, exist_ok=True)
path = os.path.join(args.out, "digits.npz")
np.savez(path, X=digits.data, Y=digits.target[:, None].astype(float))   # labels 0-9: one-hot in mpisub
base = {"data.source": path, "data.task": "classification", "data.normalize": "unit", "data.holdout": 0.25,
        "model.width": 2048, "masks.kind": "bernoulli", "masks.subnets": 4, "train.local_steps": 5,
        "train.lr": 8.0, "train.lr_scaling": "keep", "train.rounds": 60, "output.eval_every": 2}
keeps, seeds = (0.25, 0.5, 0.75), 3
if args.quick:
    base.update({"model.width": 128, "train.rounds": 4})
    keeps, seeds = (0.25, 0.75), 2
jobs = [(keep, seed) for keep in keeps for seed in range(seeds)]
runs = [launch(os.path.join(args.out, "digits", f"keep{keep}-seed{seed}"),
               {**base, "masks.keep": keep, "train.seed": seed}, args.ranks, tag=f"[{i + 1}/{len(jobs)}] ")
        for i, (keep, seed) in enumerate(jobs)]

plt = pyplot()
fig, axes = plt.subplots(1, 3, figsize=(13, 4))
for i, group in enumerate(seed_groups(runs)):
    keep, color = group[0].config["masks"]["keep"], f"C{i}"
    rounds = group[0].eval["round"]
    for ax, name, log in ((axes[0], "loss", True), (axes[1], "test_acc", False), (axes[2], "flips", False)):
        values = np.array([r.eval[name] for r in group])
        middle = np.exp(np.log(values).mean(axis=0)) if log else values.mean(axis=0)
        ax.plot(rounds, middle, color=color, label=f"keep {keep}, lr {8 * keep:g}")
        ax.fill_between(rounds, values.min(axis=0), values.max(axis=0), color=color, alpha=0.25, linewidth=0)
    accuracy = np.array([r.eval["test_acc"][-1] for r in group])
    print(f"keep {keep}: held-out accuracy {accuracy.mean():.3f} +- {accuracy.std(ddof=1):.3f} over {len(group)} "
          f"seeds; {100 * np.mean([r.eval['flips'][-1] for r in group]):.1f}% of activation patterns flipped")
axes[0].set_yscale("log")
for ax, title in zip(axes, ("training loss ||f - y||^2 / 2n", "held-out accuracy",
                            "activation patterns flipped since W_init")):
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("round")
    ax.grid(True, alpha=0.3)
axes[0].legend(fontsize=8)
fig.suptitle(f"digits (n = {runs[0].config['data']['n']} + {len(digits.data) - runs[0].config['data']['n']} "
             f"held out), bernoulli p = 4, tau = 5, m = {base['model.width']}: mean of {seeds} seeds, band min-max",
             fontsize=10)
fig.tight_layout()
out = os.path.join(args.out, "digits.png")
fig.savefig(out, dpi=100)
print(f"wrote {out}")
