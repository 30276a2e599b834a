"""Handing a trained network on: its outputs on new inputs (mpisub-predict) and the network as
plain arrays or a PyTorch state_dict (mpisub-export). Both read the run file (analysis.Run) and
treat inputs as the run treated its training set (the normalization the run file stores). No MPI,
no numba: they run wherever h5py is installed (torch only for a .pt export)."""
from __future__ import annotations

import os
import sys

import numpy as np

from mpisub._util.errors import Parser, UserError, cause, command
from mpisub.analysis.runs import Run, open_all
from mpisub.config import from_dict
from mpisub.io.data import read_inputs
from mpisub.nn import model

TORCH_SUFFIXES = (".pt", ".pth")


def _trained(path: str) -> Run:
    """The run at `path`, with a note on stderr when its weights are not those of a completed run."""
    run = open_all([path])[0]
    done, rounds = len(run.metrics["round"]), run.config["train"]["rounds"]
    if run.status != "completed":
        print(f"note: {path} is {run.status} after {done} of {rounds} rounds; its latest weights are used",
              file=sys.stderr)
    return run


def _save(path: str, write) -> None:
    """write(tmp) then rename onto path: a failed write leaves what was at path as it was."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {path!r} ({cause(e)}); choose a writable path with free space") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _savez(path: str, named: dict) -> None:
    with open(path, "wb") as f:   # a file object: np.savez would add .npz to the temporary name
        np.savez(f, **named)


def arrays(run: Run) -> dict:
    """The trained network as plain arrays: f(x) = scale * a^T relu(W x') with x' the input after
    `normalize` (standardize: (x - mean) / std; unit: x / ||x||)."""
    inputs = run.inputs
    d = run.config["data"]["d"]
    W, a = run.W, run.a
    return {"W": W, "a": a, "scale": np.float64(model.scale(from_dict(run.config))),
            "normalize": np.str_(inputs.normalize),
            "mean": np.zeros(d) if inputs.mean is None else inputs.mean,
            "std": np.ones(d) if inputs.std is None else inputs.std,
            "task": np.str_(run.config["data"]["task"])}


def torch_checkpoint(run: Run) -> dict:
    """{"state_dict": ..., "normalize", "mean", "std"}: the state_dict loads into
    torch.nn.Sequential(Linear(d, m, bias=False), ReLU(), Linear(m, c, bias=False)), the output
    scale folded into the second layer."""
    try:
        import torch  # lazy: optional (pip install torch)
    except ImportError:
        raise UserError("a .pt export needs PyTorch: pip install torch (or export to .npz)") from None
    net = arrays(run)
    second = (net["a"].astype(np.float64) * net["scale"]).T.astype(net["W"].dtype)
    return {"state_dict": {"0.weight": torch.from_numpy(np.ascontiguousarray(net["W"])),
                           "2.weight": torch.from_numpy(np.ascontiguousarray(second))},
            "normalize": str(net["normalize"]), "task": str(net["task"]),
            **{k: torch.from_numpy(net[k].astype(net["W"].dtype)) for k in ("mean", "std")}}


@command("mpisub-export")
def export_main(argv: list[str] | None = None) -> None:
    p = Parser(prog="mpisub-export", description=(
        "Write a run's trained network: .npz (W, a, scale, normalize, mean, std, task) or, with PyTorch "
        "installed, .pt (a state_dict for Sequential(Linear(d, m, bias=False), ReLU(), Linear(m, c, bias=False)) "
        "and the input normalization)."))
    p.add_argument("run", metavar="RUN", help="a run folder or its run.h5")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="model.npz, or model.pt for PyTorch")
    args = p.parse_args(argv)
    run = _trained(args.run)
    if args.output.lower().endswith(TORCH_SUFFIXES):
        import torch  # lazy: optional (pip install torch)
        state = torch_checkpoint(run)
        _save(args.output, lambda tmp: torch.save(state, tmp))
    elif args.output.lower().endswith(".npz"):
        net = arrays(run)
        _save(args.output, lambda tmp: _savez(tmp, net))
    else:
        raise UserError(f"-o {args.output!r}: give a .npz file, or .pt/.pth for PyTorch")
    m, d = run.W.shape
    print(f"mpisub-export: the network of {args.run} (m = {m}, d = {d}, c = {run.a.shape[1]}, inputs "
          f"{run.inputs.normalize}) -> {args.output}")


@command("mpisub-predict")
def predict_main(argv: list[str] | None = None) -> None:
    p = Parser(prog="mpisub-predict", description=(
        "The outputs of a run's trained network on new inputs, normalized as its training set was. "
        "Writes OUT.npz with 'outputs' (n x c) and, for classification, 'labels' (the argmax)."))
    p.add_argument("run", metavar="RUN", help="a run folder or its run.h5")
    p.add_argument("inputs", metavar="INPUTS", help="a .npz or .h5 file with the array data.x_name of the run, "
                   "or a .csv with the run's input columns (its target columns may be there too)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.npz")
    args = p.parse_args(argv)
    if not args.output.lower().endswith(".npz"):
        raise UserError(f"-o {args.output!r}: give a .npz file")
    run = _trained(args.run)
    c = run.config["data"]
    X = read_inputs(args.inputs, c["x_name"], c["target"], c["d"])
    out = {"outputs": run.predict(X)}
    if c["task"] == "classification":
        out["labels"] = np.argmax(out["outputs"], axis=1)
    _save(args.output, lambda tmp: _savez(tmp, out))
    print(f"mpisub-predict: {len(X)} samples -> {args.output} ({', '.join(out)})")
