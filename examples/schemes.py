"""Example 4: dropout vs multi-sample dropout vs IST vs full gradient descent on the same data and
the same budget: 200 local gradient steps in all (200 / tau rounds; tau = 1 except IST's 5),
plotted against wall-clock seconds.

    python examples/schemes.py               # about a minute on 2 cores; writes examples/out/schemes.png
"""
import os

from common import example_args

from mpisub.analysis.plot import plot_runs
from mpisub.study.sweep_point import launch

args = example_args(__doc__.split("\n")[0])
base = {"data.n": 256, "data.d": 16, "model.width": 4096}
steps = 200
if args.quick:
    base.update({"data.n": 64, "model.width": 256})
    steps = 10
jobs = [
    ("gd", "full gradient descent",
     {"masks.kind": "full", "masks.subnets": 1, "train.local_steps": 1, "train.lr": 4.0}, 1),
    ("dropout", "dropout (bernoulli keep 0.5, p=1)",
     {"masks.kind": "bernoulli", "masks.subnets": 1, "masks.keep": 0.5, "train.local_steps": 1, "train.lr": 2.0}, 1),
    ("multisample", "multi-sample dropout (keep 0.5, p=4)",
     {"masks.kind": "bernoulli", "masks.subnets": 4, "masks.keep": 0.5, "train.local_steps": 1, "train.lr": 2.0},
     args.ranks),
    ("ist", "IST (partition, p=4, tau=5)",
     {"masks.kind": "partition", "masks.subnets": 4, "train.local_steps": 5, "train.lr": 4.0}, args.ranks),
]
runs = []
for i, (name, _, settings, ranks) in enumerate(jobs):
    rounds = steps // settings["train.local_steps"]
    runs.append(launch(os.path.join(args.out, "schemes", name), {**base, **settings, "train.rounds": rounds}, ranks,
                       tag=f"[{i + 1}/{len(jobs)}] "))
out = plot_runs(runs, os.path.join(args.out, "schemes.png"), x="seconds", labels=[j[1] for j in jobs],
                title=f"{steps} local steps per subnetwork in total (n={base['data.n']}, m={base['model.width']})")
print(f"wrote {out}")
