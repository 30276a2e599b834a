"""The run that a new run starts from (model.init_from), read back as untrusted input: check_init
before the run starts, read_init for each rank's rows. HDF5 and numpy only."""
from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING

import h5py
import numpy as np

from mpisub._util.errors import UserError
from mpisub.io.readback import CheckedFile, matrix, read_h5

if TYPE_CHECKING:  # types only: never imported at run time
    from mpisub.config import Config


def check_init(cfg: Config) -> dict:
    """The finished run whose W and a start this one (model.init_from), checked as untrusted input:
    a completed run, W (model.width x data.d) finite, a (model.width x data.outputs) of +-1. Returns
    what the new run records of it: {"init_round", "init_sha256"} (sha256 of W's and a's bytes)."""
    path = cfg.model.init_from
    what = f"model.init_from {path!r}"
    if not os.path.isfile(path):
        raise UserError(f"{what}: no run file there; give a finished run's folder or its run.h5")

    def read(f):
        L = CheckedFile(f, what)
        if L.attr("status", str) != "completed":
            raise L.bad(f"the run is {f.attrs['status']!r}, not completed; finish it (mpisub-train --resume) first")
        h = hashlib.sha256()
        for name, cols in (("model/W", cfg.data.d), ("model/a", cfg.data.outputs)):
            data = matrix(f, name, what) if isinstance(f.get(name), h5py.Dataset) else None
            if not isinstance(data, h5py.Dataset) or data.shape != (cfg.model.width, cols) or data.dtype.kind != "f":
                have = data.shape if isinstance(data, h5py.Dataset) else "missing"
                raise L.bad(f"{name} is {have}, not {cfg.model.width} x {cols} numbers: the new run must have the "
                            f"same model.width, inputs and outputs")
            for lo in range(0, cfg.model.width, 4096):
                rows = data[lo:lo + 4096]
                ok = np.isfinite(rows).all() if name == "model/W" else np.isin(rows, (-1.0, 1.0)).all()
                if not ok:
                    raise L.bad(f"{name} has {'values not finite' if name == 'model/W' else 'entries not +-1'}")
                h.update(np.ascontiguousarray(rows, dtype=np.float64).tobytes())
        return {"init_round": int(f["model/W"].attrs.get("round", 0)), "init_sha256": h.hexdigest()}
    return read_h5(path, read, f"{what}: not a readable mpisub run file", "")


def read_init(path: str, name: str, lo: int, hi: int) -> np.ndarray:
    """Rows lo:hi of the model.init_from run's `name` (model/W or model/a), as check_init found them."""
    return read_h5(path, lambda f: matrix(f, name, f"model.init_from {path!r}")[lo:hi],
                    f"model.init_from {path!r}: cannot read {name}",
                    "; the file changed since the run started: restore it")
