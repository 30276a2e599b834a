"""Example 1, the paper's Fig. 2a in spirit: Bernoulli masks with p = 10 subnetworks and tau = 10
local steps, for keep in {0.3, 0.5, 0.8} with lr proportional to keep (lr = 8 keep in mpisub's
loss scaling), and full gradient descent (keep 1, lr 8): masked training converges linearly to
a neighbourhood whose size grows as keep shrinks; gradient descent goes on converging.

    python examples/fig2a_keep.py            # about a minute on 2 cores; writes examples/out/fig2a_keep.png
"""
import os

from mpisub.plot import plot_runs
from mpisub.sweep import example_args, launch

args = example_args(__doc__.split("\n")[0])
base = {"data.n": 200, "data.d": 20, "model.width": 2000, "train.local_steps": 10, "train.rounds": 100}
if args.quick:
    base.update({"data.n": 40, "model.width": 200, "train.rounds": 10})
jobs = [(f"keep{keep}", {"masks.kind": "bernoulli", "masks.subnets": 10, "masks.keep": keep, "train.lr": 8 * keep},
         args.ranks) for keep in (0.3, 0.5, 0.8)]
jobs.append(("gd", {"masks.kind": "full", "masks.subnets": 1, "train.lr": 8.0}, 1))
runs = [launch(os.path.join(args.out, "fig2a_keep", name), {**base, **settings}, ranks, tag=f"[{i + 1}/{len(jobs)}] ")
        for i, (name, settings, ranks) in enumerate(jobs)]
labels = [f"bernoulli p=10, keep={k}, lr={8 * k:g}" for k in (0.3, 0.5, 0.8)] + ["full gradient descent, lr=8"]
out = plot_runs(runs, os.path.join(args.out, "fig2a_keep.png"), labels=labels,
                title=f"Bernoulli masks, p=10, tau=10 (n={base['data.n']}, m={base['model.width']})")
print(f"wrote {out}")
