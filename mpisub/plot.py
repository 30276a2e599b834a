"""`mpisub-plot`: loss curves of runs on a log scale, labelled by the config keys in which they
differ. matplotlib is an extra: pip install 'mpisub[plot]'."""
import os

import numpy as np

from . import theory
from .analysis import Run, differing_keys, flat_config, open_all, seed_groups
from .errors import Parser, UserError, command
from .losses import LOSSES


def pyplot():
    """matplotlib.pyplot drawing to files (no display needed on a cluster); a UserError says how to
    install it when it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install 'mpisub[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _curve(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """(rounds, loss) of a run's evaluations, round 0 included (older runs kept it as an attribute)."""
    at, loss = run.eval["round"], run.eval["loss"]
    if not len(at) or at[0] != 0:
        at, loss = np.concatenate([[0], at]), np.concatenate([[run.loss_init], loss])
    return at.astype(np.int64), loss


def label(run: Run, keys: list[str]) -> str:
    flat = flat_config(run)
    return ", ".join(f"{k.split('.', 1)[1]}={flat.get(k)}" for k in keys) or os.path.basename(run.folder)


def plot_runs(runs: list[Run], out: str, x: str = "rounds", reference: bool = False, title: str = "",
              labels: list[str] | None = None) -> str:
    """Full-network loss (solid) and mean subnetwork loss (dashed) of each run against rounds or
    seconds; with `reference`, the NTK gradient-descent rate from lambda_0 (dotted)."""
    plt = pyplot()
    keys = differing_keys(runs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = seed_groups(runs)
    for i, group in enumerate(groups):
        run = group[0]
        m = run.metrics
        color = f"C{i % 10}"
        xs = m["round"] if x == "rounds" else np.cumsum(m["seconds_wall"])
        at, loss = _curve(run)
        x_eval = np.concatenate([[0], xs])[at]   # the x of round k is the x of its row (round 0: 0)
        name = labels[i] if labels else label(run, [k for k in keys if k != "train.seed"])
        if len(group) == 1:
            ax.plot(x_eval, loss, "-", color=color, label=name)
            ax.plot(xs, m["sub_loss"], "--", color=color, alpha=0.6, linewidth=1)
        else:  # seeds: the geometric mean as the curve, the min-max band around it
            curves = [_curve(r) for r in group]
            common = np.array(sorted(set.intersection(*(set(a.tolist()) for a, _ in curves))), dtype=np.int64)
            stack = np.array([[c[1][np.searchsorted(c[0], k)] for k in common] for c in curves])
            x_common = np.concatenate([[0], xs])[common]
            ax.plot(x_common, np.exp(np.log(stack).mean(axis=0)), "-", color=color,
                    label=f"{name} ({len(group)} seeds: geometric mean, band min-max)")
            ax.fill_between(x_common, stack.min(axis=0), stack.max(axis=0), color=color, alpha=0.25, linewidth=0)
            ax.plot(xs, np.exp(np.mean([np.log(r.metrics["sub_loss"][: len(xs)]) for r in group], axis=0)), "--",
                    color=color, alpha=0.6, linewidth=1)
        if reference and run.lambda0 is not None:
            tr = run.config["train"]
            steps = tr["local_steps"]
            ref = theory.gd_reference(run.loss_init, tr["lr"], run.lambda0, run.config["data"]["n"], steps,
                                      m["round"])
            ax.plot(xs, ref, ":", color=color, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("round" if x == "rounds" else "seconds (wall, rank 0)")
    losses = {run.config["train"].get("loss", "squared") for run in runs}   # runs before mpisub 0.2: squared
    ax.set_ylabel(f"loss  {LOSSES[losses.pop()].formula}" if len(losses) == 1 else "loss (each run's train.loss)")
    style = "solid: full network; dashed: mean subnetwork loss" + (
        "; dotted: full GD's NTK rate from lambda_0 (a reference, not a bound for masked training)"
        if reference else "")
    ax.set_title((title + "\n" if title else "") + style, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def output_path(path: str) -> str:
    """The image file -o names: with no extension, a PNG (the name says so); an extension
    matplotlib cannot write is a UserError naming the ones it can."""
    base, ext = os.path.splitext(path)
    if not ext:
        return path + ".png"
    plt = pyplot()
    fig = plt.figure()
    known = sorted(fig.canvas.get_supported_filetypes())
    plt.close(fig)
    if ext[1:].lower() not in known:
        raise UserError(f"-o {path!r}: matplotlib writes no {ext} files; give one of "
                        f"{', '.join('.' + k for k in known)}")
    return path


@command("mpisub-plot")
def plot_main(argv=None) -> None:
    p = Parser(prog="mpisub-plot", description="Plot the loss curves of mpisub runs (log scale).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders or run.h5 files")
    p.add_argument("-o", "--output", default="loss.png", help="image file to write (default: loss.png)")
    p.add_argument("--x", choices=("rounds", "seconds"), default="rounds", help="x axis")
    p.add_argument("--theory", action="store_true",
                   help="add the NTK gradient-descent rate (1 - lr lambda_0 / n)^(2 tau k) from each run's lambda_0")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    out = output_path(args.output)
    folder = os.path.dirname(os.path.abspath(out))
    runs = open_all(args.runs)
    if not os.path.isdir(folder):
        raise UserError(f"-o {args.output!r}: folder {folder!r} does not exist")
    plot_runs(runs, out, x=args.x, reference=args.theory, title=args.title)
    print(f"wrote {out} ({len(runs)} run(s))")
