"""Every mistake a user can make with config, data or paths: one line on stderr (rank 0 only)
naming the key or file, what is wrong and the fix; exit code 2; no traceback; nothing on disk lost.

Every case runs on two MPI ranks: all of them in one `mpirun -n 2` job that calls the command's
function once per case (cases_in_one_job.py: each rank's exit code and output), and one case per
stage of the start again as its own `mpirun -n 2 mpisub-train` process, where the line must come
out once from the two ranks and the process must exit 2.
"""
import hashlib
import json
import os
import sys

import h5py
import numpy as np
import pytest
from helpers import ROOT
from helpers.jobs import mpirun

from mpisub.io import integrity, store


def _npz(path, **arrays):
    np.savez(path, **arrays)


def _h5(path, **arrays):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f[k] = v


def _text(path, text):
    with open(path, "w") as f:
        f.write(text)


def _checkpoint(folder, version=None, config_json="{}"):
    """A whole checkpoint (of 1 round); `version`: as if another mpisub version had written it."""
    os.makedirs(folder, exist_ok=True)
    store.write_checkpoint(folder, W=np.zeros((4, 2)), rounds_done=1, metrics={"round": [1]}, loss_init=1.0,
                           config_json=config_json, data_sha256="", created="now")
    if version:
        with h5py.File(os.path.join(folder, store.CHECKPOINT), "r+") as f:
            f.attrs["mpisub_version"] = version
            f.attrs["checksum"] = integrity.content_digest(f)
        integrity.seal(os.path.join(folder, store.CHECKPOINT))


def _finished_run(folder):
    os.makedirs(folder)
    _text(os.path.join(folder, "run.h5"), "a finished run, to be kept as it is")


def _h5_link(path, link):
    with h5py.File(path, "w") as f:
        f["X"] = link
        f["Y"] = Y1


def _h5_corrupt_chunk(path):
    """A gzip-compressed X whose first chunk's bytes are overwritten: the file opens, the read fails."""
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("X", data=X3, chunks=(5, 3), compression="gzip")
        f["Y"] = Y1
        offset = ds.id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as f:
        f.seek(offset + 2)
        f.write(b"\xff" * 8)


def _npz_bad_crc(path):
    np.savez(path, X=X3, Y=Y1)
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    at = raw.index(X3.tobytes()[:16])  # inside X's stored bytes: the member's CRC no longer matches
    raw[at] ^= 0xFF
    with open(path, "wb") as f:
        f.write(raw)


def _bytes(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)


X3 = np.random.default_rng(0).standard_normal((10, 3))
Y1 = np.ones((10, 1))
NAN = X3.copy()
NAN[4, 1] = np.nan
INF = X3.copy()
INF[7, 0] = np.inf
S = "--set"

# (id, arguments, setup(tmp folder), fragments the one error line must contain). Config values
# alone are checked in-process (test_config.py); here, one per stage of the start under mpirun
# (command line, config values, config file, ranks, data, output folder, resume) and every data
# and folder mistake, which need the files and the ranks.
CASES = [
    ("unknown key", [S, "train.lrr=1"], None, ["unknown config key 'train.lrr'", "did you mean 'train.lr'"]),
    ("keep for partition", [S, "masks.keep=0.3"], None, ["masks.keep = 0.3 does not apply to masks.kind = 'partition'"]),
    ("p not a multiple of K under plan rows", [S, "masks.subnets=3", S, "train.plan=rows"], None,
     ["masks.subnets = 3 is not a multiple of the 2 MPI ranks, which train.plan = 'rows' needs",
      "set train.plan = 'outputs' (or 'auto')"]),
    ("batch larger than data", [S, "train.batch_size=600"], None, ["train.batch_size = 600 exceeds the 512 samples"]),
    ("unknown preset", ["--preset", "sgd"], None, ["argument --preset: invalid choice: 'sgd'"]),
    ("unknown flag", ["--rounds", "5"], None, ["unrecognized arguments: --rounds 5"]),
    ("missing config file", ["--config", "nope.toml"], None, ["config file 'nope.toml' not found"]),
    ("malformed config file", ["--config", "bad.toml"], lambda d: _text(d / "bad.toml", "[train\nlr = 1\n"),
     ["config file 'bad.toml' is not valid TOML"]),
    ("config value outside a section", ["--config", "flat.toml"], lambda d: _text(d / "flat.toml", "lr = 1\n"),
     ["'lr' must be a [section] table"]),
    ("config file with wrong type", ["--config", "t.toml"], lambda d: _text(d / "t.toml", "[train]\nrounds = '9'\n"),
     ["train.rounds must be an integer, got '9'"]),
    ("data file of unknown type", [S, "data.source=data.txt"], None, ["data.source = 'data.txt' is neither"]),
    ("missing data file", [S, "data.source=gone.npz"], None, ["data.source 'gone.npz': not found"]),
    ("data path is a folder", [S, "data.source=dir.h5"], lambda d: os.mkdir(d / "dir.h5"), ["data.source 'dir.h5': is a folder"]),
    ("corrupt HDF5", [S, "data.source=bad.h5"], lambda d: _text(d / "bad.h5", "not hdf5 at all"),
     ["data.source 'bad.h5' is not a readable HDF5 file"]),
    ("HDF5 without X", [S, "data.source=d.h5"], lambda d: _h5(d / "d.h5", inputs=X3, Y=Y1),
     ["has no dataset 'X' (datasets: Y, inputs); set data.x_name"]),
    ("corrupt npz", [S, "data.source=bad.npz"], lambda d: _text(d / "bad.npz", "PK garbage"),
     ["data.source 'bad.npz' is not a readable .npz file"]),
    ("npz needing pickle", [S, "data.source=obj.npz"],
     lambda d: np.savez(d / "obj.npz", X=np.array([{"a": 1}] * 3, dtype=object), Y=Y1[:3]),
     ["cannot load it as numeric arrays"]),
    ("NaN in data", [S, "data.source=nan.npz"], lambda d: _npz(d / "nan.npz", X=NAN, Y=Y1),
     ["X has 1 NaN/Inf value(s), the first in sample 4"]),
    ("Inf in data", [S, "data.source=inf.h5"], lambda d: _h5(d / "inf.h5", X=INF, Y=Y1),
     ["X has 1 NaN/Inf value(s), the first in sample 7"]),
    ("X and Y of different lengths", [S, "data.source=len.npz"], lambda d: _npz(d / "len.npz", X=X3, Y=Y1[:9]),
     ["X has 10 samples but Y has 9"]),
    ("empty data", [S, "data.source=empty.npz"], lambda d: _npz(d / "empty.npz", X=np.zeros((0, 3)), Y=np.zeros((0, 1))),
     ["holds no data"]),
    ("3-D data", [S, "data.source=cube.npz"], lambda d: _npz(d / "cube.npz", X=np.zeros((10, 2, 2)), Y=Y1),
     ["X has shape (10, 2, 2); it must be 2-D"]),
    ("text in a CSV", [S, "data.source=t.csv"], lambda d: _text(d / "t.csv", "a,b,y\n1,2,3\n4,five,6\n"),
     ["line 3, column 'b': 'five' is not a number"]),
    ("CSV without the target column", [S, "data.source=t.csv", S, "data.target=price"],
     lambda d: _text(d / "t.csv", "a,b,y\n1,2,3\n"), ["has no column 'price' (columns: a, b, y); set data.target"]),
    ("empty CSV", [S, "data.source=e.csv"], lambda d: _text(d / "e.csv", ""), ["data.source 'e.csv' is empty"]),
    ("CSV with a short line", [S, "data.source=r.csv"], lambda d: _text(d / "r.csv", "a,b,y\n1,2,3\n1,2\n"),
     ["line 3 has 2 fields, the header has 3"]),
    ("HDF5 soft link to nothing", [S, "data.source=soft.h5"], lambda d: _h5_link(d / "soft.h5", h5py.SoftLink("/gone")),
     ["data.source 'soft.h5'"]),
    ("HDF5 external link to a missing file", [S, "data.source=ext.h5"],
     lambda d: _h5_link(d / "ext.h5", h5py.ExternalLink("missing.h5", "/X")), ["data.source 'ext.h5'"]),
    ("HDF5 corrupt compressed chunk", [S, "data.source=chunk.h5"], lambda d: _h5_corrupt_chunk(d / "chunk.h5"),
     ["data.source 'chunk.h5' cannot be read", "check that the file is whole"]),
    ("npz member with a bad CRC", [S, "data.source=crc.npz"], lambda d: _npz_bad_crc(d / "crc.npz"),
     ["data.source 'crc.npz'"]),
    ("CSV not in UTF-8", [S, "data.source=latin.csv"], lambda d: _bytes(d / "latin.csv", "a,b,y\n1,2,3\n# caf\u00e9\n".encode("latin-1")),
     ["data.source 'latin.csv' is not UTF-8 text", "save it as UTF-8"]),
    ("CSV field over the csv module's limit", [S, "data.source=wide.csv"],
     lambda d: _text(d / "wide.csv", "a,y\n" + "1" * 200000 + ",2\n"), ["data.source 'wide.csv' line 2"]),
    ("CSV separated by semicolons", [S, "data.source=semi.csv"], lambda d: _text(d / "semi.csv", "a;b;y\n1;2;3\n"),
     ["looks ';'-separated", "save it with commas"]),
    ("CSV separated by tabs", [S, "data.source=tab.csv"], lambda d: _text(d / "tab.csv", "a\tb\ty\n1\t2\t3\n"),
     ["looks tab-separated"]),
    ("TOML not in UTF-8", ["--config", "latin.toml"], lambda d: _bytes(d / "latin.toml", "[output]\ndir = 'caf\u00e9'\n".encode("latin-1")),
     ["config file 'latin.toml' is not UTF-8 text"]),
    ("TOML value out of range names the file", ["--config", "lr.toml"], lambda d: _text(d / "lr.toml", "[train]\nlr = -1\n"),
     ["config file 'lr.toml': train.lr = -1.0 is out of range"]),
    ("data that overflows when squared", [S, "data.source=huge.npz"], lambda d: _npz(d / "huge.npz", X=X3 * 1e300, Y=Y1),
     ["data.source 'huge.npz': X has values up to", "once squared", "data.normalize"]),
    ("synthetic noise that overflows", [S, "data.noise=1e308"], None, ["(data.noise = 1e+308)", "lower data.noise"]),
    ("classification of real-valued targets", [S, "data.task=classification"], None,
     ["the synthetic data (data.noise = 0): data.task = 'classification' needs one column of integer class labels"]),
    ("test file of other columns", [S, "data.source=a.npz", S, "data.test_source=b.npz"],
     lambda d: (_npz(d / "a.npz", X=X3, Y=Y1), _npz(d / "b.npz", X=X3[:, :2], Y=Y1)),
     ["data.test_source 'b.npz' has 2 inputs and 1 targets per sample, data.source 3 and 1"]),
    ("class label far past the others", [S, "data.source=a.npz", S, "data.task=classification"],
     lambda d: _npz(d / "a.npz", X=X3, Y=np.array([0, 1, 99999.0, 1, 0] * 2)),
     ["data.source 'a.npz': class label 99999 is over the 65535 mpisub takes", "number the classes 0, 1, 2"]),
    ("bad labels in the test file", [S, "data.source=a.npz", S, "data.test_source=b.npz", S, "data.task=classification"],
     lambda d: (_npz(d / "a.npz", X=X3, Y=np.zeros(len(X3))), _npz(d / "b.npz", X=X3, Y=np.full(len(X3), 0.5))),
     ["data.test_source 'b.npz': data.task = 'classification' needs one column of integer class labels"]),
    ("a link where the lock file goes", [S, "output.dir=out"],
     lambda d: (os.mkdir(d / "out"), _text(d / "precious.txt", "keep me"), os.symlink("../precious.txt", d / "out" / "mpisub.lock")),
     ["'out/mpisub.lock' is a symbolic link", "mpisub follows no link it did not make"]),
    ("missing test file", [S, "data.source=a.npz", S, "data.test_source=gone.npz"],
     lambda d: _npz(d / "a.npz", X=X3, Y=Y1), ["data.test_source 'gone.npz': not found"]),
    ("gd at two ranks under plan rows", ["--preset", "gd", S, "train.plan=rows"], None,
     ["masks.subnets = 1 is not a multiple of the 2 MPI ranks", "train.plan = 'outputs'"]),
    ("model too large for the node", [S, "model.width=1000000000", S, "data.d=1000"], None,
     ["model.width = 1000000000 needs about", "GiB per rank", "at most model.width ="]),
    ("model over train.memory_limit_mb", [S, "model.width=200000", S, "data.d=64", S, "train.memory_limit_mb=400"], None,
     ["train.memory_limit_mb = 400 allows", "at most model.width = ", "raise train.memory_limit_mb"]),
    ("resume at a K that does not divide p", ["--resume", "p3"],
     lambda d: _checkpoint(str(d / "p3"), config_json='{"masks": {"subnets": 3}, "train": {"plan": "rows"}}'),
     ["the run has masks.subnets = 3 and train.plan = 'rows'", "a number of ranks that divides 3 (e.g. mpirun -n 1)"]),
    ("output.dir is a file", [S, "output.dir=taken"], lambda d: _text(d / "taken", "x"), ["output.dir 'taken' is a file"]),
    ("output.dir holds a run", [S, "output.dir=old"], lambda d: _finished_run(d / "old"),
     ["output.dir 'old' already holds a run (run.h5)", "--resume old", "output.overwrite = true"]),
    ("resume from a missing folder", ["--resume", "nowhere"], None, ["--resume 'nowhere': no such folder"]),
    ("resume without a checkpoint", ["--resume", "old"], lambda d: os.makedirs(d / "old"),
     ["--resume 'old' holds no checkpoint (checkpoint.h5)", "start it again"]),
    ("resume a run whose checkpoint is gone", ["--resume", "old"], lambda d: _finished_run(d / "old"),
     ["--resume 'old' holds a run file (run.h5) but no checkpoint", "start a new run in another output.dir"]),
    ("resume a corrupt checkpoint", ["--resume", "c"],
     lambda d: (os.mkdir(d / "c"), _text(d / "c" / "checkpoint.h5", "torn")),
     ["checkpoint.h5 is not a readable mpisub checkpoint"]),
    ("resume from another version", ["--resume", "v"], lambda d: _checkpoint(str(d / "v"), version="0.0.1"),
     ["written by mpisub 0.0.1", "resume with that version"]),
    ("resume with a changed key", ["--resume", "r", S, "train.lr=1"], lambda d: _checkpoint(str(d / "r")),
     ["train.lr = 1.0 here, but the run being resumed has train.lr = 4.0", "only train.rounds"]),
    ("resume with another config file", ["--resume", "r", "--config", "x.toml"],
     lambda d: (_checkpoint(str(d / "r")), _text(d / "x.toml", "[masks]\nkind = 'bernoulli'\n")),
     ["masks.kind = 'bernoulli' here, but the run being resumed has masks.kind = 'partition'"]),
]


def _snapshot(folder):
    """Every file under folder and its content hash: what must survive a refused run."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _check(name, code, stderr, stdout, fragments, before, after):
    assert code == 2, f"{name}: exit code {code}\n{stdout}{stderr}"
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr             # once, from rank 0, no traceback
    assert lines[0].startswith("mpisub-train: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "round" not in stdout               # nothing trained
    assert after == before, "a refused run changed files on disk"


@pytest.fixture(scope="module")
def in_one_job(tmp_path_factory):
    """Every case in its own folder, run in one mpirun -n 2 job: {name: (records per rank, the
    folder's files before, after)}."""
    root = tmp_path_factory.mktemp("bad-input")
    folders = {}
    for i, (name, _, setup, _) in enumerate(CASES):
        folders[name] = root / f"case-{i}"
        folders[name].mkdir()
        if setup:
            setup(folders[name])
    before = {name: _snapshot(folder) for name, folder in folders.items()}
    with open(root / "cases.json", "w") as f:
        json.dump([[str(folders[name]), args] for name, args, _, _ in CASES], f)
    script = os.path.join(ROOT, "tests", "helpers", "cases_in_one_job.py")
    r = mpirun(2, str(root / "cases.json"), str(root / "results.json"), cwd=root, timeout=240,
               program=(sys.executable, script))
    assert r.returncode == 0, r.stdout + r.stderr
    with open(root / "results.json") as f:
        ranks = json.load(f)
    return {name: ([rank[i] for rank in ranks], before[name], _snapshot(folders[name]))
            for i, (name, _, _, _) in enumerate(CASES)}


@pytest.mark.parametrize("name,args,setup,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_exit_2(in_one_job, name, args, setup, fragments):
    (first, second), before, after = in_one_job[name]
    assert second["code"] == 2 and second["stderr"] == "" and second["stdout"] == "", second   # rank 1 is silent
    _check(name, first["code"], first["stderr"], first["stdout"], fragments, before, after)


# one case per stage of the start: command line, config value, config file, ranks, data, model
# size, output folder, resume
OWN_PROCESS = ["unknown flag", "unknown key", "malformed config file", "p not a multiple of K under plan rows",
               "missing data file", "model too large for the node", "output.dir holds a run",
               "resume a corrupt checkpoint"]


@pytest.mark.parametrize("name,args,setup,fragments", [c for c in CASES if c[0] in OWN_PROCESS],
                         ids=[c[0] for c in CASES if c[0] in OWN_PROCESS])
def test_bad_input_as_its_own_process(tmp_path, name, args, setup, fragments):
    assert len(OWN_PROCESS) == len({c[0] for c in CASES} & set(OWN_PROCESS))   # no stale name
    if setup:
        setup(tmp_path)
    before = _snapshot(tmp_path)
    r = mpirun(2, *args, cwd=tmp_path, timeout=60)
    _check(name, r.returncode, r.stderr, r.stdout, fragments, before, _snapshot(tmp_path))
