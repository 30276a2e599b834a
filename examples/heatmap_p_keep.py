"""Example 2, the authors' Fig. 2b with their settings: the loss level a run settles at over a grid
of p (subnetworks) x keep (Bernoulli masks), m = 500, n = 1000, tau = 5, their lr = 0.1, each run
stopped by their rule (the first round whose 11-point running mean of the loss does not improve,
or once it is below 5e-4: train.plateau_window, train.plateau_floor) and measured by that best
running mean; keep 1 is one subnetwork (plain gradient descent), as in their script. On a proxy
of their data (examples/proxy.py). The claim it tests: the neighbourhood shrinks as p and keep
grow. Run both ways (--semantics), it shows what the authors' zeroing of uncovered neurons does to
the low-p, low-keep cells: most of their neurons are dead when the rule stops them, so those cells
measure a dying network, not a neighbourhood.

    python examples/heatmap_p_keep.py         # about 2 minutes on 2 cores; writes examples/out/heatmap_p_keep.png
"""
import os

import numpy as np
import proxy
from common import example_args

from mpisub.analysis.plot import pyplot
from mpisub.study.sweep_point import launch

args = example_args(__doc__.split("\n")[0], semantics="both")
ways = ("official", "analysis") if args.semantics == "both" else (args.semantics,)
n, m, P, KEEP, most = 1000, 500, (1, 3, 10), (0.1, 0.3, 0.6, 1.0), 100
if args.quick:
    n, m, P, KEEP, most = 100, 64, (1, 2), (0.5, 1.0), 6
base = {"data.source": proxy.write(args.out, n), "model.width": m, "masks.kind": "bernoulli", "train.local_steps": 5,
        "train.rounds": most, "train.plateau_window": 11, "train.plateau_floor": 5e-4, "theory.max_n": 0}
cells = [(way, p, keep) for way in ways for p in P for keep in KEEP if keep < 1 or p == P[0]]
level, dead, stopped = {}, {}, {}
for i, (way, p, keep) in enumerate(cells):
    run = launch(os.path.join(args.out, "heatmap_p_keep", f"{way}-p{p}-keep{keep}"),
                 {**base, **proxy.semantics(way, m, 0.1), "masks.subnets": 1 if keep == 1 else p, "masks.keep": keep},
                 ranks=1 if keep == 1 or p == 1 else min(args.ranks, p), tag=f"[{i + 1}/{len(cells)}] ")
    plateau = run.plateau()
    level[way, p, keep], stopped[way, p, keep] = plateau["plateau"], plateau["stopped_at"]
    dead[way, p, keep] = float(np.mean(~run.W.any(axis=1)))

plt = pyplot()
fig, axes = plt.subplots(1, len(ways), figsize=(6 * len(ways), 4), squeeze=False)
print("\nthe plateau (best 11-point running mean), % of neurons dead at the stop, and the round it stopped:")
for ax, way in zip(axes[0], ways):
    grid = np.array([[level[way, P[0] if keep == 1 else p, keep] for keep in KEEP] for p in P])
    ax.imshow(np.log10(grid), cmap="viridis", origin="lower", aspect="auto",   # one colour scale for both
              vmin=np.log10(min(level.values())), vmax=np.log10(max(level.values())))
    for i, p in enumerate(P):
        for j, keep in enumerate(KEEP):
            key = (way, P[0] if keep == 1 else p, keep)
            ax.text(j, i, f"{level[key]:.1e}\n{100 * dead[key]:.0f}% dead", ha="center", va="center",
                    color="w", fontsize=7)
            when = f"stopped at round {stopped[key]}" if stopped[key] else f"still improving after {most} rounds"
            print(f"  {way:8s} p {p:2d} keep {keep}: {level[key]:.3e}, {100 * dead[key]:4.1f}% dead, {when}")
    ax.set_xticks(range(len(KEEP)), [f"{k:g}" for k in KEEP])
    ax.set_yticks(range(len(P)), [str(p) for p in P])
    ax.set_xlabel("keep (Bernoulli; 1 = gradient descent)")
    ax.set_ylabel("p (subnetworks)")
    ax.set_title({"official": "the authors' code (uncovered neurons zeroed)",
                  "analysis": "the paper's analysis (uncovered neurons kept)"}[way], fontsize=9)
fig.suptitle(f"Fig. 2b: loss plateau (log10 colour), tau = 5, m = {m}, n = {n} (proxy features)", fontsize=10)
fig.tight_layout()
out = os.path.join(args.out, "heatmap_p_keep.png")
fig.savefig(out, dpi=100)
print(f"wrote {out}")
