"""Reading back the files mpisub wrote, as untrusted input: the run file (read_run; the notebook
API in analysis.py builds on it) and the checkpoint a resume continues from (read_checkpoint,
read_checkpoint_W). Each is checked against its layout (every attr and dataset with its type and
shape, and the relations between them) and a checkpoint against its checksums; whatever is wrong
is one UserError naming the file and what is wrong, before anything is written. HDF5 and numpy
only: no MPI, no numba."""
from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING

import h5py
import numpy as np

from mpisub import config
from mpisub._util.errors import UserError, cause
from mpisub._util.provenance import __version__, code_hash
from mpisub.io import integrity, schema, shards
from mpisub.io.run_folder import CHECKPOINT, FILENAME
from mpisub.io.schema import CHECKPOINT_FORMAT, CHECKPOINT_FORMATS
from mpisub.io.shards import Shard

if TYPE_CHECKING:  # types only: never imported at run time
    from typing import Any



class CheckedFile:
    """Checks of one open file; `bad(what)` is the UserError for it."""

    def __init__(self, f: Any, what: str):
        self.f, self.what = f, what

    def bad(self, problem: str) -> UserError:
        return UserError(f"{self.what}: {problem}")

    def attr(self, name: str, kind: Any, required: bool = True) -> Any:
        """An attribute of type `kind` (int, float, str, "json list", "json dict"); None if absent
        and not required."""
        if name not in self.f.attrs:
            if required:
                raise self.bad(f"attr {name!r} is missing")
            return None
        value = self.f.attrs[name]
        value = value.decode(errors="replace") if isinstance(value, bytes) else value
        if isinstance(kind, str):
            try:
                parsed = json.loads(value) if isinstance(value, str) else None
            except ValueError:
                parsed = None
            if not isinstance(parsed, list if kind == "json list" else dict):
                raise self.bad(f"attr {name!r} is not a {kind}")
            return parsed
        ok: Any = {int: np.integer, float: (np.floating, np.integer), str: str}[kind]
        if isinstance(value, np.ndarray) or not isinstance(value, (ok, kind)) or isinstance(value, (bool, np.bool_)):
            raise self.bad(f"attr {name!r} is not {'a string' if kind is str else f'one {kind.__name__}'}")
        return kind(value)

    def dataset(self, name: str, kind: str, rows: int | None = None) -> Any:
        """A 1-D dataset of numbers of `kind` (numpy's kind letters, e.g. "iu" or "f"), unread."""
        data = self.f.get(name)
        if not isinstance(data, h5py.Dataset):
            raise self.bad(f"{name} is missing")
        if data.ndim != 1 or data.dtype.kind not in kind:
            raise self.bad(f"{name} is {data.dtype} of shape {data.shape}, not a column of numbers")
        if rows is not None and len(data) != rows:
            raise self.bad(f"{name} has {len(data)} rows where {rows} belong")
        return data

    def column(self, name: str, kind: str, rows: int | None = None) -> np.ndarray:
        return self.dataset(name, kind, rows)[()]


# the columns of /metrics the summaries read, in every version's run files
RUN_COLUMNS = ("round", "sub_loss", "seconds_compute", "seconds_comm", "seconds_wall", "bytes_comm")


def _table(group) -> dict:
    """A table's columns cut to the rows all of them hold: a running job grows its columns one
    after another, so a reader may catch one a batch of rows ahead of the others."""
    rows = min((ds.shape[0] for ds in group.values()), default=0)
    return {k: ds[:rows] for k, ds in group.items()}


def _run_layout(f, what: str) -> dict:
    """The run file's attrs, checked (older layouts too: 0.1 kept /metrics/loss, no /eval); its
    config as this mpisub reads it (a key it does not have is its default) under "config"."""
    L = CheckedFile(f, what)
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    attrs["config"] = json.dumps(_check_config(L, "config").to_dict())
    if L.attr("status", str) not in ("running", "completed", "failed", "interrupted"):
        raise L.bad(f"attr 'status' is {attrs['status']!r}, not running, completed, failed or interrupted")
    for name, kind in (("ranks", int), ("mpisub_version", str), ("created", str), ("mpi_library", str),
                       ("segments", "json list"), ("config_given", "json dict"), ("plan_reason", str),
                       ("code_hash", str), ("init_round", int), ("init_sha256", str)):
        L.attr(name, kind, required=False)
    if not isinstance(f.get("metrics"), h5py.Group):
        raise L.bad("group /metrics is missing")
    for group in ("metrics", "eval"):
        for name in (f[group] if group in f else ()):
            L.dataset(f"{group}/{name}", "iuf")
    for name in RUN_COLUMNS + (() if "eval" in f else ("loss",)):
        L.dataset(f"metrics/{name}", "iuf")
    return attrs


def read_h5(path: str, read: Any, what: str, then: str) -> Any:
    """read(f) of the HDF5 file at path: a damaged file (whatever h5py raises) is one line, `what
    (the cause)then`."""
    try:
        with h5py.File(path, "r") as f:
            return read(f)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 (a damaged file: whatever h5py raises is one line)
        raise UserError(f"{what} ({type(e).__name__}: {cause(e)}){then}") from None


def read_run(path: str, arrays: bool = True) -> dict:
    """A run file's attributes and metrics (and, with `arrays`, its data, weights and masks) as
    plain Python and numpy values, its layout checked: a UserError names the file and what is
    wrong with it."""
    if os.path.isdir(path):
        path = os.path.join(path, FILENAME)
    return read_h5(path, lambda f: _read_run(f, path, arrays), f"{path}: not a readable mpisub run file", "")


def _read_run(f, path: str, arrays: bool) -> dict:
    run: dict[str, Any] = {"attrs": _run_layout(f, path)}
    run["metrics"] = _table(f["metrics"])
    loss_init = CheckedFile(f["metrics"], f"{path}: /metrics").attr("loss_init", float, required=False)
    if loss_init is not None:   # its one attribute (another, e.g. a damaged name, is not a column)
        run["metrics"]["loss_init"] = loss_init
    if "eval" in f:
        run["eval"] = _table(f["eval"])
        if "round" not in run["eval"] or "loss" not in run["eval"]:
            raise UserError(f"{path}: /eval has no round or loss column")
    else:  # before mpisub 0.2 every round was evaluated, into /metrics/loss
        run["eval"] = {"round": run["metrics"]["round"], "loss": run["metrics"]["loss"]}
    run["data"] = _data(f, path, json.loads(run["attrs"]["config"])["data"]["d"])
    for name in ("lambda0", "lambda_max"):
        if f"theory/{name}" in f:
            run[name] = float(f[f"theory/{name}"][()])
    for name in ("data/X", "data/Y", "model/a", "model/W_init", "model/W"):
        if arrays and name in f:
            run[name] = matrix(f, name, path)[()]
            if run[name].ndim != 2:
                raise UserError(f"{path}: /{name} has shape {run[name].shape}, not a matrix")
    if arrays and "masks" in f:
        run["masks"] = f["masks"][:len(run["metrics"]["round"])]   # a row per metrics row
    return run


def matrix(f: h5py.File, name: str, what: str) -> h5py.Dataset:
    """The dataset `name` of a run file, whose rows (W, W_init: a virtual dataset) may live in the
    run folder's shards: a missing shard is a UserError (HDF5 would read its rows as NaN)."""
    ds = f[name]
    folder = os.path.dirname(os.path.abspath(f.filename))
    missing = [n for n in shards.sources(ds) if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise UserError(f"{what}: /{name}'s rows live in the run folder's {shards.FOLDER}/, and {len(missing)} of its "
                        f"{len(shards.sources(ds))} shards are not there ({missing[0]}): read the run in its own "
                        f"folder, or copy the whole folder, {shards.FOLDER}/ included")
    return ds


def _data(f, path: str, d: int) -> dict:
    """/data's record, checked: a user's file ("source", absolute since mpisub 0.4, and "sha256")
    and the inputs' normalization ("normalize"; "mean" and "std" of d numbers with 'standardize')."""
    g = f.get("data")
    if not isinstance(g, h5py.Group):
        return {}
    L = CheckedFile(g, f"{path}: /data")
    out = {k: v for k in ("source", "sha256", "normalize") if (v := L.attr(k, str, required=False)) is not None}
    if out.get("normalize", "none") not in ("none", "standardize", "unit"):
        raise L.bad(f"attr 'normalize' is {out['normalize']!r}, not none, standardize or unit")
    if out.get("normalize") == "standardize":
        out["mean"], out["std"] = (L.column(name, "f", d) for name in ("mean", "std"))
        if not (np.isfinite(out["mean"]).all() and np.isfinite(out["std"]).all() and (out["std"] > 0).all()):
            raise L.bad("mean or std is not finite, or a std is not positive")
    return out


def _history(L: CheckedFile, table: str, rows: int | None, complete: bool) -> dict:
    """A checkpoint's table by the schema's columns, each of `rows` rows (None: as many as its
    round column). A column it lacks was written before the column existed: NaN in its rows (so
    a new metric needs no new checkpoint format); a format without checksums must have them all."""
    if f"{table}/round" not in L.f:
        raise L.bad(f"{table}/round is missing")
    rows = len(L.f[f"{table}/round"]) if rows is None else rows
    out = {}
    for name, dtype in schema.columns(table).items():
        if f"{table}/{name}" not in L.f and not complete:
            out[name] = np.full(rows, np.nan)
            continue
        out[name] = L.column(f"{table}/{name}", "iu" if np.dtype(dtype).kind in "iu" else "f", rows)
    return out


def _check_history(L: CheckedFile, ck: dict) -> None:
    rounds, evals = ck["metrics"]["round"], ck["eval"]["round"]
    if not np.array_equal(rounds, np.arange(1, ck["round"] + 1)):
        raise L.bad(f"metrics/round is not the rounds 1 ... {ck['round']} its attr 'round' says")
    if len(evals) and (np.any(np.diff(evals) <= 0) or evals[0] < 0 or evals[-1] > ck["round"]):
        raise L.bad(f"eval/round is not increasing within rounds 0 ... {ck['round']}")


def _check_W(L: CheckedFile, cfg: dict, fmt: int) -> None:
    """W's shape and dtype against the config (where it names them), and in format 4 the checksums."""
    W = L.f.get("W")
    model, data = cfg.get("model") or {}, cfg.get("data") or {}
    shape = (model.get("width", W.shape[0] if isinstance(W, h5py.Dataset) and W.ndim else None),
             data.get("d", W.shape[1] if isinstance(W, h5py.Dataset) and W.ndim == 2 else None))
    dtype = model.get("dtype", str(W.dtype) if isinstance(W, h5py.Dataset) else "float64")
    if not isinstance(W, h5py.Dataset) or W.shape != shape or W.dtype not in (np.float32, np.float64) or \
            str(W.dtype) != dtype:
        got = f"{W.dtype} of shape {W.shape}" if isinstance(W, h5py.Dataset) else "missing"
        raise L.bad(f"W is {got}, where its config says {dtype} of shape {shape}")
    if fmt >= 4:
        chunks = L.f.get("W_sha256")
        rows = chunks.attrs.get("chunk_rows") if isinstance(chunks, h5py.Dataset) else None
        if not isinstance(rows, (int, np.integer)) or rows < 1 or chunks is None or chunks.dtype != np.uint8 or \
                chunks.shape != (chunks.shape[0] if fmt >= 5 else -(-shape[0] // rows), 32):  # type: ignore[operator]
            raise L.bad("W_sha256, the checksums of W's rows, is missing or of another shape")
        if L.attr("checksum", str) != integrity.content_digest(L.f):
            raise L.bad("its checksum does not match its contents (it was damaged or edited after it was written)")
    if fmt >= 5:
        _check_shards(L, shape)


def _check_shards(L: CheckedFile, shape: tuple) -> None:
    """Format 5: W a virtual dataset over shards named as mpisub names them, in the run folder,
    covering W's rows in order, each there; the digests one per chunk of each shard."""
    bounds, names = L.f.get("W_shards"), L.f.get("W_shard_names")
    if not isinstance(bounds, h5py.Dataset) or not isinstance(names, h5py.Dataset) or bounds.dtype.kind != "i" or \
            bounds.shape != (len(names) + 1,) or names.dtype.kind != "S":
        raise L.bad("W_shards or W_shard_names, where W's rows are, is missing or of another shape")
    bounds, names = bounds[()].tolist(), [n.decode(errors="replace") for n in names[()]]
    if bounds[0] != 0 or bounds[-1] != shape[0] or any(b <= a for a, b in zip(bounds, bounds[1:])):
        raise L.bad(f"W_shards {bounds} does not cut rows 0 ... {shape[0]} in order")
    if not all(shards.NAME.fullmatch(n) for n in names) or shards.sources(L.f["W"]) != names:
        raise L.bad("W is not the virtual dataset over the shards W_shard_names names")
    folder = os.path.dirname(os.path.abspath(L.f.filename))
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise L.bad(f"{len(missing)} of its {len(names)} shards of W are missing ({missing[0]}): copy or restore "
                    f"the whole run folder, shards/ included")
    if len(integrity.chunk_bounds(bounds, int(L.f["W_sha256"].attrs["chunk_rows"]))) != len(L.f["W_sha256"]):
        raise L.bad("W_sha256 does not hold one digest per chunk of each shard")


def _shards(f: h5py.File) -> list[Shard]:
    """A format 5 checkpoint's shards, as checked by _check_shards (none before format 5)."""
    if "W_shards" not in f:
        return []
    bounds, names = f["W_shards"][()].tolist(), [n.decode() for n in f["W_shard_names"][()]]
    chunks = integrity.chunk_bounds(bounds, int(f["W_sha256"].attrs["chunk_rows"]))
    digests, out = f["W_sha256"][()], []
    for name, lo, hi in zip(names, bounds, bounds[1:]):
        mine = [i for i, (a, _) in enumerate(chunks) if lo <= a < hi]
        out.append(Shard(name, lo, hi, digests[mine[0]: mine[-1] + 1]))
    return out


def _check_config(L: CheckedFile, name: str):
    try:
        return config.from_dict(L.attr(name, "json dict"))
    except UserError as e:
        raise L.bad(f"attr {name!r} is not a config this mpisub reads ({e})") from None


def read_checkpoint(folder: str, allow_version_change: bool = False) -> dict:
    """The checkpoint of the run in `folder`, its layout, relations and checksum checked: a
    UserError says what is wrong and what to do, and nothing is written. Another mpisub version
    or code (code_hash) is refused unless `allow_version_change`; then ck["version_change"] says
    what changed. W is checked row by row by read_checkpoint_W."""
    path = os.path.join(folder, CHECKPOINT)
    if not os.path.isdir(folder):
        raise UserError(f"--resume {folder!r}: no such folder; give the output.dir of the run to continue")
    if not os.path.exists(path):
        if os.path.exists(os.path.join(folder, FILENAME)):   # a run file without its source of truth
            raise UserError(f"--resume {folder!r} holds a run file ({FILENAME}) but no checkpoint ({CHECKPOINT}): "
                            f"it cannot be continued; to train further start a new run in another output.dir "
                            f"(output.overwrite = true in this one would replace its {FILENAME})")
        raise UserError(f"--resume {folder!r} holds no checkpoint ({CHECKPOINT}): the run stopped before "
                        f"its first one; start it again (with output.overwrite = true in that folder)")
    seal = _seal(path, f"--resume {folder!r}: {CHECKPOINT} is damaged and cannot be continued")
    return read_h5(path, lambda f: _read_checkpoint(f, folder, allow_version_change, seal),
                    f"--resume {folder!r}: {CHECKPOINT} is not a readable mpisub checkpoint",
                    "; the run cannot continue from it")


def _seal(path: str, what: str) -> bool | None:
    """integrity.sealed(path), checked before HDF5 parses the file: a seal that does not match its
    bytes is a UserError (True: sealed and whole; None: a file from before seals)."""
    try:
        seal = integrity.sealed(path)
    except OSError as e:
        raise UserError(f"{what} ({cause(e)})") from None
    if seal is False:
        raise UserError(f"{what}: its bytes do not match the sha256 sealed in it (it was damaged, truncated or edited "
                        f"after it was written)")
    return seal


def _read_checkpoint(f, folder: str, allow_version_change: bool, seal: bool | None = True) -> dict:

    L = CheckedFile(f, f"--resume {folder!r}: {CHECKPOINT} is damaged and cannot be continued")
    fmt, version, written_by = L.attr("format", int), L.attr("mpisub_version", str), L.attr("code_hash", str)
    written = f"mpisub {version} (code {written_by})"
    here = f"mpisub {__version__} (code {code_hash()})"
    if fmt not in CHECKPOINT_FORMATS:
        raise UserError(f"--resume {folder!r}: its checkpoint was written by {written} in format {fmt}; this is "
                        f"{here}, which reads formats {', '.join(map(str, CHECKPOINT_FORMATS))}: resume with the "
                        f"version that wrote it, or start a new run")
    if fmt >= 5 and not seal:
        raise L.bad("a format 5 checkpoint without its seal (the sha256 of its bytes)")
    _check_W(L, L.attr("config", "json dict"), fmt)    # format 4: the checksum, before anything else is read
    changed = version != __version__ or written_by != code_hash()
    if changed and not allow_version_change:
        raise UserError(f"--resume {folder!r}: its checkpoint was written by {written}, this is {here}; a run "
                        f"continues bit-exactly only with the code that started it: resume with that version, "
                        f"or add --allow-version-change to continue with this one")
    ck = {"format": fmt, "mpisub_version": version, "code_hash": written_by, "folder": folder,
          "version_change": f"written by {written}, continued by {here}" if changed else "",
          "config": _check_config(L, "config").to_dict(), "round": L.attr("round", int),
          "loss_init": L.attr("loss_init", float), "data_sha256": L.attr("data_sha256", str),
          "created": L.attr("created", str), "segments": L.attr("segments", "json list"), "shape": f["W"].shape,
          "shards": _shards(f)}
    if ck["round"] < 0 or not np.isfinite(ck["loss_init"]) or ck["loss_init"] < 0:
        raise L.bad(f"attr 'round' ({ck['round']}) or 'loss_init' ({ck['loss_init']}) is out of range")
    ck["metrics"] = _history(L, "metrics", ck["round"], complete=fmt < 4)
    ck["eval"] = _history(L, "eval", None, complete=fmt < 4)
    _check_history(L, ck)
    given = _check_config(L, "config_given").to_dict() if "config_given" in f.attrs else None
    # the run file says more than a checkpoint before format 4 where it is whole: how its launches ended
    history = _run_file_json(folder, ("config_given", "segments"))
    ck["config_given"] = given or history.get("config_given")
    ck["segments"] = history.get("segments") or ck["segments"]
    return ck


def _run_file_json(folder: str, names: tuple) -> dict:
    """The JSON attrs `names` of the run file in `folder` that it has and that parse as what they
    should be (config_given a config, segments a list of rows); the rest is left out."""

    out = {}
    with contextlib.suppress(Exception), h5py.File(os.path.join(folder, FILENAME), "r") as f:
        for name in names:
            with contextlib.suppress(Exception):
                value = json.loads(f.attrs[name])
                if name == "config_given":
                    value = config.from_dict(value).to_dict()
                elif not (isinstance(value, list) and all(isinstance(row, dict) for row in value)):
                    continue
                out[name] = value
    return out


def read_checkpoint_W(folder: str, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """Rows lo:hi of the checkpoint's W (each rank reads its own block on resume), checked: the
    checksums of the chunks of rows they fall in (format 4), and that they are finite."""
    path = os.path.join(folder, CHECKPOINT)
    what = f"--resume {folder!r}: {CHECKPOINT} is damaged and cannot be continued"
    try:
        with h5py.File(path, "r") as f:
            W = f["W"]
            hi = W.shape[0] if hi is None else hi
            for part in _shards(f):     # the shards it reads from: their bytes before HDF5 parses them
                if part.lo < hi and part.hi > lo and \
                        _seal(os.path.join(folder, part.name), f"{what}: its shard {part.name}") is not True:
                    raise UserError(f"{what}: its shard {part.name} has no seal (the sha256 of its bytes)")
            rows = W[lo:hi]
            if "W_sha256" in f:
                _verify_chunks(f, lo, hi, rows, what)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{what} ({type(e).__name__}: {cause(e)})") from None
    if not np.all(np.isfinite(rows)):
        raise UserError(f"{what}: rows {lo}:{hi} of W hold values that are not finite")
    return rows


def _verify_chunks(f, lo: int, hi: int, rows: np.ndarray, what: str) -> None:
    """The chunks of W's rows that overlap lo:hi against their digests (the edge chunks read whole):
    chunks of each shard (format 5), or of W from row 0 (format 4)."""
    size, digests, W = int(f["W_sha256"].attrs["chunk_rows"]), f["W_sha256"], f["W"]
    bounds = f["W_shards"][()].tolist() if "W_shards" in f else [0, W.shape[0]]
    for c, (a, b) in enumerate(integrity.chunk_bounds(bounds, size)):
        if b <= lo or a >= hi:
            continue
        chunk = rows[a - lo: b - lo] if lo <= a and b <= hi else W[a:b]
        if not np.array_equal(integrity.chunk_digest(chunk), digests[c]):
            raise UserError(f"{what}: rows {a}:{b} of W do not match their checksum")


__all__ = ["read_run", "read_checkpoint", "read_checkpoint_W", "CHECKPOINT_FORMAT"]
