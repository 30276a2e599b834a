"""Example 3, the authors' Fig. 2c with their settings: the loss level over the width m = 250 ...
1500, Bernoulli masks, p = 10, tau = 3, n = 100, keep 0.8 at their lr 0.16 and keep 0.5 at 0.1,
each run stopped by their width script's rule (6 rounds in all whose 11-point running mean of the
loss is not a new best: train.plateau_window = 11, train.plateau_patience = 6) and measured by
the best running mean, two seeds, on a proxy of their data (examples/proxy.py). The claim it
tests: over-parameterization shrinks the neighbourhood. Their lr is fixed in their network's
units, which is an lr growing with m in the NTK form (lr m / c), and the flips column says whether
the runs stayed in the lazy regime the NTK analysis covers: read the level against both.

    python examples/width.py                  # about a minute on 2 cores; writes examples/out/width.png
"""
import os

import numpy as np
import proxy
from common import example_args

from mpisub.analysis.plot import pyplot
from mpisub.study.sweep_point import launch

args = example_args(__doc__.split("\n")[0], semantics="official")
ways = ("official", "analysis") if args.semantics == "both" else (args.semantics,)
n, WIDTHS, seeds, most = 100, (250, 500, 1000, 1500), 2, 300   # theirs: 250 ... 1500 in steps of 250, 10 seeds
SETTINGS = ((0.8, 0.16), (0.5, 0.1))
if args.quick:
    WIDTHS, seeds, most = (64, 128), 2, 15
base = {"data.source": proxy.write(args.out, n), "masks.kind": "bernoulli", "masks.subnets": 10,
        "train.local_steps": 3, "train.rounds": most, "train.plateau_window": 11, "train.plateau_patience": 6,
        "theory.max_n": 0}
jobs = [(way, keep, lr, m, seed) for way in ways for keep, lr in SETTINGS for m in WIDTHS for seed in range(seeds)]
runs = {}
for i, (way, keep, lr, m, seed) in enumerate(jobs):
    runs[way, keep, m, seed] = launch(
        os.path.join(args.out, "width", f"{way}-keep{keep}-m{m}-seed{seed}"),
        {**base, **proxy.semantics(way, m, lr), "model.width": m, "masks.keep": keep, "train.seed": seed},
        args.ranks, tag=f"[{i + 1}/{len(jobs)}] ")

plt = pyplot()
fig, ax = plt.subplots(figsize=(6.5, 4.2))
print(f"\nthe plateau (best 11-point running mean) over the width, mean +- std over {seeds} seeds, and the "
      f"activation patterns flipped since W_init when the rule stopped the run:")
for i, (way, (keep, lr)) in enumerate((w, s) for w in ways for s in SETTINGS):
    level = np.array([[runs[way, keep, m, s].plateau()["plateau"] for s in range(seeds)] for m in WIDTHS])
    ax.errorbar(WIDTHS, level.mean(axis=1), yerr=level.std(axis=1, ddof=1), marker="o", capsize=3, color=f"C{i}",
                label=f"{way}: keep {keep}, lr {lr}" + (f" ({lr / proxy.CLASSES:g} m in NTK units)"
                                                        if way == "official" else ""))
    for m, row in zip(WIDTHS, level):
        flips = np.mean([runs[way, keep, m, s].eval["flips"][-1] for s in range(seeds)])
        print(f"  {way:8s} keep {keep} m {m:5d}: {row.mean():.4e} +- {row.std(ddof=1):.1e}; "
              f"{100 * flips:.1f}% of patterns flipped")
ax.set_xlabel("width m (hidden neurons)")
ax.set_ylabel("loss plateau (best 11-point running mean)")
ax.set_yscale("log")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
ax.set_title(f"Fig. 2c: Bernoulli p = 10, tau = 3, n = {n} (proxy features), {seeds} seeds (bars: their spread)",
             fontsize=9)
fig.tight_layout()
out = os.path.join(args.out, "width.png")
fig.savefig(out, dpi=100)
print(f"wrote {out}")
