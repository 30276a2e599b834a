"""The run file `<output.dir>/run.h5` and the checkpoint `<output.dir>/checkpoint.h5`, written by
rank 0 alone. The run file's layout is a contract (README):

  attrs   config (resolved config, JSON), mpisub_version, ranks, mpi_library, status, created,
          peak_rss_mb (per rank, at the end)
  /data/X, /data/Y            the built-in training data (a data file: attrs source, sha256 of /data)
  /model/a, /model/W_init     fixed output weights, initial input weights
  /model/W                    latest aggregated input weights (attr `round`: rounds done)
  /metrics/<name>             one row per round, resizable: what a round has for free: round,
                              sub_loss, seconds_compute, seconds_comm, seconds_wall, bytes_comm,
                              seconds_local, seconds_loss (parts of seconds_compute),
                              bytes_recv; attr `loss_init`: the loss at W_init
  /eval/<name>                one row per evaluation of the full network (round 0, every
                              output.eval_every rounds, every logged round, the last): round, loss
                              (before mpisub 0.2: /metrics/loss, every round)
  /masks                      uint8 (rounds x p x m), only with output.record_masks
  /theory/lambda0, /theory/H  the data's NTK Gram matrix's smallest eigenvalue (n <= theory.max_n)
                              and the matrix (n <= theory.store_H_max_n)

The run file gets new metrics rows at least every WRITE_SECONDS and is held without an HDF5 file
lock, so other processes (h5py, h5dump) can read it while training runs. It is built as run.h5.tmp
and renamed to run.h5 only once it holds everything the run had (its start, or a resumed run's
rows): a resume or restart that fails early never destroys the run file it would have replaced.
The checkpoint is the run's source of truth: W, rounds done, the metrics so far and the config,
replaced atomically (temp file, fsync, rename), so a crash at any instant leaves the previous one
loadable; `--resume` rebuilds run.h5 from it. Masks and minibatches need no saved random state:
they are functions of (seed, round, subnet).

One job writes a run folder at a time: `FolderLock` holds an flock on <folder>/mpisub.lock for the
job's lifetime (docs/design.md, "One writer").
"""
import contextlib
import datetime
import fcntl
import functools
import hashlib
import json
import os
import socket
import time

import h5py
import numpy as np

from .errors import UserError, cause

METRICS = {
    "round": np.int64,
    "sub_loss": np.float64,
    "seconds_compute": np.float64,
    "seconds_comm": np.float64,
    "seconds_wall": np.float64,
    "bytes_comm": np.int64,
    "seconds_local": np.float64,
    "seconds_loss": np.float64,
    "bytes_recv": np.int64,
}
EVAL = {
    "round": np.int64,
    "loss": np.float64,
    "test_loss": np.float64,   # NaN without held-out data
    "train_acc": np.float64,   # NaN unless data.task = "classification"
    "test_acc": np.float64,
    # lazy-regime diagnostics (Du et al. 2019, section 5): how far W moved from W_init
    "dw_max": np.float64,      # max_r ||w_r - w_r(0)||
    "dw_rel": np.float64,      # ||W - W0||_F / ||W0||_F
    "flips": np.float64,       # the fraction of activation patterns 1{<w_r, x_i> > 0} unlike at W0
    "lambda_min": np.float64,  # lambda_min of H(W_k) (n <= theory.gram_max_n; else NaN)
}
TABLES = {"metrics": METRICS, "eval": EVAL}
FILENAME = "run.h5"
CHECKPOINT = "checkpoint.h5"
CHECKPOINT_FORMAT = 3   # bump when the checkpoint's layout changes (2: metrics bytes_recv; 3: eval rows)
WRITE_SECONDS = 1.0     # metrics rows reach run.h5 at most this late (the first at once)


LOCKFILE = "mpisub.lock"


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

    def __init__(self, folder: str, wait: float = 0.0, log=None):
        self.path, self.fd = os.path.join(folder, LOCKFILE), None
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise UserError(f"output.dir {folder!r}: cannot create it ({cause(e)}); choose a writable "
                            f"output.dir") from None
        deadline, said = time.monotonic() + wait, False
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise UserError(f"output.dir {folder!r}: cannot create {LOCKFILE} there ({e.strerror}); "
                                f"choose a writable output.dir") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise UserError(f"output.dir {folder!r} is in use by another mpisub job ({holder}); wait "
                                    f"for it to end or stop it, or choose another output.dir") from None
                if log and not said:
                    log(f"waiting up to {wait:.0f} s for the job writing {folder!r} to end ({holder}) ...")
                    said = True
                time.sleep(0.2)
                continue
            except OSError as e:  # a filesystem without flock (NFS without lockd, Lustre without -o flock)
                os.close(fd)
                raise UserError(f"output.dir {folder!r}: cannot lock {LOCKFILE} ({e.strerror}); this "
                                f"filesystem does not support file locks: choose an output.dir on one that does "
                                f"(Lustre: mounted with -o flock)") from None
            try:  # the previous holder may have removed the file after we opened it: lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        job = os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()}, PID {os.getpid()}, since {started}"
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


class RunFile:
    def __init__(self, folder: str, *, config_json: str, attrs: dict, overwrite: bool,
                 subnets: int, width: int, record_masks: bool, data_sha256: str = "", created: str = "",
                 segment: dict | None = None, earlier_segments: list | None = None, events=None):
        """`segment`: this launch (ranks, host, versions, first round), appended to the run's
        `earlier_segments` (from the checkpoint it resumes) in the attr `segments`. `events`: a
        tboard.Events that gets every row too."""
        self.folder, self.config_json, self.data_sha256, self.events = folder, config_json, data_sha256, events
        self.segments = list(earlier_segments or []) + ([dict(segment, last_round=segment["first_round"])]
                                                         if segment else [])
        self.path = os.path.join(folder, FILENAME)
        self.tmp, self.published = self.path + ".tmp", False
        check_output_dir(folder, overwrite)
        try:
            # no file lock: readers may open the file while training runs
            self.f = h5py.File(self.tmp, "w", locking=False)
            self._start(attrs, config_json, created, subnets, width, record_masks)
        except OSError as e:
            self.close("failed")
            raise UserError(f"output.dir {folder!r}: cannot write {FILENAME} there ({cause(e)}); "
                            f"choose a writable output.dir with free space") from None

    def _start(self, attrs, config_json, created, subnets, width, record_masks) -> None:
        self.f.attrs.update(attrs)
        self.f.attrs["config"] = config_json
        self.f.attrs["status"] = "running"
        self.created = created or datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        self.f.attrs["created"] = self.created
        self.f.attrs["segments"] = json.dumps(self.segments)
        for table, columns in TABLES.items():
            g = self.f.create_group(table)
            for name, dtype in columns.items():
                g.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(1024,))
        if record_masks:
            self.f.create_dataset("masks", shape=(0, subnets, width), maxshape=(None, subnets, width),
                                  dtype=np.uint8, chunks=(1, subnets, width))
        self.rows, self.pending, self.written_at = 0, [], 0.0
        self.eval_rows, self.eval_pending = 0, []

    def write_start(self, X, Y, a, shape: tuple, dtype, source: str = "synthetic") -> None:
        """The data (or the data file's name), a, and room for W_init and W, which `save` fills
        block by block (no process holds all of W)."""
        if self.data_sha256:  # a user's file: say which one, rather than copy it
            g = self.f.create_group("data")
            g.attrs["source"], g.attrs["sha256"] = source, self.data_sha256
        else:
            self.f["data/X"] = X
            self.f["data/Y"] = Y
        self.f["model/a"] = a
        self.f.create_dataset("model/W_init", shape=shape, dtype=dtype)
        self.f.create_dataset("model/W", shape=shape, dtype=dtype)
        self.f["model/W"].attrs["round"] = 0
        self.f.flush()

    def write_theory(self, lambda0: float, H=None) -> None:
        self.f["theory/lambda0"] = lambda0
        if H is not None:
            self.f["theory/H"] = H

    def write_loss_init(self, loss: float) -> None:
        self.f["metrics"].attrs["loss_init"] = loss

    def append(self, metrics: dict, masks=None) -> None:
        """One row per round; masks (p x m) when recorded. Rows reach the file at most
        WRITE_SECONDS late (and at every weights write, checkpoint and close): writing and
        flushing every round would cost more than a small round itself."""
        self.pending.append((metrics, masks))
        if self.events is not None:
            self.events.scalars(int(metrics["round"]), {k: v for k, v in metrics.items() if k != "round"})
        if time.monotonic() - self.written_at >= WRITE_SECONDS:
            self.write_pending()

    def append_eval(self, row: dict) -> None:
        """One row per evaluation of the full network; written with the next metrics rows."""
        self.eval_pending.append(row)
        if self.events is not None:
            self.events.scalars(int(row["round"]), {k: v for k, v in row.items() if k != "round"})

    def write_pending(self) -> None:
        if self.eval_pending:
            i, k = self.eval_rows, len(self.eval_pending)
            for name in EVAL:
                ds = self.f["eval"][name]
                ds.resize((i + k,))
                ds[i:] = [row[name] for row in self.eval_pending]
            self.eval_rows, self.eval_pending = i + k, []
        if self.pending:
            i, k = self.rows, len(self.pending)
            for name in METRICS:
                ds = self.f["metrics"][name]
                ds.resize((i + k,))
                ds[i:] = [row[name] for row, _ in self.pending]
            if self.pending[0][1] is not None:
                ds = self.f["masks"]
                ds.resize((i + k,) + ds.shape[1:])
                ds[i:] = np.stack([M for _, M in self.pending])
            self.rows, self.pending = i + k, []
        self.f.flush()  # what is written stays on disk if the job is killed
        if self.events is not None:
            self.events.flush()
        self.written_at = time.monotonic()

    def write_peak_memory(self, megabytes: list) -> None:
        self.f.attrs["peak_rss_mb"] = np.asarray(megabytes, dtype=np.float64)

    def save(self, blocks, rounds_done: int, *, init: bool = False, weights: bool = True,
             checkpoint: dict | None = None) -> None:
        """One pass over W's row blocks `(lo, rows)` (rank 0 receives them one at a time): into
        /model/W_init (init), /model/W (weights) and a new checkpoint (`checkpoint`: its metrics
        and loss_init), which replaces the previous one only once it is whole."""
        self.write_pending()
        if self.segments:
            self.segments[-1]["last_round"] = rounds_done
            self.f.attrs["segments"] = json.dumps(self.segments)
        W = self.f["model/W"]
        ck = _Checkpoint(self.folder, W.shape, W.dtype, rounds_done, config_json=self.config_json,
                         data_sha256=self.data_sha256, created=self.created, segments=self.segments,
                         **checkpoint) if checkpoint else None
        try:
            for lo, rows in blocks:
                hi = lo + len(rows)
                if init:
                    self.f["model/W_init"][lo:hi] = rows
                if weights:
                    W[lo:hi] = rows
                if ck:
                    ck.f["W"][lo:hi] = rows
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

    def close(self, status: str) -> None:
        """Never raises (it runs while another error is on its way out, e.g. a full disk). An
        unpublished file is dropped, so the run file it would have replaced stays as it was."""
        try:
            if self.published:
                self.write_pending()
                self.f.attrs["status"] = status
                if self.segments:
                    self.segments[-1]["ended"] = status
                    self.f.attrs["segments"] = json.dumps(self.segments)
        except Exception:  # noqa: BLE001 (the status is a courtesy; the checkpoint is the truth)
            pass
        try:
            self.f.close()
        except Exception:  # noqa: BLE001
            pass
        if self.events is not None:
            with contextlib.suppress(Exception):
                self.events.close()
        if not self.published:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Checkpoint:
    """A checkpoint being written: `<folder>/checkpoint.h5.tmp`, renamed over checkpoint.h5 by
    commit() after an fsync (a crash at any instant leaves the old or the new one, whole);
    abort() removes the torn temporary file (a full disk, a quota)."""

    def __init__(self, folder: str, shape, dtype, rounds_done: int, *, metrics: dict, loss_init: float,
                 config_json: str, data_sha256: str, created: str, segments: list | None = None,
                 evals: dict | None = None):
        from . import __version__

        self.folder = folder
        self.path = os.path.join(folder, CHECKPOINT)
        self.tmp = self.path + ".tmp"
        try:
            self.f = h5py.File(self.tmp, "w", locking=False)
            self.f.attrs.update({"format": CHECKPOINT_FORMAT, "mpisub_version": __version__,
                                 "code_hash": code_hash(), "config": config_json,
                                 "round": rounds_done, "loss_init": loss_init, "data_sha256": data_sha256,
                                 "created": created, "segments": json.dumps(segments or [])})
            self.f.create_dataset("W", shape=shape, dtype=dtype)
            for name, kind in METRICS.items():
                self.f[f"metrics/{name}"] = np.asarray(metrics.get(name, []), dtype=kind)
            for name, kind in EVAL.items():
                self.f[f"eval/{name}"] = np.asarray((evals or {}).get(name, []), dtype=kind)
        except BaseException:
            self.abort()
            raise

    def commit(self) -> None:
        try:
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


def write_checkpoint(folder: str, *, W, rounds_done: int, metrics: dict, loss_init: float, evals: dict | None = None,
                     config_json: str, data_sha256: str, created: str) -> None:
    """A whole checkpoint from one array W (tests, tools); a run streams its blocks through RunFile.save."""
    ck = _Checkpoint(folder, W.shape, W.dtype, rounds_done, metrics=metrics, loss_init=loss_init, evals=evals,
                     config_json=config_json, data_sha256=data_sha256, created=created)
    try:
        ck.f["W"][...] = W
    except BaseException:
        ck.abort()
        raise
    ck.commit()


# the modules whose code decides a run's numbers: a checkpoint written by other code of these may
# not continue bit for bit, even under the same version number
RESULT_MODULES = ("config", "data", "masks", "kernels", "shard", "comm", "train")


@functools.cache
def code_hash() -> str:
    """What changes with the code that computes a run: sha256 of RESULT_MODULES' sources."""
    h = hashlib.sha256()
    for name in RESULT_MODULES:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py"), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


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
            ck["metrics"] = {name: f[f"metrics/{name}"][()] for name in METRICS}
            ck["eval"] = {name: f[f"eval/{name}"][()] for name in EVAL}
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
