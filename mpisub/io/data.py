"""Training data: the built-in synthetic set, or a user file (.h5, .npz, .csv).

User files are data only: HDF5 datasets, npz arrays loaded with allow_pickle=False, CSV numbers.
Every problem with a file (missing, unreadable, corrupt, wrong shapes, NaN/Inf, text where a
number belongs, empty) is a UserError naming the file, what is wrong and the fix.
"""
from __future__ import annotations

import csv
import hashlib
import os
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h5py
import numpy as np

from mpisub._util.errors import UserError, cause
from mpisub.nn.masks import DATA, stream

if TYPE_CHECKING:  # types only: never imported at run time
    from mpisub.config import Config

TEACHER_WIDTH = 8


@dataclass(frozen=True)
class Inputs:
    """How raw inputs become the network's (data.normalize): 'standardize' every column to mean 0,
    std 1 with the training set's statistics (a constant column's std counts as 1); 'unit' every
    row to norm 1, as the theory assumes (||x_i|| = 1); 'none'. The run file stores it, so new
    inputs are treated as the training set was (Run.predict)."""
    normalize: str = "none"
    mean: np.ndarray | None = None   # d, with 'standardize'
    std: np.ndarray | None = None

    @classmethod
    def fit(cls, X: np.ndarray, normalize: str) -> "Inputs":
        if normalize != "standardize":
            return cls(normalize)
        std = X.std(axis=0)
        return cls(normalize, X.mean(axis=0), np.where(std > 0, std, 1.0))

    def __call__(self, X: np.ndarray) -> np.ndarray:
        if self.normalize == "standardize":
            return (X - self.mean) / self.std
        if self.normalize == "unit":
            big = np.max(np.abs(X), axis=1, keepdims=True)  # scaled first: huge values must not overflow the norm
            if np.any(big == 0):
                raise UserError("data.normalize = 'unit': some samples are all zeros and have no direction; "
                                "drop them or use data.normalize = 'standardize'")
            X = X / big
            return X / np.linalg.norm(X, axis=1, keepdims=True)
        return X


@dataclass(frozen=True)
class Sets:
    """A run's data: the training set, the held-out set (0 rows without one), in the model's dtype,
    the data files' sha256 ("" for built-in data; the test file's after a comma) and how the
    inputs were normalized."""
    X: np.ndarray
    Y: np.ndarray
    X_test: np.ndarray
    Y_test: np.ndarray
    sha256: str = ""
    inputs: Inputs = Inputs()


def synthetic(n: int, d: int, outputs: int, noise: float, seed: int, test_n: int = 0) -> tuple:
    """X (n x d) uniform on the unit sphere (as the theory assumes ||x_i|| = 1) and Y (n x outputs):
    a small random ReLU teacher, scaled to unit RMS, plus Gaussian noise of std `noise`. With
    `test_n`, also (X_test, Y_test): more points from the same teacher, drawn after the training
    set (which stays what it is without them)."""
    rng = stream(seed, DATA)
    X = rng.standard_normal((n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    V = rng.standard_normal((TEACHER_WIDTH, d))
    b = rng.standard_normal((TEACHER_WIDTH, outputs))
    Y = np.maximum(X @ V.T, 0.0) @ b
    scale = np.sqrt(np.mean(Y**2)) + 1e-300
    Y /= scale
    Y += noise * rng.standard_normal(Y.shape)
    if not test_n:
        return X, Y
    Xt = rng.standard_normal((test_n, d))
    Xt /= np.linalg.norm(Xt, axis=1, keepdims=True)
    Yt = np.maximum(Xt @ V.T, 0.0) @ b / scale + noise * rng.standard_normal((test_n, outputs))
    return X, Y, Xt, Yt


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def files_sha256(cfg: Config) -> str:
    """The data files' sha256 as a run records them: "" for built-in data, the test file's after a
    comma. A file that is not there is a UserError naming its key."""
    c = cfg.data
    if c.source == "synthetic":
        return ""
    digests = []
    for key, path in (("data.source", c.source), ("data.test_source", c.test_source)):
        if path:
            if not os.path.isfile(path):
                raise UserError(f"{key} {path!r}: not found; give the path of a .h5, .npz or .csv file")
            digests.append(sha256(path))
    return ",".join(digests)


def _read_h5(path, names):
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise UserError(f"data.source {path!r} is not a readable HDF5 file (corrupt or another format); "
                        f"check the file") from None
    with f:
        arrays = []
        for key, name in names:
            if name not in f or not isinstance(f[name], h5py.Dataset):
                have = ", ".join(k for k in f if isinstance(f[k], h5py.Dataset)) or "none"
                raise UserError(f"data.source {path!r} has no dataset {name!r} (datasets: {have}); "
                                f"set {key} to the right name")
            arrays.append(f[name][()])
    return arrays


def _read_npz(path, names):
    if not zipfile.is_zipfile(path):  # else numpy takes it for a pickle
        raise UserError(f"data.source {path!r} is not a readable .npz file (not a zip archive); check the file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = []
            for key, name in names:
                if name not in z.files:
                    raise UserError(f"data.source {path!r} has no array {name!r} (arrays: "
                                    f"{', '.join(z.files) or 'none'}); set {key} to the right name")
                arrays.append(z[name])
    except ValueError as e:  # object arrays need pickle, which user data never gets
        raise UserError(f"data.source {path!r}: cannot load it as numeric arrays ({e}); save plain "
                        f"numeric arrays with numpy.savez") from None
    except (OSError, EOFError) as e:
        raise UserError(f"data.source {path!r} is not a readable .npz file ({e}); check the file") from None
    return arrays


def _csv_rows(path):
    """The CSV's rows as lists of strings, read as UTF-8 (a BOM is dropped)."""
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            for row in reader:
                rows.append(row)
        except UnicodeDecodeError as e:
            raise UserError(f"data.source {path!r} is not UTF-8 text (byte {e.object[e.start]:#04x} near line "
                            f"{reader.line_num + 1}); save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
        except csv.Error as e:
            raise UserError(f"data.source {path!r} line {reader.line_num}: {cause(e)}; fix the file "
                            f"(CSV data is one number per field)") from None
    return rows


def _read_csv(path, target):
    header, values = _csv_table(path)
    wanted = [t.strip() for t in target.split(",")] if target else [header[-1]]
    missing = [t for t in wanted if t not in header]
    if missing:
        raise UserError(f"data.source {path!r} has no column {missing[0]!r} (columns: {', '.join(header)}); "
                        f"set data.target to target column names, comma-separated")
    if len(wanted) == len(header):
        raise UserError(f"data.source {path!r}: data.target takes every column; leave at least one input column")
    y_cols = [header.index(t) for t in wanted]
    x_cols = [j for j in range(len(header)) if j not in y_cols]
    return values[:, x_cols], values[:, y_cols]


def _csv_table(path):
    """A CSV's header and its numbers."""
    rows = _csv_rows(path)
    if not rows:
        raise UserError(f"data.source {path!r} is empty; a CSV needs a header row and one row per sample")
    header = [h.strip() for h in rows[0]]
    if len(header) == 1:
        for name, sep in (("';'", ";"), ("tab", "\t")):
            if sep in header[0]:
                raise UserError(f"data.source {path!r}: the header is one column holding {name} characters: the "
                                f"file looks {name}-separated, and mpisub reads comma-separated CSV; save it with "
                                f"commas")
    values = np.empty((len(rows) - 1, len(header)))
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise UserError(f"data.source {path!r} line {i} has {len(row)} fields, the header has "
                            f"{len(header)}; fix the file")
        for j, cell in enumerate(row):
            try:
                values[i - 2, j] = float(cell)
            except ValueError:
                raise UserError(f"data.source {path!r} line {i}, column {header[j]!r}: {cell[:40]!r} is not a "
                                f"number; CSV data must be numeric (encode categories as numbers)") from None
    return header, values


def read_file(path: str, x_name: str = "X", y_name: str = "Y", target: str = "") -> tuple[np.ndarray, np.ndarray]:
    """X (n x d), Y (n x c) as float64 from a user file, checked. Whatever fails while reading it
    (a corrupt chunk, a dangling link, a bad CRC, memory) is a UserError naming the file: a user's
    file is untrusted input, and no failure inside it may end in a traceback."""
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "not found"
        raise UserError(f"data.source {path!r}: {what}; give the path of a .h5, .npz or .csv file")
    if not os.access(path, os.R_OK):
        raise UserError(f"data.source {path!r} is not readable (permission denied); fix its permissions")
    return _guarded(path, lambda: _checked(path, *_read(path, x_name, y_name, target)))


def _guarded(path: str, read):
    """read() of a user's file: whatever fails in it is a UserError naming the file."""
    try:
        return read()
    except UserError:
        raise
    except MemoryError:
        raise UserError(f"data.source {path!r} does not fit in memory; use a smaller file or more memory "
                        f"per rank") from None
    except Exception as e:  # noqa: BLE001 (see the docstring)
        raise UserError(f"data.source {path!r} cannot be read ({type(e).__name__}: {cause(e)}); check that the "
                        f"file is whole and in the format its suffix says") from None


def _read(path, x_name, y_name, target):
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".csv":
        return _read_csv(path, target)
    names = (("data.x_name", x_name), ("data.y_name", y_name))
    return (_read_npz if suffix == ".npz" else _read_h5)(path, names)


def read_inputs(path: str, x_name: str, target: str, d: int) -> np.ndarray:
    """Raw inputs for a trained network (mpisub-predict), float64 and checked: a .npz or .h5 file's
    array `x_name`, or a CSV's d input columns (all its columns, or all but the training's target
    columns `target`, the last one when ""). Problems name the file."""
    def read():
        if not path.lower().endswith(".csv"):
            X = (_read_npz if path.lower().endswith(".npz") else _read_h5)(path, (("data.x_name", x_name),))[0]
            return _checked(path, X)[0]
        header, values = _csv_table(path)
        wanted = [t.strip() for t in target.split(",")] if target else [header[-1]]
        keep = [j for j, h in enumerate(header) if values.shape[1] == d or h not in wanted]
        if len(keep) != d:
            raise UserError(f"data.source {path!r} has the columns {', '.join(header)}; the network takes {d} "
                            f"inputs: give its {d} input columns (the targets may be there too)")
        return _checked(path, values[:, keep])[0]
    if not os.path.isfile(path):
        raise UserError(f"{path!r}: not found; give a .npz, .h5 or .csv file of inputs")
    try:
        X = _guarded(path, read)
    except UserError as e:
        raise UserError(str(e).replace("data.source ", "", 1)) from None
    if X.shape[1] != d:
        raise UserError(f"{path!r}: {x_name} has {X.shape[1]} columns; the network takes {d} inputs per sample")
    return X


def _checked(path, X, Y=None):
    """X and Y (when given) as 2-D float64, checked: numbers, rows alike, finite."""
    if Y is None:
        Y = np.zeros((len(X) if np.ndim(X) else 0, 1))
    out = []
    for name, A in (("X", X), ("Y", Y)):
        A = np.asarray(A)
        if A.dtype.kind not in "biuf":
            raise UserError(f"data.source {path!r}: {name} has dtype {A.dtype}, not numbers; store numeric arrays")
        if A.ndim == 1:
            A = A[:, None]
        if A.ndim != 2:
            raise UserError(f"data.source {path!r}: {name} has shape {A.shape}; it must be 2-D (samples x features)")
        out.append(A.astype(np.float64))
    X, Y = out
    if X.shape[0] == 0 or X.shape[1] == 0 or Y.shape[1] == 0:
        raise UserError(f"data.source {path!r} holds no data (X {X.shape}, Y {Y.shape}); check the file")
    if X.shape[0] != Y.shape[0]:
        raise UserError(f"data.source {path!r}: X has {X.shape[0]} samples but Y has {Y.shape[0]}; "
                        f"they must have one row per sample each")
    for name, A in (("X", X), ("Y", Y)):
        bad = ~np.isfinite(A)
        if bad.any():
            i = int(np.argwhere(bad)[0][0])
            raise UserError(f"data.source {path!r}: {name} has {int(bad.sum())} NaN/Inf value(s), the first "
                            f"in sample {i}; clean or drop those samples")
    return X, Y


def load(cfg: Config) -> tuple[np.ndarray, np.ndarray, str]:
    """X, Y for the run, in the model's dtype, C-contiguous, and the source file's sha256 ("" for
    built-in data)."""
    sets = load_sets(cfg)
    return sets.X, sets.Y, sets.sha256


def load_sets(cfg: Config) -> Sets:
    """X, Y, X_test, Y_test (0 rows without a test set) in the model's dtype, C-contiguous, the
    data files' sha256 and the normalization. Classification turns integer labels into one-hot
    rows (docs/design.md, the keys `data.task` and `data.test_source`)."""
    c = cfg.data
    Xt = Yt = None
    if c.source == "synthetic":
        with np.errstate(all="ignore"):  # a huge data.noise is reported just below
            drawn = synthetic(c.n, c.d, c.outputs, c.noise, c.seed, c.test_n)
        X, Y = drawn[:2]
        if c.test_n:
            Xt, Yt = drawn[2:]
        digest, what = "", f"the synthetic data (data.noise = {c.noise:g})"
    else:
        X, Y = read_file(c.source, c.x_name, c.y_name, c.target)
        what = f"data.source {c.source!r}"
        if c.test_source:
            try:
                Xt, Yt = read_file(c.test_source, c.x_name, c.y_name, c.target)
            except UserError as e:
                raise UserError(str(e).replace("data.source", "data.test_source", 1)) from None
            if Xt.shape[1] != X.shape[1] or Yt.shape[1] != Y.shape[1]:
                raise UserError(f"data.test_source {c.test_source!r} has {Xt.shape[1]} inputs and {Yt.shape[1]} "
                                f"targets per sample, data.source {X.shape[1]} and {Y.shape[1]}; give files "
                                f"of the same columns")
        elif c.holdout:
            order = stream(c.seed, DATA, 1).permutation(len(X))  # a seeded split, recorded by data.seed
            cut = len(X) - max(1, int(round(c.holdout * len(X))))
            if cut < 1:
                raise UserError(f"data.holdout = {c.holdout:g} leaves no training sample of the {len(X)}; lower it")
            X, Y, Xt, Yt = X[order[:cut]], Y[order[:cut]], X[order[cut:]], Y[order[cut:]]
        digest = files_sha256(cfg)
    if c.task == "classification":
        test = f"data.test_source {c.test_source!r}" if c.test_source else what
        Y, Yt = one_hot(Y, Yt, what, test)
    if Xt is None:
        Xt, Yt = np.zeros((0, X.shape[1])), np.zeros((0, Y.shape[1]))
    dtype = np.dtype(cfg.model.dtype)
    with np.errstate(all="ignore"):
        inputs = Inputs.fit(X, c.normalize)
        Xt = inputs(Xt) if len(Xt) else Xt
        X = inputs(X)
        X, Y = np.ascontiguousarray(X, dtype=dtype), np.ascontiguousarray(Y, dtype=dtype)
        Xt, Yt = np.ascontiguousarray(Xt, dtype=dtype), np.ascontiguousarray(Yt, dtype=dtype)
        for name, A in (("X", X), ("Y", Y), ("X_test", Xt), ("Y_test", Yt)):
            # the loss squares the targets and the NTK Gram matrix the inputs' norms (in float64)
            if not (np.isfinite(A).all() and np.isfinite(np.einsum("ij,ij->", A, A, dtype=np.float64))):
                big = float(np.max(np.abs(A.astype(np.float64))))
                raise UserError(f"{what}: {name} has values up to {big:.3g}, too large for model.dtype = "
                                f"{cfg.model.dtype!r} once squared; rescale the data (data.normalize = 'unit' or "
                                f"'standardize'){'' if digest else ' or lower data.noise'}")
    return Sets(X, Y, Xt, Yt, digest, inputs)


# the most classes a classification run takes: labels are 0 ... C-1, and the targets n x C numbers
MAX_CLASSES = 2**16


def one_hot(Y: np.ndarray, Yt: np.ndarray | None, what: str, test: str = "") -> tuple:
    """Integer class labels (one column, 0 ... classes-1) as one-hot rows; classes from both sets.
    `what`, `test`: the files the labels came from, for the message."""
    labels = [(A, name) for A, name in ((Y, what), (Yt, test or what)) if A is not None]
    for A, name in labels:
        if A.shape[1] != 1 or not np.all(np.isfinite(A)) or np.any(A != np.round(A)) or np.any(A < 0):
            raise UserError(f"{name}: data.task = 'classification' needs one column of integer class labels "
                            f"0, 1, 2, ... as targets (found {A.shape[1]} column(s) or non-integer values)")
        if A.max(initial=0) >= MAX_CLASSES:
            raise UserError(f"{name}: class label {A.max():.0f} is over the {MAX_CLASSES - 1} mpisub takes (labels "
                            f"0 ... C-1 become targets of C columns); number the classes 0, 1, 2, ...")
    classes = int(max(A.max(initial=0) for A, _ in labels)) + 1
    return tuple(None if A is None else _rows_of_eye(A[:, 0].astype(np.int64), classes) for A in (Y, Yt))


def _rows_of_eye(labels: np.ndarray, classes: int) -> np.ndarray:
    """Rows of the C x C identity for the labels, without building it."""
    out = np.zeros((len(labels), classes))
    out[np.arange(len(labels)), labels] = 1.0
    return out
