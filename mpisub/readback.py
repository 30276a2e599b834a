"""Reading back the files mpisub wrote: the run file (read_run; the notebook API in analysis.py
builds on it) and the checkpoint a resume continues from (read_checkpoint, read_checkpoint_W).
HDF5 and numpy only: no MPI, no numba."""
import contextlib
import json
import os

import h5py
import numpy as np

from . import schema
from .errors import UserError
from .folders import CHECKPOINT, FILENAME
from .provenance import code_hash
from .schema import CHECKPOINT_FORMAT


def _table(group) -> dict:
    """A table's columns cut to the rows all of them hold: a running job grows its columns one
    after another, so a reader may catch one a batch of rows ahead of the others."""
    rows = min((ds.shape[0] for ds in group.values()), default=0)
    return {k: ds[:rows] for k, ds in group.items()}


def read_run(path: str, arrays: bool = True) -> dict:
    """A run file's attributes and metrics (and, with `arrays`, its data, weights and masks) as
    plain Python and numpy values."""
    if os.path.isdir(path):
        path = os.path.join(path, FILENAME)
    with h5py.File(path, "r") as f:
        run = {"attrs": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}}
        run["metrics"] = _table(f["metrics"])
        run["metrics"].update(f["metrics"].attrs)
        if "eval" in f:
            run["eval"] = _table(f["eval"])
        else:  # before mpisub 0.2 every round was evaluated, into /metrics/loss
            run["eval"] = {"round": run["metrics"]["round"], "loss": run["metrics"]["loss"]}
        if "theory/lambda0" in f:
            run["lambda0"] = float(f["theory/lambda0"][()])
        for name in ("data/X", "data/Y", "model/a", "model/W_init", "model/W"):
            if arrays and name in f:
                run[name] = f[name][()]
        if arrays and "masks" in f:
            run["masks"] = f["masks"][:len(run["metrics"]["round"])]   # a row per metrics row
    return run


def _history(f, table: str) -> dict:
    """A checkpoint's table by the schema's columns; a column it lacks (written before that
    column existed) is NaN in its rows, so a new metric needs no new checkpoint format."""
    rows = f[f"{table}/round"].shape[0]
    return {name: f[f"{table}/{name}"][()] if name in f[table] else np.full(rows, np.nan)
            for name in schema.columns(table)}


def read_checkpoint(folder: str, allow_version_change: bool = False) -> dict:
    """The checkpoint of the run in `folder`, checked: a UserError says what is wrong and what to do.
    Another mpisub version or code (code_hash) is refused unless `allow_version_change`; then
    ck["version_change"] says what changed."""
    from . import __version__

    path = os.path.join(folder, CHECKPOINT)
    if not os.path.isdir(folder):
        raise UserError(f"--resume {folder!r}: no such folder; give the output.dir of the run to continue")
    if not os.path.exists(path):
        raise UserError(f"--resume {folder!r} holds no checkpoint ({CHECKPOINT}): the run stopped before "
                        f"its first one; start it again (with output.overwrite = true in that folder)")
    try:
        with h5py.File(path, "r") as f:
            ck = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            written = f"mpisub {ck.get('mpisub_version')} (code {ck.get('code_hash', 'not recorded')})"
            here = f"mpisub {__version__} (code {code_hash()})"
            if ck.get("format") != CHECKPOINT_FORMAT:
                raise UserError(f"--resume {folder!r}: its checkpoint was written by {written} in format "
                                f"{ck.get('format')}; this is {here}, which reads format {CHECKPOINT_FORMAT}: "
                                f"resume with the version that wrote it, or start a new run")
            changed = ck.get("mpisub_version") != __version__ or ck.get("code_hash", code_hash()) != code_hash()
            if changed and not allow_version_change:
                raise UserError(f"--resume {folder!r}: its checkpoint was written by {written}, this is {here}; "
                                f"a run continues bit-exactly only with the code that started it: resume with "
                                f"that version, or add --allow-version-change to continue with this one")
            ck["version_change"] = f"written by {written}, continued by {here}" if changed else ""
            ck["shape"], ck["folder"] = f["W"].shape, folder
            ck["metrics"], ck["eval"] = _history(f, "metrics"), _history(f, "eval")
            ck["config"] = json.loads(ck["config"])
            # the run file says more than the checkpoint where it is whole: how its launches ended
            history = _run_file_json(folder, ("config_given", "segments"))
            ck["config_given"] = history.get("config_given")
            ck["segments"] = history.get("segments") or json.loads(ck.get("segments", "[]"))
            ck["round"] = int(ck["round"])
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"--resume {folder!r}: {CHECKPOINT} is not a readable mpisub checkpoint ({e}); "
                        f"the run cannot continue from it") from None
    return ck


def _run_file_json(folder: str, names: tuple) -> dict:
    """The JSON attrs `names` of the run file in `folder` that it has and that parse."""
    out = {}
    with contextlib.suppress(OSError), h5py.File(os.path.join(folder, FILENAME), "r") as f:
        for name in names:
            with contextlib.suppress(KeyError, ValueError, TypeError):
                out[name] = json.loads(f.attrs[name])
    return out


def read_checkpoint_W(folder: str, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """Rows lo:hi of the checkpoint's W: each rank reads its own block on resume."""
    with h5py.File(os.path.join(folder, CHECKPOINT), "r") as f:
        return f["W"][lo:hi]
