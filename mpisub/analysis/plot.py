"""`mpisub-plot`: loss curves (or any column of the run file's tables) of runs against rounds,
seconds or compute, labelled by the config keys the user set apart. matplotlib is an extra: pip
install 'mpisub[plot]'."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from mpisub import config
from mpisub._util.errors import Parser, UserError, command
from mpisub.analysis.runs import Run, flat_config, label_keys, open_all, seed_groups
from mpisub.config import from_dict
from mpisub.io import schema
from mpisub.nn import theory
from mpisub.nn.losses import LOSSES

if TYPE_CHECKING:  # types only: never imported at run time
    from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot drawing to files (no display needed on a cluster); a UserError says how to
    install it when it is missing."""
    try:
        import matplotlib  # lazy: optional (mpisub[plot])
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install 'mpisub[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: optional (mpisub[plot])
    return plt


XS = {"rounds": "round", "seconds": "seconds (wall, rank 0)", "compute": "compute (full-gradient equivalents)"}


def _x(run: Run, x: str) -> np.ndarray:
    """The x of each metrics row (rounds done, wall seconds so far, or compute so far), with 0 for
    round 0 in front."""
    m = run.metrics
    xs = {"rounds": m["round"], "seconds": np.cumsum(m["seconds_wall"]), "compute": m["compute"]}[x]
    return np.concatenate([[0], xs])


def _curve(run: Run, metric: str, x: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, value) of a column of either table at the rounds it has (an eval column: round 0
    included; older runs kept the initial loss as an attribute). NaN rows are left out."""
    if metric in run.eval:
        at, values = run.eval["round"], np.asarray(run.eval[metric], dtype=np.float64)
        if metric == "loss" and (not len(at) or at[0] != 0):
            at, values = np.concatenate([[0], at]), np.concatenate([[run.loss_init], values])
    else:
        at, values = run.metrics["round"], np.asarray(run.metrics[metric], dtype=np.float64)
    at = np.asarray(at, dtype=np.int64)
    keep = np.isfinite(values) & (at < len(_x(run, x)))
    return _x(run, x)[at[keep]], values[keep]


def columns(runs: list[Run]) -> list[str]:
    """The columns any of the runs has, in both tables."""
    return sorted({name for run in runs for name in (*run.metrics, *run.eval)} - {"round"})


def label(run: Run, keys: list[str]) -> str:
    flat = flat_config(run)
    return ", ".join(f"{k.split('.', 1)[1]}={flat.get(k)}" for k in keys) or os.path.basename(run.folder)


def _band(ax, group: list[Run], metric: str, x: str, color: str, name: str, log: bool) -> None:
    """Seeds: the (geometric, on a log scale) mean as the curve, the min-max band around it, at
    the x every seed has."""
    curves = [_curve(r, metric, x) for r in group]
    common = sorted(set.intersection(*(set(np.round(c[0], 12).tolist()) for c in curves)))
    stack = np.array([[c[1][np.searchsorted(np.round(c[0], 12), k)] for k in common] for c in curves])
    mean = np.exp(np.log(stack).mean(axis=0)) if log else stack.mean(axis=0)
    ax.plot(common, mean, "-", color=color,
            label=f"{name} ({len(group)} seeds: {'geometric ' if log else ''}mean, band min-max)")
    ax.fill_between(common, stack.min(axis=0), stack.max(axis=0), color=color, alpha=0.25, linewidth=0)


def plot_runs(runs: list[Run], out: str, x: str = "rounds", reference: bool = False, title: str = "",
              labels: list[str] | None = None, metric: str = "loss") -> str:
    """A column of either table (default: the full network's loss, solid, with the mean
    subnetwork loss dashed) of each run against rounds, seconds or compute, runs that differ only
    in train.seed as one curve with a band; with `reference`, the NTK gradient-descent rate from
    lambda_0 (dotted). Losses on a log scale."""
    plt = pyplot()
    have = columns(runs)
    if metric not in have:
        raise UserError(f"--metric {metric!r}: the runs have no such column; they have {', '.join(have)}")
    log = schema.SCORES.get(metric) == "min" or metric == "loss"
    keys = label_keys(runs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, group in enumerate(seed_groups(runs)):
        run, color = group[0], f"C{i % 10}"
        name = labels[i] if labels else label(run, keys)
        if len(group) == 1:
            ax.plot(*_curve(run, metric, x), "-", color=color, label=name)
        else:
            _band(ax, group, metric, x, color, name, log)
        if metric == "loss":
            xs = _curve(group[0], "sub_loss", x)[0]
            subs = [_curve(r, "sub_loss", x)[1][:len(xs)] for r in group]
            ax.plot(xs, np.exp(np.mean(np.log(subs), axis=0)), "--", color=color, alpha=0.6, linewidth=1)
        if reference and run.lambda0 is not None and metric == "loss":
            tr = run.config["train"]
            ref = theory.gd_reference(run.loss_init, config.ntk_lr(from_dict(run.config)),  # type: ignore[arg-type]
                                      run.lambda0,
                                      run.config["data"]["n"],
                                      tr["local_steps"], run.metrics["round"])
            ax.plot(_x(run, x)[1:], ref, ":", color=color, linewidth=1)
    _axes(ax, runs, metric, x, log, reference, title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _axes(ax, runs: list[Run], metric: str, x: str, log: bool, reference: bool, title: str) -> None:
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(XS[x])
    losses = {run.config["train"].get("loss", "squared") for run in runs}   # runs before mpisub 0.2: squared
    formula = f"  {LOSSES[losses.pop()].formula}" if len(losses) == 1 else " (each run's train.loss)"
    ax.set_ylabel(f"loss{formula}" if metric == "loss" else metric)
    style = "solid: full network; dashed: mean subnetwork loss" if metric == "loss" else SCHEMA_MEANING.get(metric, "")
    if reference and metric == "loss":
        style += "; dotted: slowest mode of linearised full GD, from lambda_0 (a reference, not a bound)"
    ax.set_title((title + "\n" if title else "") + style, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


SCHEMA_MEANING = {c.name: c.meaning.split(" (")[0] for c in schema.COLUMNS}


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
def plot_main(argv: list[str] | None = None) -> None:
    p = Parser(prog="mpisub-plot", description="Plot the loss curves (or any column, --metric) of mpisub runs; "
                                               "runs that differ only in train.seed become one curve with a band.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders or run.h5 files")
    p.add_argument("-o", "--output", default="loss.png", help="image file to write (default: loss.png)")
    p.add_argument("--x", choices=tuple(XS), default="rounds",
                   help="x axis: rounds, wall seconds, or compute in full-gradient equivalents (default rounds)")
    p.add_argument("--metric", default="loss", help="the column to plot: loss (default, with the subnetworks' "
                   "loss dashed), test_loss, train_acc, test_acc, sub_loss, or any column of /eval or /metrics")
    p.add_argument("--theory", action="store_true",
                   help="add L_0 (1 - lr lambda_0 / n)^(2 tau k), the slowest mode of linearised full gradient "
                        "descent from each run's lambda_0 (a reference, not a guarantee or a bound)")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    out = output_path(args.output)
    folder = os.path.dirname(os.path.abspath(out))
    runs = open_all(args.runs)
    if not os.path.isdir(folder):
        raise UserError(f"-o {args.output!r}: folder {folder!r} does not exist")
    plot_runs(runs, out, x=args.x, reference=args.theory, title=args.title, metric=args.metric)
    print(f"wrote {out} ({len(runs)} run(s))")
