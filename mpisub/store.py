"""The run file `<output.dir>/run.h5`, written by rank 0 alone. The layout is a contract (README):

  attrs   config (resolved config, JSON), mpisub_version, ranks, mpi_library, status, created
  /data/X, /data/Y            the built-in training data
  /model/a, /model/W_init     fixed output weights, initial input weights
  /model/W                    latest aggregated input weights (attr `round`: rounds done)
  /metrics/<name>             one row per round, resizable: round, loss, sub_loss,
                              seconds_compute, seconds_comm, seconds_wall, bytes_comm;
                              attr `loss_init`: the loss at W_init
  /masks                      uint8 (rounds x p x m), only with output.record_masks
"""
import datetime
import os

import h5py
import numpy as np

from .errors import UserError

METRICS = {
    "round": np.int64,
    "loss": np.float64,
    "sub_loss": np.float64,
    "seconds_compute": np.float64,
    "seconds_comm": np.float64,
    "seconds_wall": np.float64,
    "bytes_comm": np.int64,
}
FILENAME = "run.h5"


def new_run_dir(root: str = "runs") -> str:
    """runs/<timestamp>, with a suffix if a run started in the same second."""
    base = os.path.join(root, datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    path, i = base, 1
    while os.path.exists(path):
        i += 1
        path = f"{base}-{i}"
    return path


class RunFile:
    def __init__(self, folder: str, *, config_json: str, attrs: dict, overwrite: bool,
                 subnets: int, width: int, record_masks: bool):
        self.path = os.path.join(folder, FILENAME)
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise UserError(f"output.dir {folder!r} is a file, not a folder; choose another output.dir")
        if os.path.exists(self.path) and not overwrite:
            raise UserError(f"output.dir {folder!r} already holds a run ({FILENAME}); choose another "
                            f"output.dir, or set output.overwrite = true to replace it")
        try:
            os.makedirs(folder, exist_ok=True)
            self.f = h5py.File(self.path, "w")
        except OSError as e:
            raise UserError(f"output.dir {folder!r}: cannot write {FILENAME} there ({e.strerror or e}); "
                            f"choose a writable output.dir") from None
        self.f.attrs.update(attrs)
        self.f.attrs["config"] = config_json
        self.f.attrs["status"] = "running"
        self.f.attrs["created"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        g = self.f.create_group("metrics")
        for name, dtype in METRICS.items():
            g.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(1024,))
        if record_masks:
            self.f.create_dataset("masks", shape=(0, subnets, width), maxshape=(None, subnets, width),
                                  dtype=np.uint8, chunks=(1, subnets, width))
        self.rows = 0

    def write_start(self, X, Y, a, W_init) -> None:
        self.f["data/X"] = X
        self.f["data/Y"] = Y
        self.f["model/a"] = a
        self.f["model/W_init"] = W_init
        self.f["model/W"] = W_init
        self.f["model/W"].attrs["round"] = 0
        self.f.flush()

    def write_loss_init(self, loss: float) -> None:
        self.f["metrics"].attrs["loss_init"] = loss

    def append(self, metrics: dict, masks=None) -> None:
        """One row per round; masks (p x m) when recorded."""
        i = self.rows
        for name in METRICS:
            ds = self.f["metrics"][name]
            ds.resize((i + 1,))
            ds[i] = metrics[name]
        if masks is not None:
            self.f["masks"].resize((i + 1,) + self.f["masks"].shape[1:])
            self.f["masks"][i] = masks
        self.rows = i + 1
        self.f.flush()  # a killed job leaves every finished round on disk

    def write_weights(self, W, rounds_done: int) -> None:
        self.f["model/W"][...] = W
        self.f["model/W"].attrs["round"] = rounds_done
        self.f.flush()

    def close(self, status: str) -> None:
        self.f.attrs["status"] = status
        self.f.close()


def read_run(path: str, arrays: bool = True) -> dict:
    """A run file's attributes and metrics (and, with `arrays`, its data, weights and masks) as
    plain Python and numpy values."""
    if os.path.isdir(path):
        path = os.path.join(path, FILENAME)
    with h5py.File(path, "r") as f:
        run = {"attrs": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}}
        run["metrics"] = {k: f["metrics"][k][()] for k in f["metrics"]}
        run["metrics"].update(f["metrics"].attrs)
        for name in ("data/X", "data/Y", "model/a", "model/W_init", "model/W", "masks"):
            if arrays and name in f:
                run[name] = f[name][()]
    return run
