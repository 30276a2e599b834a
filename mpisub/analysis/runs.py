"""Reading runs: the notebook API (`open_run`, `open_runs`, `Run`, `Runs`), which mpisub-inspect
(report.py), mpisub-plot and the sweeps build on. No MPI, no numba: runs can be analysed anywhere
h5py is installed.
"""
from __future__ import annotations

import glob as globbing
import json
import os
from typing import TYPE_CHECKING

import h5py
import numpy as np

from mpisub._util.errors import UserError
from mpisub.config import compute_per_round, flatten, from_dict
from mpisub.io import schema
from mpisub.io.data import Inputs
from mpisub.io.readback import read_run
from mpisub.io.run_folder import FILENAME
from mpisub.nn import model, theory

if TYPE_CHECKING:  # types only: never imported at run time
    from typing import Any


class Run:
    """One run file. Attributes, config and tables are read at once (they are small); the arrays
    (W, W_init, a, X, Y, H, masks) are read when first asked for.

    Args:
        path: a run folder or its run.h5.

    Raises:
        UserError: the file is damaged or not a run file (io.readback checks it as untrusted input).
    """

    def __init__(self, path: str):
        if os.path.isdir(path):
            path = os.path.join(path, FILENAME)
        self.path = path
        self.folder = os.path.dirname(path)
        run = read_run(path, arrays=False)
        self.attrs, self.metrics, self.lambda0 = run["attrs"], run["metrics"], run.get("lambda0")
        self.lambda_max = run.get("lambda_max")   # of the data's NTK Gram matrix (mpisub 0.4 on)
        self.eval = run["eval"]   # the full network's evaluations: rows `round`, `loss`
        loss_init = self.metrics.pop("loss_init", None)   # an attribute of /metrics, not a row
        self.loss_init = None if loss_init is None else float(loss_init)
        self.config = json.loads(self.attrs["config"])
        self.status = self.attrs["status"]
        self.data_source = run["data"].get("source", "")     # "" for built-in data (then /data holds it)
        self.data_sha256 = run["data"].get("sha256", "")
        self._data = run["data"]
        self._fill_compute()

    def _fill_compute(self) -> None:
        """The compute column of a run from before it existed (or its rows from such a resume):
        rounds x config.compute_per_round, as the run file records it."""
        per_round = compute_per_round(from_dict(self.config))
        computed = self.metrics["round"] * per_round
        have = self.metrics.get("compute")
        self.metrics["compute"] = computed if have is None else np.where(np.isnan(have), computed, have)

    def _array(self, name):
        with h5py.File(self.path, "r") as f:
            return f[name][()] if name in f else None

    W = property(lambda self: self._array("model/W"), doc="latest aggregated weights (m x d)")
    W_init = property(lambda self: self._array("model/W_init"), doc="initial weights (m x d)")
    a = property(lambda self: self._array("model/a"), doc="output weights (m x c)")
    X = property(lambda self: self._array("data/X"), doc="built-in training inputs (None for a data file)")
    Y = property(lambda self: self._array("data/Y"), doc="built-in training targets (None for a data file)")
    H = property(lambda self: self._array("theory/H"), doc="the data's NTK Gram matrix (None unless stored)")
    masks = property(lambda self: None if (M := self._array("masks")) is None else M[:len(self.metrics["round"])],
                     doc="rounds x p x m, with output.record_masks")

    @property
    def inputs(self) -> Inputs:
        """How the run normalized its inputs, from the run file: new inputs go through it as the
        training set did.

        Returns:
            The data.Inputs of the run's data.normalize, with the training set's statistics.

        Raises:
            UserError: a 'standardize' run from before mpisub 0.4, which did not store them.
        """
        how = self._data.get("normalize", self.config["data"]["normalize"])
        if how == "standardize" and "mean" not in self._data:
            raise UserError(f"{self.path}: the run standardized its inputs but does not store the training set's "
                            f"means and stds (written before mpisub 0.4); train it again to predict with it")
        return Inputs(how, self._data.get("mean"), self._data.get("std"))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The trained network's outputs f(W, x) for raw inputs, normalized as the training set was.

        Args:
            X: n x d inputs (one sample: a vector of d).

        Returns:
            The n x c outputs in float64; for classification, the class is their argmax.

        Raises:
            UserError: X does not have the run's d inputs per sample.
        """
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        d = self.config["data"]["d"]
        if X.ndim != 2 or X.shape[1] != d:
            raise UserError(f"the inputs have shape {X.shape}; the run's network takes {d} inputs per sample")
        return model.forward(self.W, self.a, self.inputs(X), model.scale(from_dict(self.config)))

    @property
    def given(self) -> dict:
        """The config as given, auto values still auto (before mpisub 0.3: the resolved config).

        Returns:
            {"section.key": value}.
        """
        return flatten(json.loads(self.attrs.get("config_given") or self.attrs["config"]))

    def rows(self, table: str = "metrics") -> list[dict]:
        """One of the run's two tables as one dict per row.

        Args:
            table: "metrics" (one row per round) or "eval" (one per evaluation of the full network).

        Returns:
            The rows in order, each {column: value} (schema.COLUMNS).
        """
        columns = self.metrics if table == "metrics" else self.eval
        return [{name: values[i].item() for name, values in columns.items()} for i in range(len(columns["round"]))]

    def to_dataframe(self) -> Any:
        """The per-round metrics and the evaluations as one pandas DataFrame (pandas is optional:
        pip install pandas).

        Returns:
            A DataFrame indexed by round: an evaluated round's row has its eval columns (NaN in the
            others; round 0 has only them).
        """
        pd = _pandas()
        metrics = pd.DataFrame(self.metrics).set_index("round")
        evals = pd.DataFrame(self.eval).set_index("round")
        return metrics.join(evals, how="outer").rename_axis("round")

    def scores(self) -> dict:
        """Every score (schema.SCORES) the run has: the full network's after training (round 0
        aside) and the subnetworks' per round.

        Returns:
            {name: {"final": value, "best": value, "best_round": round}}.
        """
        out = {}
        for name, better in schema.SCORES.items():
            table = self.metrics if name in self.metrics else self.eval
            if name not in table:
                continue
            at, values = table["round"], np.asarray(table[name], dtype=np.float64)
            keep = (at > 0) & np.isfinite(values)
            if not keep.any():
                continue
            at, values = at[keep], values[keep]
            i = int(np.argmin(values) if better == "min" else np.argmax(values))
            out[name] = {"final": float(values[-1]), "best": float(values[i]), "best_round": int(at[i])}
        return out

    def plateau(self) -> dict:
        """The loss level the run settles at: with train.plateau_window N, the authors' estimate
        (the best N-point running mean of the full loss, theory.running_plateau) and the round the
        rule stopped it; else the geometric mean over the last quarter of the rounds
        (theory.curve_summary).

        Returns:
            {"plateau": level or None, "how": which estimate, "stopped_at": round or None}.
        """
        tr = self.config["train"]
        window = tr.get("plateau_window", 0)
        if window:
            at, best, _ = theory.running_plateau(self.eval["loss"], window, tr.get("plateau_floor", 0.0),
                                                 tr.get("plateau_patience", 1))
            return {"plateau": best if np.isfinite(best) else None, "how": f"best {window}-point running mean",
                    "stopped_at": None if at is None else int(self.eval["round"][at])}
        return {"plateau": theory.curve_summary(self.eval["round"], self.eval["loss"])["plateau"],
                "how": "geometric mean of the last quarter", "stopped_at": None}

    def rate(self) -> float | None:
        """The empirical linear rate of the full network's loss.

        Returns:
            The per-round factor from a fit of log loss over rounds (None with too few evaluations).
        """
        done = self.eval["round"] > 0
        return theory.linear_rate(self.eval["loss"][done], self.eval["round"][done])

    def __repr__(self):
        mk = self.config["masks"]
        return (f"Run({self.folder!r}, {self.status}, {len(self.metrics['round'])}/{self.config['train']['rounds']} "
                f"rounds, {mk['kind']} p={mk['subnets']} keep={mk['keep']:g})")


def _pandas():
    try:
        import pandas as pd  # lazy: optional (mpisub[pandas])
    except ImportError:
        raise ImportError("to_dataframe needs pandas: pip install pandas") from None
    return pd


class Runs(list):
    """Several runs (open_runs), with one DataFrame of them all."""

    def to_dataframe(self) -> Any:
        """Every run's Run.to_dataframe() in one frame (pandas is optional: pip install pandas).

        Returns:
            A DataFrame: a `run` column (its folder) and one column per config key in which the
            runs differ, then round and the tables' columns.
        """
        pd = _pandas()
        keys = differing_keys(self)
        frames = []
        for run in self:
            frame = run.to_dataframe().reset_index()
            flat = flat_config(run)
            for i, key in enumerate(["run", *keys]):
                frame.insert(i, key, run.folder if key == "run" else flat.get(key))
            frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def open_run(path: str) -> Run:
    """Open one run.

    Args:
        path: a run folder or its run.h5.

    Returns:
        The Run (its tables read; its arrays read when first asked for).

    Raises:
        UserError: the file is damaged or not a run file.
    """
    return Run(path)


def open_runs(pattern: str) -> Runs:
    """Open every run that a glob matches.

    Args:
        pattern: a glob of run folders or run.h5 files (e.g. "runs/sweep-*"); of what it matches,
            the folders that hold a run.h5 and the .h5 files count (a sweep's folder also holds logs
            and data).

    Returns:
        The Runs, sorted by path (empty when nothing matches).
    """
    paths = []
    for p in sorted(globbing.glob(pattern)):
        if (os.path.isfile(p) and p.lower().endswith((".h5", ".hdf5"))) or os.path.isfile(os.path.join(p, FILENAME)):
            paths.append(p)
    return Runs(Run(p) for p in paths)


def open_all(paths: list[str]) -> Runs:
    """Runs from folders or run.h5 paths; a UserError names the first that cannot be read."""
    runs = Runs()
    for path in paths:
        if not os.path.exists(path):
            raise UserError(f"{path!r} does not exist; give a run folder or its run.h5")
        try:
            runs.append(Run(path))
        except (OSError, KeyError, ValueError) as e:
            raise UserError(f"{path!r} is not a readable mpisub run file ({e})") from None
    return runs


def flat_config(run: Run) -> dict:
    return flatten(run.config)


def differing_keys(runs: list[Run], given: bool = False) -> list[str]:
    """The config keys whose values are not the same in all runs (the output section aside: where
    and how often a run writes does not change what it computes); with `given`, among the configs
    as given (the keys the user set apart, not what auto values resolved to)."""
    flats = [r.given if given else flat_config(r) for r in runs]
    keys = sorted(set().union(*flats))
    return [k for k in keys if not k.startswith("output.") and len({json.dumps(f.get(k)) for f in flats}) > 1]


def label_keys(runs: list[Run]) -> list[str]:
    """The keys that tell runs apart in a legend or a table: those the user set apart (as given),
    and the resolved ones only where those leave two runs looking the same (e.g. an auto
    masks.subnets at different numbers of ranks). train.seed aside: seeds are one curve."""
    def labels(keys):
        return {json.dumps([flat_config(r).get(k) for k in keys]) for r in runs}
    keys = [k for k in differing_keys(runs, given=True) if k != "train.seed"]
    if len(labels(keys)) < len(seed_groups(runs)):
        keys = sorted(set(keys) | {k for k in differing_keys(runs) if k != "train.seed"})
    return keys


def seed_groups(runs: list[Run]) -> list[list[Run]]:
    """The runs grouped by their config without train.seed (and the output section), in first-seen order:
    a group of several is one point of a sweep over seeds."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        flat = {k: v for k, v in flat_config(run).items() if k != "train.seed" and not k.startswith("output.")}
        groups.setdefault(json.dumps(flat, sort_keys=True), []).append(run)
    return list(groups.values())
