"""A checkpoint's checksums (docs/design.md, "The checkpoint"): sha256 of W by chunks of rows (each
rank verifies the chunks of its own rows when it resumes, no rank reads all of W), and one sha256
of everything else, the chunks' digests included, so a checkpoint that was damaged or edited after
it was written is refused before anything in its folder is touched. h5py and hashlib only."""
from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # types only: never imported at run time
    from typing import Any

CHUNK_BYTES = 2**20     # W's rows are hashed in chunks of about this many bytes
USERBLOCK = 512         # the seal's room at the start of a file mpisub writes (HDF5 skips a user block)
SEAL = b"mpisub sealed sha256 "
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def seal(path: str) -> None:
    """Writes into the user block of the closed HDF5 file at `path` (made with userblock_size =
    USERBLOCK) the sha256 of everything after it, so a reader can check the file's bytes before
    HDF5 parses them (HDF5 can loop for ever on a damaged file)."""
    h = hashlib.sha256()
    with open(path, "r+b") as f:
        f.seek(USERBLOCK)
        for block in iter(lambda: f.read(2**22), b""):
            h.update(block)
        f.seek(0)
        f.write(SEAL + h.hexdigest().encode())


def sealed(path: str) -> bool | None:
    """True when the file's seal matches its bytes, False when it does not (damaged: a seal, or an
    HDF5 file behind a user block, that does not match), None when it has no seal: an HDF5 file
    from before seals (format 4 and older), or no HDF5 file at all (HDF5 then says so)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        head = f.read(USERBLOCK)
        if head.startswith(HDF5_SIGNATURE):
            return None
        body = f.read(len(HDF5_SIGNATURE))
        if not head.startswith(SEAL) and body != HDF5_SIGNATURE:
            return None
        h.update(body)
        for block in iter(lambda: f.read(2**22), b""):
            h.update(block)
    return head.startswith(SEAL) and head[len(SEAL): len(SEAL) + 64] == h.hexdigest().encode()


def chunk_rows(d: int, itemsize: int) -> int:
    return max(1, CHUNK_BYTES // max(1, d * itemsize))


def chunk_bounds(shard_bounds: list[int], rows: int) -> list[tuple[int, int]]:
    """The rows [a, b) of each digest of a matrix stored in shards that start at shard_bounds[:-1]
    (the last bound is its row count): chunks of `rows` rows counted from each shard's first row,
    each shard's last one shorter. One shard, [0, m]: format 4's chunks."""
    return [(a, min(a + rows, hi)) for lo, hi in zip(shard_bounds[:-1], shard_bounds[1:])
            for a in range(lo, hi, rows)]


class RowHasher:
    """The digests of W's chunks of `rows` rows, from its rows given in order, block by block."""

    def __init__(self, rows: int):
        self.rows, self.filled, self.h = rows, 0, hashlib.sha256()
        self.digests: list[np.ndarray] = []

    def update(self, block: np.ndarray) -> None:
        at = 0
        while at < len(block):
            take = min(self.rows - self.filled, len(block) - at)
            self.h.update(np.ascontiguousarray(block[at: at + take]).tobytes())
            self.filled, at = self.filled + take, at + take
            if self.filled == self.rows:
                self._close_chunk()

    def _close_chunk(self) -> None:
        self.digests.append(np.frombuffer(self.h.digest(), dtype=np.uint8))
        self.h, self.filled = hashlib.sha256(), 0

    def finish(self) -> np.ndarray:
        """(chunks x 32) uint8: the digests, the last (shorter) chunk's included."""
        if self.filled:
            self._close_chunk()
        return np.array(self.digests, dtype=np.uint8).reshape(-1, 32)


def chunk_digest(rows: np.ndarray) -> np.ndarray:
    return np.frombuffer(hashlib.sha256(np.ascontiguousarray(rows).tobytes()).digest(), dtype=np.uint8)


def _plain(value):
    """An HDF5 attribute's value as JSON can write it."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def content_digest(f: Any) -> str:
    """sha256 of an open checkpoint's attributes (but `checksum`) and datasets (but W, which
    W_sha256 stands for): names, types, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(f.attrs):
        if name != "checksum":
            value = f.attrs[name]
            h.update(json.dumps([name, type(value).__name__, _plain(value)]).encode())
    names = []
    f.visit(lambda name: names.append(name) if hasattr(f[name], "dtype") and name != "W" else None)
    for name in sorted(names):
        data = f[name]
        h.update(json.dumps([name, str(data.dtype), list(data.shape)]).encode())
        h.update(np.ascontiguousarray(data[()]).tobytes())
    return h.hexdigest()
