"""The run folder: its default name, the check that it holds no other run, and the one-writer lock
(docs/design.md, section 6, "One writer"). No HDF5 here: the files inside are the store's."""
from __future__ import annotations

import datetime
import fcntl
import os
import shutil
import socket
import stat
import time
from typing import TYPE_CHECKING

import numpy as np

from mpisub._util.errors import UserError, cause
from mpisub.io import schema

if TYPE_CHECKING:  # types only: never imported at run time
    from collections.abc import Callable

    from mpisub.config import Config

FILENAME = "run.h5"
CHECKPOINT = "checkpoint.h5"
LOCKFILE = "mpisub.lock"
LOCK_BYTES = 4096   # a lock file mpisub made names its holder in one short line
SLACK = 2**20        # bytes of HDF5's own structures in a file


def fresh(path: str) -> str:
    """`path`, free for a new file that mpisub makes in this run: a stale one (a killed job's
    temporary file, or a link someone left) is unlinked, never followed; the caller then creates
    the file exclusively (O_EXCL, or h5py's "w-"), so it writes nothing it did not make."""
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            raise UserError(f"{path!r} is a folder where mpisub keeps a file; remove it")
        os.unlink(path)
    return path


def refuse_link(path: str, what: str) -> None:
    """A UserError when `path` is a symbolic link: mpisub follows no link it did not make."""
    if os.path.islink(path):
        raise UserError(f"{path!r} is a symbolic link (to {os.readlink(path)!r}); mpisub follows no link it did "
                        f"not make into a run folder: remove the link or choose another {what}")


def new_run_dir(root: str = "runs") -> str:
    """A new, empty runs/<timestamp> folder (runs/<timestamp>-array<job>_<task> in a Slurm job
    array), with a suffix if a run took that name first (created exclusively, so two runs started
    in the same second never share one)."""
    name = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    if os.environ.get("SLURM_ARRAY_TASK_ID"):
        name += f"-array{os.environ.get('SLURM_ARRAY_JOB_ID', '')}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    base = os.path.join(root, name)
    os.makedirs(root, exist_ok=True)
    for i in range(1, 10**6):
        path = base if i == 1 else f"{base}-{i}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise UserError(f"cannot find a free folder name under {root!r}; set output.dir")


def check_output_dir(folder: str, overwrite: bool) -> None:
    """Refuses a folder that is a file, or that holds a run (unless overwrite); writes nothing."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"output.dir {folder!r} is a file, not a folder; choose another output.dir")
    held = [name for name in (FILENAME, CHECKPOINT) if os.path.exists(os.path.join(folder, name))]
    if held and not overwrite:
        raise UserError(f"output.dir {folder!r} already holds a run ({held[0]}); choose another "
                        f"output.dir, continue it with --resume {folder}, or set output.overwrite = true "
                        f"to replace it")


class FolderLock:
    """The one-writer lock of a run folder: an exclusive flock on <folder>/mpisub.lock, held until
    release() or the process's death (the OS drops it: a killed job leaves no stale lock). The
    file names its holder (host, PID, start time) for the message that refuses a second writer.
    A holder that is still shutting down (a requeued Slurm job's previous attempt) is waited for
    up to `wait` seconds."""

    def __init__(self, folder: str, wait: float = 0.0, log: Callable[[str], None] | None = None):
        self.path = os.path.join(folder, LOCKFILE)
        self.fd: int | None = None
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise UserError(f"output.dir {folder!r}: cannot create it ({cause(e)}); choose a writable "
                            f"output.dir") from None
        deadline, said = time.monotonic() + wait, False
        while True:
            fd = self._open(folder)
            holder = self._try_lock(fd, folder)
            if holder is None and self._still_there(fd):
                break
            os.close(fd)
            if holder is None:
                continue        # the previous holder removed the file after we opened it: lock the new one
            if time.monotonic() >= deadline:
                raise UserError(f"output.dir {folder!r} is in use by another mpisub job ({holder}); wait "
                                f"for it to end or stop it, or choose another output.dir")
            if log and not said:
                log(f"waiting up to {wait:.0f} s for the job writing {folder!r} to end ({holder}) ...")
                said = True
            time.sleep(0.2)
        self.fd = fd
        self._name_holder()

    def _open(self, folder: str) -> int:
        """The lock file, never through a link, and only a file mpisub made (a regular file of one
        short line with one name): it is truncated when taken."""
        refuse_link(self.path, "output.dir")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise UserError(f"output.dir {folder!r}: cannot create {LOCKFILE} there ({e.strerror}); "
                            f"choose a writable output.dir") from None
        st = os.fstat(fd)
        what = "a special file" if not stat.S_ISREG(st.st_mode) else "a hard link" if st.st_nlink != 1 else \
            "too large" if st.st_size > LOCK_BYTES else None
        if what:
            os.close(fd)
            raise UserError(f"output.dir {folder!r}: {LOCKFILE} there is not a lock file mpisub made ({what}); "
                            f"mpisub truncates only its own lock files: move it away")
        return fd

    def _try_lock(self, fd: int, folder: str) -> str | None:
        """None when locked, else who holds the lock."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            return os.pread(fd, 300, 0).decode(errors="replace").strip() or "unknown"
        except OSError as e:  # a filesystem without flock (NFS without lockd, Lustre without -o flock)
            os.close(fd)
            raise UserError(f"output.dir {folder!r}: cannot lock {LOCKFILE} ({e.strerror}); this "
                            f"filesystem does not support file locks: choose an output.dir on one that does "
                            f"(Lustre: mounted with -o flock)") from None

    def _still_there(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def _name_holder(self) -> None:
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        job = os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID")
        assert self.fd is not None  # held
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"host {socket.gethostname()}, PID {os.getpid()}, since {started}"
                           f"{f', job {job}' if job else ''}\n".encode(), 0)

    def release(self) -> None:
        """Unlocks and removes the lock file (a waiter that opened it re-checks the inode)."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def disk_needed(cfg: Config, resuming: bool = False) -> dict:
    """Bytes the run folder will hold at its fullest: run.h5 with W_init's shards (its W is the
    checkpoint's), and two checkpoints with their shards while one replaces the other (and, on
    resume, the old run.h5 until the new one replaces it)."""
    s, m, d, n, c = np.dtype(cfg.model.dtype).itemsize, cfg.model.width, cfg.data.d, cfg.data.n, cfg.data.outputs
    rounds, p = cfg.train.rounds, cfg.masks.subnets
    row_bytes = sum(np.dtype(c.dtype).itemsize for c in schema.COLUMNS)   # a round's row, and at most one eval row
    run = (m * d * s + m * c * s + rounds * row_bytes + SLACK
           + (n * (d + c) * s if cfg.data.source == "synthetic" else 0)
           + (rounds * p * m if cfg.output.record_masks else 0)
           + (n * n * 8 if n <= min(cfg.theory.max_n, cfg.theory.store_H_max_n) else 0))
    checkpoint = m * d * s + rounds * row_bytes + SLACK
    return {"run.h5": run * (2 if resuming else 1), "checkpoints": 2 * checkpoint}


def check_disk(cfg: Config, folder: str, resuming: bool = False) -> None:
    need = disk_needed(cfg, resuming)
    total = sum(need.values())
    where = os.path.abspath(folder)
    while not os.path.exists(where):
        where = os.path.dirname(where)
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    if total > free:
        mb = 2**20
        split = ", ".join(f"{name} {v / mb:.1f}" for name, v in need.items())
        raise UserError(f"output.dir {folder!r}: the run needs about {total / mb:.1f} MiB on disk ({split} MiB) "
                        f"but {free / mb:.1f} MiB is free there; free space or choose another output.dir")
