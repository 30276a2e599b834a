"""Shards of W: written whole with their chunks' digests, read back as one virtual dataset, and
removed only when no file reads them and no rank may still be writing them."""
import hashlib
import os

import h5py
import numpy as np

from mpisub.io import integrity, shards


def test_a_shard_holds_its_rows_and_the_digests_of_its_chunks(tmp_path):
    rows = np.random.default_rng(1).standard_normal((300, 1000))   # 8000 bytes a row: 131 rows a chunk
    part = shards.write(str(tmp_path), shards.name("W", "0123abcd", 1, 4, 7), rows, 600)
    assert part.name == "shards/W.0123abcd.r00000007.k1of4.h5" and (part.lo, part.hi) == (600, 900)
    with h5py.File(tmp_path / part.name, "r") as f:
        np.testing.assert_array_equal(f["W"][()], rows)
        assert (f["W"].attrs["lo"], f["W"].attrs["hi"]) == (600, 900)
    size = integrity.chunk_rows(1000, 8)
    expected = [hashlib.sha256(rows[a:a + size].tobytes()).digest() for a in range(0, 300, size)]
    assert [bytes(d) for d in part.digests] == expected and len(expected) == 3
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path / "shards"))


def test_chunk_bounds_restart_at_every_shard():
    assert integrity.chunk_bounds([0, 5, 12], 4) == [(0, 4), (4, 5), (5, 9), (9, 12)]
    assert integrity.chunk_bounds([0, 10], 4) == [(0, 4), (4, 8), (8, 10)]


def test_the_virtual_dataset_reads_the_shards_as_one_matrix_from_any_working_folder(tmp_path, monkeypatch):
    W = np.arange(40.0).reshape(10, 4)
    parts = [shards.write(str(tmp_path), shards.name("W", "0123abcd", k, 2, 3), W[lo:hi], lo)
             for k, (lo, hi) in enumerate([(0, 6), (6, 10)])]
    with h5py.File(tmp_path / "m.h5", "w") as f:
        shards.virtual(f, "W", parts, W.shape, W.dtype)
    monkeypatch.chdir("/")
    with h5py.File(tmp_path / "m.h5", "r") as f:
        np.testing.assert_array_equal(f["W"][()], W)
        assert shards.sources(f["W"]) == [p.name for p in parts]
    os.unlink(tmp_path / parts[1].name)
    with h5py.File(tmp_path / "m.h5", "r") as f:   # a missing shard reads as NaN, never as zeros
        assert np.isnan(f["W"][6:]).all() and not np.isnan(f["W"][:6]).any()


def test_collect_keeps_what_is_read_and_what_another_rank_may_be_writing(tmp_path):
    names = {"kept": shards.name("W", "aaaaaaaa", 0, 1, 5), "older": shards.name("W", "aaaaaaaa", 0, 1, 4),
             "newer": shards.name("W", "aaaaaaaa", 0, 1, 6) + ".tmp", "init": shards.name("W_init", "aaaaaaaa", 0, 1),
             "other launch": shards.name("W", "bbbbbbbb", 0, 1, 9),
             "torn": shards.name("W", "bbbbbbbb", 0, 1, 3) + ".tmp",
             "not ours": "shards/notes.txt"}
    os.makedirs(tmp_path / "shards")
    for name in names.values():
        (tmp_path / name).write_text("x")
    shards.collect(str(tmp_path), {names["kept"], names["init"]}, "aaaaaaaa", 5)
    left = {what for what, name in names.items() if (tmp_path / name).exists()}
    assert left == {"kept", "newer", "init", "not ours"}
