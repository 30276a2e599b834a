"""The run file `<output.dir>/run.h5` and the checkpoint `<output.dir>/checkpoint.h5`, written by
rank 0 alone; the only HDF5 writes (docs/design.md, section 4, holds their layout: attrs config,
config_given, segments, provenance, status; /data, /model/{a, W_init, W}, /metrics and /eval
(schema.py), /masks, /theory).

The run file gets new rows at least every WRITE_SECONDS and is held without an HDF5 file lock, so
other processes (h5py, h5dump) can read it while training runs. It is built as run.h5.tmp and
renamed to run.h5 only once it holds everything the run had (its start, or a resumed run's rows):
a resume or restart that fails early never destroys the run file it would have replaced. The
checkpoint is the run's source of truth: W, rounds done, the histories so far and the config,
replaced atomically (temp file, fsync, rename), so a crash at any instant leaves the previous one
loadable; `--resume` rebuilds run.h5 from it. Masks and minibatches need no saved random state:
they are functions of (seed, round, subnet).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import h5py
import numpy as np

from mpisub._util.errors import UserError, cause
from mpisub._util.provenance import __version__, code_hash
from mpisub.io import integrity, schema
from mpisub.io.loggers import Logger
from mpisub.io.readback import read_checkpoint, read_checkpoint_W, read_run  # noqa: F401 (the store's readers)
from mpisub.io.run_folder import CHECKPOINT, FILENAME, check_output_dir, fresh
from mpisub.io.schema import CHECKPOINT_FORMAT

if TYPE_CHECKING:  # types only: never imported at run time
    from collections.abc import Iterable
    from typing import Any

WRITE_SECONDS = 1.0     # metrics rows reach run.h5 at most this late (the first at once)


@dataclass
class Header:
    """What a run file and its checkpoints say about the run besides its numbers."""
    config_json: str
    attrs: dict = field(default_factory=dict)   # provenance: version, code hash, ranks, MPI, plan reason
    given_json: str = ""                        # the config as given (auto values auto); "" = config_json
    data_sha256: str = ""                       # "" for built-in data (then /data holds it)
    created: str = ""                           # "" = now
    segments: list = field(default_factory=list)  # one row per launch, this one last
    masks_shape: tuple | None = None            # (p, m) with output.record_masks

    def __post_init__(self):
        self.created = self.created or datetime.datetime.now().astimezone().isoformat(timespec="seconds")


class RunFile(Logger):
    """Rank 0's run file, a Logger that keeps the weights and writes the checkpoints."""
    keeps_weights = True

    def __init__(self, folder: str, header: Header, overwrite: bool = False):
        self.folder, self.header = folder, header
        self.path = os.path.join(folder, FILENAME)
        self.tmp, self.published = self.path + ".tmp", False
        check_output_dir(folder, overwrite)
        try:
            # no file lock: readers may open the file while training runs
            self.f = h5py.File(fresh(self.tmp), "w-", locking=False)   # exclusive: never through a link
            self._start()
        except OSError as e:
            self.finalize("failed")
            raise UserError(f"output.dir {folder!r}: cannot write {FILENAME} there ({cause(e)}); "
                            f"choose a writable output.dir with free space") from None

    def _start(self) -> None:
        h = self.header
        self.f.attrs.update(h.attrs)
        self.f.attrs.update({"config": h.config_json, "status": "running", "created": h.created,
                             "segments": json.dumps(h.segments)})
        for table in schema.TABLES:
            g = self.f.create_group(table)
            for name, dtype in schema.columns(table).items():
                g.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(1024,))
        if h.masks_shape:
            self.f.create_dataset("masks", shape=(0, *h.masks_shape), maxshape=(None, *h.masks_shape),
                                  dtype=np.uint8, chunks=(1, *h.masks_shape))
        self.pending: dict[str, list] = {table: [] for table in schema.TABLES}
        self.rows = {table: 0 for table in schema.TABLES}
        self.pending_masks: list[np.ndarray] = []
        self.written_at = 0.0

    def log_start(self, start: dict[str, Any]) -> None:
        """The data (or the data file's path and sha256), its normalization, a, and room for W_init
        and W, which `save_weights` fills block by block (no process holds all of W)."""
        g = self.f.create_group("data")
        if self.header.data_sha256:  # a user's file: say which one (absolute), rather than copy it
            g.attrs["source"], g.attrs["sha256"] = start["source"], self.header.data_sha256
        else:
            g["X"], g["Y"] = start["X"], start["Y"]
        inputs = start["inputs"]     # how new inputs must be treated (Run.predict)
        g.attrs["normalize"] = np.bytes_(inputs.normalize)   # fixed-length: no global heap to corrupt
        if inputs.mean is not None:
            g["mean"], g["std"] = inputs.mean, inputs.std
        a = self.f.create_dataset("model/a", shape=start["a"].shape, dtype=start["dtype"])
        for lo in range(0, len(a), 2**16):   # a's signs (int8) in the model's dtype, a block at a time
            a[lo:lo + 2**16] = start["a"][lo:lo + 2**16]
        for name in ("model/W_init", "model/W"):
            self.f.create_dataset(name, shape=start["shape"], dtype=start["dtype"])
        self.f["model/W"].attrs["round"] = 0
        self.f.flush()

    def log_theory(self, lambda0: float | None, H: np.ndarray | None = None, lambda_max: float | None = None) -> None:
        self.f["theory/lambda0"] = lambda0
        if lambda_max is not None:
            self.f["theory/lambda_max"] = lambda_max
        if H is not None:
            self.f["theory/H"] = H

    def log_loss_init(self, loss: float) -> None:
        self.f["metrics"].attrs["loss_init"] = loss

    def log_round(self, row: dict[str, Any], masks: np.ndarray | None = None) -> None:
        """Rows reach the file at most WRITE_SECONDS late (and at every weights write, checkpoint
        and close): writing and flushing every round would cost more than a small round itself."""
        self.pending["metrics"].append(row)
        if masks is not None:
            self.pending_masks.append(masks)
        if time.monotonic() - self.written_at >= WRITE_SECONDS:
            self.write_pending()

    def log_eval(self, row: dict[str, Any]) -> None:
        self.pending["eval"].append(row)   # written with the next metrics rows

    def write_pending(self) -> None:
        if self.pending_masks:   # before /metrics: a reader cuts /masks to the rows of /metrics
            ds = self.f["masks"]
            ds.resize((ds.shape[0] + len(self.pending_masks),) + ds.shape[1:])
            ds[-len(self.pending_masks):] = np.stack(self.pending_masks)
            self.pending_masks = []
        for table in schema.TABLES:
            rows, at = self.pending[table], self.rows[table]
            for name in schema.columns(table) if rows else ():
                ds = self.f[table][name]
                ds.resize((at + len(rows),))
                ds[at:] = [row[name] for row in rows]
            self.rows[table], self.pending[table] = at + len(rows), []
        self.f.flush()  # what is written stays on disk if the job is killed
        self.written_at = time.monotonic()

    def log_facts(self, facts: dict[str, Any]) -> None:
        if "peak_rss_mb" in facts:
            self.f.attrs["peak_rss_mb"] = np.asarray(facts["peak_rss_mb"], dtype=np.float64)

    def save_weights(self, blocks: Iterable[tuple[int, np.ndarray]], rounds_done: int, *, init: bool = False,
                     weights: bool = True, checkpoint: dict | None = None) -> None:
        """One pass over W's row blocks `(lo, rows)` (rank 0 receives them one at a time): into
        /model/W_init (init), /model/W (weights) and a new checkpoint (`checkpoint`: its histories
        and loss_init), which replaces the previous one only once it is whole."""
        self.write_pending()
        if self.header.segments:
            self.header.segments[-1]["last_round"] = rounds_done
            self.f.attrs["segments"] = json.dumps(self.header.segments)
        W = self.f["model/W"]
        ck = _Checkpoint(self.folder, self.header, W, dict(checkpoint, round=rounds_done)) if checkpoint else None
        try:
            for lo, block in blocks:
                for at, rows in _slices(lo, block):   # h5py holds the GIL while it writes: a slice at a time
                    if init:
                        self.f["model/W_init"][at:at + len(rows)] = rows
                    if weights:
                        W[at:at + len(rows)] = rows
                    if ck:
                        ck.add_rows(at, rows)
            if weights:
                W.attrs["round"] = rounds_done
            self.f.flush()
            if ck:
                ck.commit()
        except BaseException:
            if ck:
                ck.abort()
            raise

    def publish(self) -> None:
        """run.h5.tmp becomes run.h5: from here on it holds all that the run file it replaces held."""
        self.write_pending()
        os.replace(self.tmp, self.path)  # the open handle writes on under the new name
        _fsync(self.folder)
        self.published = True

    def finalize(self, status: str) -> None:
        """Never raises (it runs while another error is on its way out, e.g. a full disk). An
        unpublished file is dropped, so the run file it would have replaced stays as it was."""
        try:
            if self.published:
                self.write_pending()
                self.f.attrs["status"] = status
                if self.header.segments:
                    self.header.segments[-1]["ended"] = status
                    self.f.attrs["segments"] = json.dumps(self.header.segments)
        except Exception:  # noqa: BLE001 (the status is a courtesy; the checkpoint is the truth)
            pass
        with contextlib.suppress(Exception):
            self.f.close()
        if not self.published:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)


SLICE_BYTES = 2**26   # W's rows go to HDF5 this many bytes at a time, so the watchdog's thread runs between


def _slices(lo: int, block: np.ndarray):
    """(first row, rows) of a block in slices of about SLICE_BYTES."""
    step = max(1, SLICE_BYTES // max(1, block[:1].nbytes))
    for a in range(0, len(block), step):
        yield lo + a, block[a:a + step]


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Checkpoint:
    """A checkpoint being written: `<folder>/checkpoint.h5.tmp`, renamed over checkpoint.h5 by
    commit() after an fsync (a crash at any instant leaves the old or the new one, whole);
    abort() removes the torn temporary file (a full disk, a quota). `state`: round, loss_init and
    the histories ("metrics", "evals": {column: values}); `like`: W's shape and dtype."""

    def __init__(self, folder: str, header: Header, like, state: dict):

        self.folder = folder
        self.path = os.path.join(folder, CHECKPOINT)
        self.tmp = self.path + ".tmp"
        try:
            self.f = h5py.File(fresh(self.tmp), "w-", locking=False)   # exclusive: never through a link
            self.f.attrs.update({"format": CHECKPOINT_FORMAT, "mpisub_version": __version__,
                                 "code_hash": code_hash(), "config": header.config_json,
                                 "config_given": header.given_json or header.config_json,
                                 "round": int(state["round"]), "loss_init": float(state["loss_init"]),
                                 "data_sha256": header.data_sha256, "created": header.created,
                                 "segments": json.dumps(header.segments)})
            self.f.create_dataset("W", shape=like.shape, dtype=like.dtype)
            self.hasher = integrity.RowHasher(integrity.chunk_rows(like.shape[1], np.dtype(like.dtype).itemsize))
            for table, key in (("metrics", "metrics"), ("eval", "evals")):
                given = state.get(key) or {}
                rows = len(given.get("round", []))
                for name, dtype in schema.columns(table).items():   # a column not given: NaN (0) in every row
                    empty = np.zeros(rows) if np.dtype(dtype).kind in "iu" else np.full(rows, np.nan)
                    self.f[f"{table}/{name}"] = np.asarray(given.get(name, empty), dtype=dtype)
        except BaseException:
            self.abort()
            raise

    def add_rows(self, lo: int, rows: np.ndarray) -> None:
        """W's rows lo:lo + len(rows), given in row order."""
        self.f["W"][lo:lo + len(rows)] = rows
        self.hasher.update(rows)

    def commit(self) -> None:
        try:
            chunks = self.hasher.finish()
            self.f["W_sha256"] = chunks
            self.f["W_sha256"].attrs["chunk_rows"] = self.hasher.rows
            self.f.attrs["checksum"] = integrity.content_digest(self.f)
            self.f.close()
            _fsync(self.tmp)
        except BaseException:
            self.abort()
            raise
        os.replace(self.tmp, self.path)
        _fsync(self.folder)  # the rename itself reaches the disk

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.f.close()
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


def write_checkpoint(folder: str, *, W: np.ndarray, rounds_done: int, loss_init: float, config_json: str,
                     data_sha256: str = "", created: str = "", **histories: dict[str, Any]) -> None:
    """A whole checkpoint from one array W (tests, tools); a run streams its blocks through
    RunFile.save_weights. `histories`: metrics= and evals= ({column: values})."""
    header = Header(config_json, data_sha256=data_sha256, created=created)
    ck = _Checkpoint(folder, header, W, dict(histories, round=rounds_done, loss_init=loss_init))
    try:
        for at, rows in _slices(0, W):
            ck.add_rows(at, rows)
    except BaseException:
        ck.abort()
        raise
    ck.commit()
