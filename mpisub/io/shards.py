"""Each rank's own rows of W in its own file, a shard (after PyTorch's distributed checkpoint: every
rank writes its shard, and a manifest written last makes them whole;
docs/design.md, "The checkpoint"). No rank writes, hashes or holds another rank's rows.

A shard is `<output.dir>/shards/<what>.<launch>[.r<round>].k<rank>of<ranks>.h5` with one dataset `W`
(its rows) and attrs `lo` and `hi` (its first row and the one past its last in the whole matrix).
`<launch>` is a token drawn once per launch, so no launch ever writes over a file that another
launch's run file or checkpoint still reads. It is written as `<name>.tmp`, fsynced and renamed:
a shard on disk is whole. The checkpoint's manifest (store) and the run file's `/model/W` and
`/model/W_init` are HDF5 virtual datasets over shards (`virtual`), so h5py, h5dump and mpisub-inspect see one
matrix. Writer runs one shard write at a time in a background thread, from a copy of the rows, while
the next rounds train. HDF5, hashlib and numpy only: no MPI."""
from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass

import h5py
import numpy as np

from mpisub.io import integrity
from mpisub.io.run_folder import fresh

FOLDER = "shards"
SLICE_BYTES = 2**22   # rows go to HDF5 this many bytes at a time: h5py holds the GIL while it writes
# a shard's name as mpisub writes it: nothing else is read through a checkpoint or removed as garbage
NAME = re.compile(r"shards/(?:W|W_init)\.(?P<launch>[0-9a-f]{8})(?:\.r(?P<round>[0-9]{8}))?\.k[0-9]+of[0-9]+\.h5")


@dataclass(frozen=True)
class Shard:
    """One rank's rows lo:hi of a matrix, in the file `name` (relative to the run folder), with the
    sha256 of each chunk of `integrity.chunk_rows` rows counted from lo (the last one shorter)."""
    name: str
    lo: int
    hi: int
    digests: np.ndarray


def name(what: str, launch: str, rank: int, ranks: int, rounds_done: int | None = None) -> str:
    """A shard's file name, relative to the run folder: `what` is W or W_init; W's carry the round."""
    at = "" if rounds_done is None else f".r{rounds_done:08d}"
    return f"{FOLDER}/{what}.{launch}{at}.k{rank}of{ranks}.h5"


def write(folder: str, shard_name: str, rows: np.ndarray, lo: int) -> Shard:
    """Rows lo:lo + len(rows) of a matrix into the shard `shard_name` under `folder`, whole or not at
    all: written to a temporary file, fsynced, renamed. Returns the shard with its chunks' digests.
    Raises OSError or RuntimeError (h5py's) when the disk refuses the write."""
    path = os.path.join(folder, shard_name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = fresh(path + ".tmp")
    hasher = integrity.RowHasher(integrity.chunk_rows(rows.shape[1], rows.dtype.itemsize))
    try:
        with h5py.File(tmp, "w-", locking=False, userblock_size=integrity.USERBLOCK) as f:   # exclusive
            ds = f.create_dataset("W", shape=rows.shape, dtype=rows.dtype)
            ds.attrs["lo"], ds.attrs["hi"] = lo, lo + len(rows)
            step = max(1, SLICE_BYTES // max(1, rows[:1].nbytes))
            for a in range(0, len(rows), step):
                ds[a:a + step] = rows[a:a + step]
                hasher.update(rows[a:a + step])
        integrity.seal(tmp)   # its bytes are checked before HDF5 reads them back
        fsync(tmp)
        os.replace(tmp, path)
        fsync(os.path.dirname(path))   # the rename itself reaches the disk
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Shard(shard_name, lo, lo + len(rows), hasher.finish())


class Writer:
    """This rank's shard write in the background: one at a time, from a copy of the rows (the
    round loop goes on changing W). `wait` gives the Shard, or the error that stopped it."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.result: Shard | Exception | None = None

    def start(self, folder: str, shard_name: str, rows: np.ndarray, lo: int, copy: bool = True) -> None:
        """Starts writing; `copy` False when the caller waits for it (the rows do not change meanwhile)."""
        rows_now = np.array(rows) if copy else rows   # the rows as they are now

        def work() -> None:
            try:
                self.result = write(folder, shard_name, rows_now, lo)
            except (OSError, RuntimeError) as e:   # a full disk, a quota: reported, not raised here
                self.result = e
        self.wait()
        self.thread = threading.Thread(target=work, name="mpisub-shard", daemon=True)
        self.thread.start()

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def wait(self) -> Shard | Exception | None:
        """Waits for the write in flight; its shard or error (None when there was none)."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        result, self.result = self.result, None
        return result


def virtual(f: h5py.File, path: str, shards: list[Shard], shape: tuple, dtype: np.dtype) -> h5py.Dataset:
    """The dataset `path` of the open file `f` (replacing any there) as a virtual dataset over the
    shards, whose names are relative to f's folder (HDF5 finds them there). A missing shard reads
    as NaN, not as zeros."""
    layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
    for s in shards:
        layout[s.lo:s.hi] = h5py.VirtualSource(s.name, "W", shape=(s.hi - s.lo, shape[1]), dtype=dtype)
    if path in f:
        del f[path]
    return f.create_virtual_dataset(path, layout, fillvalue=np.nan)


def sources(ds: h5py.Dataset) -> list[str]:
    """The files a dataset's rows live in: its shards for a virtual dataset, none for a plain one."""
    return [s.file_name for s in ds.virtual_sources()] if ds.is_virtual else []


def collect(folder: str, keep: set[str], launch: str, done: int) -> None:
    """Removes the shards (and torn temporary shards) under `folder` that no file reads: not in
    `keep`, and either of another launch (the folder's lock says it has ended) or of this `launch`
    and a round before `done`, the newest checkpoint on disk. A newer shard of this launch stays:
    another rank may be writing it right now."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(os.path.join(folder, FOLDER)):
            shard_name = f"{FOLDER}/{entry.name}"
            found = NAME.fullmatch(shard_name.removesuffix(".tmp"))
            if found and shard_name not in keep and (found["launch"] != launch or int(found["round"] or 0) < done):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def discard(folder: str, launch: str) -> None:
    """Removes every shard of `launch` (a launch that ended before its run file replaced the one
    before: no file reads them), and the shards folder if nothing else is left in it."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(os.path.join(folder, FOLDER)):
            found = NAME.fullmatch(f"{FOLDER}/{entry.name}".removesuffix(".tmp"))
            if found and found["launch"] == launch:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        os.rmdir(os.path.join(folder, FOLDER))   # only when empty


def launch_of(shard_name: str) -> str:
    """The launch token in a shard's name."""
    found = NAME.fullmatch(shard_name)
    return found["launch"] if found else ""


def fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
