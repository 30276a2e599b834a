"""Files mpisub wrote are untrusted input when read back
(docs/design.md, section 6, "Untrusted files"). Hundreds of mutants of a real checkpoint (byte
mutations as test_fuzz_files makes them, and edits of its attrs and datasets, with its checksum
made anew or not) go through `mpisub-train --resume` on two ranks: each is refused in one line,
exit 2, with its folder byte-identical, or continues to the weights of an unbroken run. Mutants of
a real run.h5 go through the readers (open_run, the summary, the exports): a result or one line,
never a traceback."""
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from helpers import ROOT
from helpers.jobs import ONE_THREAD, mpirun, sets
from test_fuzz_files import PER_FORMAT, SEED, mutate

from mpisub.io import integrity, readback

JOB = dict(train__rounds=3, model__width=64, data__n=32, data__d=4, masks__subnets=2, train__plan="rows",
           theory__max_n=0, output__checkpoint_every=3)


def _set(name, value):
    return lambda f: f.attrs.__setitem__(name, value)


def _delete(name):
    return lambda f: f.__delitem__(name) if name in f else f.attrs.__delitem__(name)


def _replace(name, data):
    def edit(f):
        del f[name]
        f[name] = data
    return edit


# edits of a checkpoint's layout; each is tried with the checksum made anew (the layout checks
# must catch it) and as it is (the checksum must)
EDITS = [_set("round", -1), _set("round", 2), _set("round", 10**9), _set("round", "3"), _set("round", 3.5),
         _set("format", 99), _set("format", "4"), _set("loss_init", float("nan")), _set("loss_init", -1.0),
         _set("loss_init", "x"), _set("config", "{"), _set("config", "[]"), _set("config", '{"model": {"width": -1}}'),
         _set("config_given", "{"), _set("segments", "{}"), _set("mpisub_version", 5), _set("code_hash", 1),
         _set("data_sha256", 3), _set("created", np.arange(3))]
EDITS += [_delete(name) for name in ("round", "format", "config", "loss_init", "segments", "W", "W_sha256",
                                     "metrics/round", "metrics/sub_loss", "eval/round", "eval/loss")]
EDITS += [_replace("W", np.zeros((64, 5))), _replace("W", np.zeros((64, 4), np.int64)), _replace("W", np.zeros(64)),
          _replace("metrics/round", np.array([1, 2])), _replace("metrics/round", np.array([1, 2, 2])),
          _replace("metrics/sub_loss", np.zeros((3, 2))), _replace("eval/round", np.array([3, 0])),
          _replace("W_sha256", np.zeros((1, 32), np.uint8)), _replace("metrics/round", np.array(["a", "b", "c"], "S"))]


def _shard(f, i: int = 0) -> str:
    """The path of the checkpoint's i-th shard of W."""
    return os.path.join(os.path.dirname(f.filename), f["W_shard_names"][i].decode())


def _nan_in_W(f):
    with h5py.File(_shard(f), "r+") as shard:
        shard["W"][5, 1] = np.nan


def _flip_in_W(f):
    with h5py.File(_shard(f, 1), "r+") as shard:
        shard["W"][0, 0] += 1.0


def _remove_shard(f):
    os.unlink(_shard(f, 1))


def _truncate_shard(f):
    with open(_shard(f), "r+b") as shard:
        shard.truncate(100)


def _swap_shard_names(f):
    names = f["W_shard_names"][()][::-1].copy()
    del f["W_shard_names"]
    f["W_shard_names"] = names


EDITS += [_nan_in_W, _flip_in_W, _remove_shard, _truncate_shard, _swap_shard_names,
          _delete("W_shards"), _delete("W_shard_names"), _replace("W_shards", np.array([0, 40, 64])),
          _replace("W_shards", np.array([0, 64], np.int64)),
          _replace("W_shard_names", np.array([b"/etc/passwd", b"x"]))]


def _snapshot(folder) -> dict:
    out = {}
    for where, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(where, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A run of 3 rounds (its checkpoint), and an unbroken one of 6 to continue to."""
    folder = tmp_path_factory.mktemp("runs")
    for name, rounds in (("base", 3), ("unbroken", 6)):
        r = mpirun(2, *sets(output__dir=name, **dict(JOB, train__rounds=rounds)), cwd=folder, env=ONE_THREAD)
        assert r.returncode == 0, r.stderr
    return folder


def _checkpoint_mutants(base, root) -> list:
    rng, cases = random.Random(SEED), []
    with open(base / "base" / "checkpoint.h5", "rb") as f:
        valid = f.read()
    for i in range(PER_FORMAT):
        folder = root / f"bytes{i:04d}"
        shutil.copytree(base / "base", folder)
        with open(folder / "checkpoint.h5", "wb") as f:
            f.write(mutate(valid, rng))
        cases.append(folder)
    for i, edit in enumerate(EDITS):
        for anew in (True, False):
            folder = root / f"edit{i:02d}{'-anew' if anew else ''}"
            shutil.copytree(base / "base", folder)
            with h5py.File(folder / "checkpoint.h5", "r+") as f:
                edit(f)
                if anew:
                    f.attrs["checksum"] = integrity.content_digest(f)
            if anew:   # sealed anew too: the layout checks, not the seal, must catch it
                integrity.seal(str(folder / "checkpoint.h5"))
            cases.append(folder)
    return cases


def test_every_mutated_checkpoint_is_refused_in_one_line_or_continues_exactly(base, tmp_path):
    cases = _checkpoint_mutants(base, tmp_path)
    before = {folder: _snapshot(folder) for folder in cases}
    with open(tmp_path / "cases.json", "w") as f:
        json.dump([[str(tmp_path), ["--resume", folder.name, "--set", "train.rounds=6"]] for folder in cases], f)
    script = os.path.join(ROOT, "tests", "helpers", "cases_in_one_job.py")
    r = mpirun(2, str(tmp_path / "cases.json"), str(tmp_path / "results.json"), cwd=tmp_path, timeout=900,
               env=ONE_THREAD, program=(sys.executable, script))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    with open(tmp_path / "results.json") as f:
        first, second = json.load(f)
    unbroken = readback.read_run(str(base / "unbroken"))["model/W"]
    continued = 0
    for folder, one, two in zip(cases, first, second):
        if one["code"] == 2:
            lines = one["stderr"].strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("mpisub-train: error: "), (folder.name, one["stderr"])
            assert two["code"] == 2 and two["stderr"] == "", folder.name
            assert _snapshot(folder) == before[folder], f"{folder.name}: a refused resume changed its folder"
        else:
            assert one["code"] == 0 and two["code"] == 0, (folder.name, one, two)
            np.testing.assert_array_equal(readback.read_run(str(folder))["model/W"], unbroken, err_msg=folder.name)
            continued += 1
    print(f"{len(cases)} mutated checkpoints (seed {SEED}): {len(cases) - continued} refused in one line, "
          f"{continued} continued to the unbroken run's weights")
    assert continued < len(cases) // 4


READER = r"""
import io, json, sys, traceback
from mpisub.analysis import runs, report
from mpisub._util.errors import UserError
for path in json.load(sys.stdin):
    try:
        run = runs.open_run(path)
        report.format_summary(report.summary(run))
        report.export([run], "csv", io.StringIO())
        report.export([run], "jsonl", io.StringIO())
        print(json.dumps([path, "ok"]), flush=True)
    except UserError as e:
        print(json.dumps([path, "user: " + str(e)]), flush=True)
    except BaseException:
        print(json.dumps([path, "bug: " + traceback.format_exc()]), flush=True)
"""


def test_every_mutated_run_file_is_read_or_refused_in_one_line(base, tmp_path):
    rng, paths = random.Random(SEED + 1), []
    with open(base / "base" / "run.h5", "rb") as f:
        valid = f.read()
    for i in range(PER_FORMAT):
        paths.append(str(tmp_path / f"r{i:04d}.h5"))
        with open(paths[-1], "wb") as f:
            f.write(mutate(valid, rng))
    proc = subprocess.run([sys.executable, "-c", READER], input=json.dumps(paths), capture_output=True, text=True,
                          timeout=600)
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0 and len(results) == len(paths), proc.stderr[-2000:]
    bugs = [(p, r) for p, r in results if r.startswith("bug: ")]
    assert not bugs, f"seed {SEED}: {len(bugs)} traceback(s), the first on {bugs[0][0]}:\n{bugs[0][1]}"
    refused = [r for _, r in results if r.startswith("user: ")]
    assert all("\n" not in r for r in refused)
    print(f"{len(paths)} mutated run files (seed {SEED}): {len(refused)} refused in one line, "
          f"{len(paths) - len(refused)} read")
