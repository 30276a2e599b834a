"""Example 2: the loss level a run settles at (mean over its last 50 rounds) over a grid of
p (subnetworks) x keep (Bernoulli), tau = 5, lr = 4 keep: the neighbourhood shrinks as p grows
(averaging more subnetworks lowers the variance of the combined step) and as keep grows.

    python examples/heatmap_p_keep.py        # a few minutes on 2 cores; writes examples/out/heatmap_p_keep.png
"""
import os

import numpy as np

from mpisub.plot import pyplot
from mpisub.sweep import example_args, launch

args = example_args(__doc__.split("\n")[0])
P, KEEP = (1, 2, 4, 8), (0.2, 0.4, 0.6, 0.8, 1.0)
base = {"data.n": 100, "data.d": 10, "model.width": 1000, "train.local_steps": 5, "train.rounds": 150,
        "masks.kind": "bernoulli"}
if args.quick:
    P, KEEP = (1, 2), (0.5, 1.0)
    base.update({"model.width": 100, "train.rounds": 5})
final = np.empty((len(P), len(KEEP)))
for i, p in enumerate(P):
    for j, keep in enumerate(KEEP):
        k = i * len(KEEP) + j + 1
        run = launch(os.path.join(args.out, "heatmap_p_keep", f"p{p}-keep{keep}"),
                     {**base, "masks.subnets": p, "masks.keep": keep, "train.lr": 4 * keep},
                     ranks=1 if p == 1 else min(args.ranks, p), tag=f"[{k}/{final.size}] ")
        last = run.eval["round"] > run.eval["round"][-1] - 50   # the evaluations of the last 50 rounds
        final[i, j] = run.eval["loss"][last].mean()

plt = pyplot()
fig, ax = plt.subplots(figsize=(6, 4))
im = ax.imshow(np.log10(final), cmap="viridis", origin="lower", aspect="auto")
ax.set_xticks(range(len(KEEP)), [f"{k:g}" for k in KEEP])
ax.set_yticks(range(len(P)), [str(p) for p in P])
ax.set_xlabel("keep (Bernoulli)")
ax.set_ylabel("p (subnetworks)")
for i in range(len(P)):
    for j in range(len(KEEP)):
        ax.text(j, i, f"{final[i, j]:.1e}", ha="center", va="center", color="w", fontsize=7)
fig.colorbar(im, label="log10 loss (mean of the last 50 rounds)")
ax.set_title(f"loss level after {base['train.rounds']} rounds, tau=5, lr = 4 keep", fontsize=9)
fig.tight_layout()
out = os.path.join(args.out, "heatmap_p_keep.png")
fig.savefig(out, dpi=110)
print(f"wrote {out}")
