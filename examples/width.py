"""Example 3: over-parameterization helps. IST (partition masks, p = 4, tau = 5) on the same data
for widths m from 64 to 8192: the final loss falls as the network widens, as the NTK analysis says.

    python examples/width.py                  # a minute or two on 2 cores; writes examples/out/width.png
"""
import os

from mpisub.plot import pyplot
from mpisub.sweep import example_args, launch

args = example_args(__doc__.split("\n")[0])
WIDTHS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
base = {"data.n": 256, "data.d": 16, "masks.kind": "partition", "masks.subnets": 4, "train.local_steps": 5,
        "train.rounds": 80, "train.lr": 4.0}
if args.quick:
    WIDTHS, base["train.rounds"], base["data.n"] = (64, 256), 5, 64
runs = [launch(os.path.join(args.out, "width", f"m{m}"), {**base, "model.width": m}, args.ranks,
               tag=f"[{i + 1}/{len(WIDTHS)}] ") for i, m in enumerate(WIDTHS)]

plt = pyplot()
fig, ax = plt.subplots(figsize=(6, 4))
ax.loglog(WIDTHS, [r.eval["loss"][-1] for r in runs], "o-", label=f"after {base['train.rounds']} rounds")
ax.loglog(WIDTHS, [r.loss_init for r in runs], "s--", color="gray", label="at initialisation")
ax.set_xlabel("width m (hidden neurons)")
ax.set_ylabel("loss")
ax.set_xscale("log", base=2)
ax.grid(True, which="both", alpha=0.3)
ax.legend()
ax.set_title("IST, partition masks, p=4, tau=5, lr=4", fontsize=9)
fig.tight_layout()
out = os.path.join(args.out, "width.png")
fig.savefig(out, dpi=110)
print(f"wrote {out}")
