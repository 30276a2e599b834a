"""The run file `<output.dir>/run.h5` and the checkpoint's manifest `<output.dir>/checkpoint.h5`,
written by rank 0 alone (docs/design.md, section 4, holds their layout: attrs config,
config_given, segments, provenance, status; /data, /model/{a, W_init, W}, /metrics and /eval
(schema.py), /masks, /theory). W's rows are not here: every rank writes its own into a shard
(shards.py), and both files' W are virtual datasets over the shards.

The run file gets new rows at least every WRITE_SECONDS and is held without an HDF5 file lock, so
other processes (h5py, h5dump) can read it while training runs. It is built as run.h5.tmp and
renamed to run.h5 only once it holds everything the run had (its start, or a resumed run's rows):
a resume or restart that fails early never destroys the run file it would have replaced. The
checkpoint is the run's source of truth: W's shards and their digests, rounds done, the histories
so far and the config, replaced atomically (temp file, fsync, rename) once every shard is on disk,
so a crash at any instant leaves the previous one loadable (its shards go only after);
`--resume` rebuilds run.h5 from it. Masks and minibatches need no saved random state: they are
functions of (seed, round, subnet).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import h5py
import numpy as np

from mpisub._util.errors import UserError, cause
from mpisub._util.provenance import __version__, code_hash
from mpisub.io import integrity, schema, shards
from mpisub.io.loggers import Logger
from mpisub.io.readback import read_checkpoint, read_checkpoint_W, read_run  # noqa: F401 (the store's readers)
from mpisub.io.run_folder import CHECKPOINT, FILENAME, check_output_dir, fresh
from mpisub.io.schema import CHECKPOINT_FORMAT
from mpisub.io.shards import Shard

if TYPE_CHECKING:  # types only: never imported at run time
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
        self.names: dict[str, set[str]] = {}   # the shards this file and its checkpoint read, by dataset
        self.done = 0                          # rounds done at the newest checkpoint on disk
        self.written_at = 0.0

    def log_start(self, start: dict[str, Any]) -> None:
        """The data (or the data file's path and sha256), its normalization, a, and W's shape and
        dtype (log_weights points /model/W_init and /model/W at the ranks' shards)."""
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
        self.shape, self.dtype = tuple(start["shape"]), np.dtype(start["dtype"])   # W's: log_weights makes it
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
        for name in ("peak_rss_mb", "written_mb"):
            if name in facts:
                self.f.attrs[name] = np.asarray(facts[name], dtype=np.float64)

    def log_weights(self, parts: list[Shard], rounds_done: int, *, init: bool = False) -> None:
        """/model/W (or /model/W_init) becomes a virtual dataset over the ranks' shards `parts`."""
        self.write_pending()
        what = "W_init" if init else "W"
        ds = shards.virtual(self.f, f"model/{what}", parts, self.shape, self.dtype)
        self.names[what] = {s.name for s in parts}
        if not init:
            ds.attrs["round"] = rounds_done
            self.done = rounds_done
        self.f.flush()

    def log_checkpoint(self, parts: list[Shard], state: dict) -> None:
        """The manifest that makes the ranks' shards `parts` one checkpoint, with `state`'s round,
        loss_init and histories; then /model/W points at it, and the previous checkpoint's shards
        go (once this file has replaced any run file of the launch before)."""
        self.write_pending()
        rounds_done = int(state["round"])
        if self.header.segments:
            self.header.segments[-1]["last_round"] = rounds_done
            self.f.attrs["segments"] = json.dumps(self.header.segments)
        write_manifest(self.folder, self.header, parts, state, (self.shape, self.dtype))
        self.names["checkpoint"] = {s.name for s in parts}
        self.log_weights(parts, rounds_done)   # also records the round as the newest on disk
        if self.published:
            self._collect()

    def _collect(self) -> None:
        """The shards no file of this run reads any more (shards.collect) go."""
        launch = shards.launch_of(min(self.names.get("W_init", {""})))
        shards.collect(self.folder, set().union(*self.names.values()), launch, self.done)

    def publish(self) -> None:
        """run.h5.tmp becomes run.h5: from here on it holds all that the run file it replaces held."""
        self.write_pending()
        os.replace(self.tmp, self.path)  # the open handle writes on under the new name
        _fsync(self.folder)
        self.published = True
        self._collect()   # the launch before's, no longer read

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
            if "W_init" in getattr(self, "names", {}):   # this launch's shards: no file reads them
                shards.discard(self.folder, shards.launch_of(min(self.names["W_init"])))


def _fsync(path: str) -> None:
    shards.fsync(path)


_replace = os.replace   # the checkpoint's rename (a test kills the writer here)


def write_manifest(folder: str, header: Header, parts: list[Shard], state: dict, like: tuple) -> None:
    """`<folder>/checkpoint.h5`, replaced whole: its attrs, W as a virtual dataset over the shards
    `parts` (in row order) with their bounds, names and chunks' digests, and the histories (state:
    round, loss_init, and "metrics", "evals": {column: values}); `like`: W's shape and dtype.
    Written to checkpoint.h5.tmp, fsynced and renamed, so a crash at any instant leaves the old or
    the new one whole; a failed write (a full disk) removes the torn temporary file."""
    path = os.path.join(folder, CHECKPOINT)
    tmp = path + ".tmp"
    try:
        with h5py.File(fresh(tmp), "w-", locking=False, userblock_size=integrity.USERBLOCK) as f:  # exclusive
            f.attrs.update({"format": CHECKPOINT_FORMAT, "mpisub_version": __version__, "code_hash": code_hash(),
                            "config": header.config_json, "config_given": header.given_json or header.config_json,
                            "round": int(state["round"]), "loss_init": float(state["loss_init"]),
                            "data_sha256": header.data_sha256, "created": header.created,
                            "segments": json.dumps(header.segments)})
            shards.virtual(f, "W", parts, *like)
            f["W_shards"] = np.array([parts[0].lo] + [s.hi for s in parts], dtype=np.int64)
            f["W_shard_names"] = np.array([s.name.encode() for s in parts])
            f["W_sha256"] = np.concatenate([s.digests for s in parts]).reshape(-1, 32)
            f["W_sha256"].attrs["chunk_rows"] = integrity.chunk_rows(like[0][1], np.dtype(like[1]).itemsize)
            _histories(f, state)
            f.attrs["checksum"] = integrity.content_digest(f)
        integrity.seal(tmp)   # its bytes are checked before HDF5 parses them on resume
        _fsync(tmp)
        _replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync(folder)  # the rename itself reaches the disk


def _histories(f: h5py.File, state: dict) -> None:
    """The checkpoint's metrics and eval tables, by the schema; a column not given is NaN (0)."""
    for table, key in (("metrics", "metrics"), ("eval", "evals")):
        given = state.get(key) or {}
        rows = len(given.get("round", []))
        for name, dtype in schema.columns(table).items():
            empty = np.zeros(rows) if np.dtype(dtype).kind in "iu" else np.full(rows, np.nan)
            f[f"{table}/{name}"] = np.asarray(given.get(name, empty), dtype=dtype)


def write_checkpoint(folder: str, *, W: np.ndarray, rounds_done: int, loss_init: float, config_json: str,
                     data_sha256: str = "", created: str = "", **histories: dict[str, Any]) -> None:
    """A whole checkpoint of one shard from one array W (tests, tools; a run's ranks write a shard
    each), and the shards of the checkpoint it replaced removed. `histories`: metrics= and evals=
    ({column: values})."""
    header = Header(config_json, data_sha256=data_sha256, created=created)
    part = shards.write(folder, shards.name("W", secrets.token_hex(4), 0, 1, rounds_done), W, 0)
    write_manifest(folder, header, [part], dict(histories, round=rounds_done, loss_init=loss_init),
                   (W.shape, W.dtype))
    shards.collect(folder, {part.name}, shards.launch_of(part.name), rounds_done + 1)
