"""User files are untrusted input: whatever is wrong inside a data or config file, reading it ends
in a UserError (one line naming the file, exit 2), never a traceback (docs/design.md, "Errors a user can cause").

Valid .h5, .npz, .csv and .toml files are mutated with a fixed seed (truncations, byte flips,
inserted and deleted bytes) and every mutant goes through the reader the run uses: data.load with
the file as data.source, config.build with it as --config. The readers run in a child process, so
a crash inside a C library fails the test (with the case) instead of ending pytest. A few mutants
also go through `mpirun -n 2 mpisub-train` for the whole path: exit 2, one line.
"""
import json
import os
import random
import subprocess
import sys

import h5py
import numpy as np
import pytest
from helpers.jobs import mpirun

SEED = int(os.environ.get("MPISUB_FUZZ_SEED", "20261127"))
PER_FORMAT = int(os.environ.get("MPISUB_FUZZ_FILES", "300"))
FORMATS = ("h5", "npz", "csv", "toml")

TOML = b"""[data]
n = 64
d = 3

[masks]
kind = "bernoulli"
subnets = 2
keep = 0.5

[train]
rounds = 5
lr = 1.5
"""


def _valid(folder, fmt: str) -> bytes:
    """The bytes of a valid file of the format (h5 with a gzip-compressed chunked dataset, so that
    flips land in compressed chunks too)."""
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((40, 3)), rng.standard_normal((40, 1))
    path = os.path.join(folder, f"valid.{fmt}")
    if fmt == "h5":
        with h5py.File(path, "w") as f:
            f.create_dataset("X", data=X, chunks=(10, 3), compression="gzip")
            f["Y"] = Y
    elif fmt == "npz":
        np.savez_compressed(path, X=X, Y=Y)
    elif fmt == "csv":
        np.savetxt(path, np.column_stack([X, Y]), delimiter=",", header="a,b,c,y", comments="", fmt="%.6g")
    else:
        return TOML
    with open(path, "rb") as f:
        return f.read()


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random mutation: a truncation, 1-16 byte flips, or bytes inserted or deleted."""
    b = bytearray(data)
    kind = rng.choice(("truncate", "flip", "flip", "insert", "delete"))
    if kind == "truncate":
        return bytes(b[: rng.randrange(len(b))])
    if kind == "flip":
        for _ in range(rng.randint(1, 16)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == "insert":
        at = rng.randrange(len(b) + 1)
        b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    else:
        at = rng.randrange(len(b))
        del b[at: at + rng.randint(1, 64)]
    return bytes(b)


# reads every file named on stdin (one JSON list) and prints one JSON line per file:
# "ok", "user: <message>" or "bug: <traceback>"
READER = r"""
import json, sys, traceback
from mpisub import config
from mpisub.io import data
from mpisub._util.errors import UserError
from mpisub.train.resolve import settle
for path in json.load(sys.stdin):
    try:
        if path.endswith(".toml"):
            config.build(None, path)
        else:
            cfg = config.Config()
            cfg.data.source = path
            X, Y, _ = data.load(cfg)
            settle(cfg, 1, (X.shape[0], X.shape[1], Y.shape[1]))
        print(json.dumps([path, "ok"]), flush=True)
    except UserError as e:
        print(json.dumps([path, "user: " + str(e)]), flush=True)
    except BaseException:
        print(json.dumps([path, "bug: " + traceback.format_exc()]), flush=True)
"""


@pytest.fixture(scope="module")
def mutants(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    rng = random.Random(SEED)
    files = {}
    for fmt in FORMATS:
        valid = _valid(str(folder), fmt)
        files[fmt] = []
        for i in range(PER_FORMAT):
            path = str(folder / f"m{i:04d}.{fmt}")
            with open(path, "wb") as f:
                f.write(mutate(valid, rng))
            files[fmt].append(path)
    return files


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_mutated_file_is_read_or_refused_in_one_line(mutants, fmt):
    paths = mutants[fmt]
    proc = subprocess.run([sys.executable, "-c", READER], input=json.dumps(paths), capture_output=True,
                          text=True, timeout=300)
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    done = len(results)
    assert proc.returncode == 0 and done == len(paths), (
        f"the reader died (rc {proc.returncode}) on {paths[done] if done < len(paths) else '?'} "
        f"(seed {SEED}):\n{proc.stderr[-2000:]}")
    bugs = [(p, r) for p, r in results if r.startswith("bug: ")]
    assert not bugs, f"seed {SEED}: {len(bugs)} traceback(s), the first on {bugs[0][0]}:\n{bugs[0][1]}"
    refused = [(p, r[6:]) for p, r in results if r.startswith("user: ")]
    for path, message in refused:
        assert "\n" not in message, message
        name = os.path.basename(path)
        assert name in message, f"{message!r} does not name the file {name}"
    print(f"{fmt}: {len(paths)} mutated files (seed {SEED}): {len(refused)} refused in one line, "
          f"{len(paths) - len(refused)} read as valid")
    assert len(refused) >= len(paths) // 4, "the mutations should break most files"


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_mutated_file_through_mpirun_is_exit_2_and_one_line(mutants, fmt, tmp_path):
    """The whole path for one refused mutant of each format: two ranks, one line, exit 2."""
    proc = subprocess.run([sys.executable, "-c", READER], input=json.dumps(mutants[fmt][:40]),
                          capture_output=True, text=True, timeout=120)
    refused = [p for p, r in map(json.loads, proc.stdout.splitlines()) if r.startswith("user: ")]
    assert refused
    option = ["--config", refused[0]] if fmt == "toml" else ["--set", f"data.source={refused[0]}"]
    r = mpirun(2, *option, "--set", "output.dir=out", cwd=tmp_path, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpisub-train: error: ") and os.path.basename(refused[0]) in lines[0]
    assert not os.path.exists(tmp_path / "out")
