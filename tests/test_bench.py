"""mpisub-bench: its baselines compute mpisub's algorithm, and its table says what it measured.
(Speed itself is not asserted here: the machine is shared; the benchmark prints ratios.)"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from mpisub import bench, masks
from reference import replay


def _problem(kind, p, keep, m=40, n=25, d=6, c=2, seed=3):
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((n, d)), rng.standard_normal((n, c))
    W, a = rng.standard_normal((m, d)), rng.choice([-1.0, 1.0], size=(m, c))
    M = np.stack([masks.sample(kind, p, keep, m, 0, k) for k in range(3)])
    return X, Y, W, a, M


@pytest.mark.parametrize("kind,p,keep", [("bernoulli", 3, 0.5), ("partition", 4, 0.25)])
def test_numpy_round_matches_the_reference_replay(kind, p, keep):
    X, Y, W, a, M = _problem(kind, p, keep)
    W_ref, losses, _ = replay(W, a, X, Y, M, keep, lr=0.3, local_steps=2)
    W_np = W
    for k in range(3):
        W_np, loss = bench.numpy_round(W_np, a, X, Y, M[k], keep, 0.3, 2)
        assert math.isclose(loss, losses[k], rel_tol=1e-10)
    np.testing.assert_allclose(W_np, W_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind,p,keep", [("bernoulli", 3, 0.5), ("partition", 4, 0.25)])
def test_torch_round_matches_the_reference_replay(kind, p, keep):
    torch = pytest.importorskip("torch", reason="torch is optional and kept out of CI (pip install torch==2.13.0)")
    X, Y, W, a, M = _problem(kind, p, keep)
    W_ref, losses, _ = replay(W, a, X, Y, M, keep, lr=0.3, local_steps=2)
    W_t = torch.from_numpy(W)
    for k in range(3):
        W_t, loss = bench.torch_round(torch, W_t, torch.from_numpy(a), torch.from_numpy(X), torch.from_numpy(Y),
                                      M[k], keep, 0.3, 2)
        assert math.isclose(loss, losses[k], rel_tol=1e-10)
    np.testing.assert_allclose(W_t.numpy(), W_ref, rtol=1e-10, atol=1e-12)


def test_quick_benchmark_prints_the_table_with_consistent_ratios(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "mpisub-bench")
    out = tmp_path / "bench.json"
    r = subprocess.run([exe, "--quick", "--rounds", "2", "--json", str(out)], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [line.split("|")[1:-1] for line in r.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == len(bench.ROWS) + 2     # the header, every case, local steps vs bare products
    res = json.loads(out.read_text())
    for name, shape, K, dtype, threads, against, target in bench.ROWS:
        row = next(cells for cells in rows if cells[0].strip() == name and cells[3].strip() == against)
        if not row[5].strip():
            continue                                 # torch not installed: the row says so
        ratio = float(row[5].split("x")[0])
        result = lambda k, t=0, dt="float64": res["results"][f"{shape} K={k} {dt} threads={t or 'auto'}"]  # noqa: E731
        mine = result(K, threads, dtype)["mpisub"]["seconds"]
        faster = against not in ("numpy", "torch")  # shown as "N x faster" = other / mine
        if faster:
            other = result(1, 1 if against.endswith("1 thread") else 0)["mpisub"]["seconds"]
        else:
            other = result(1)[against]["seconds"]
        expected = other / mine if faster else mine / other
        assert abs(ratio - expected) <= 0.006, row   # printed with two decimals
        assert row[7].strip() == ("yes" if (1 / expected if faster else expected) <= target else "NO"), row
    # the baselines reproduced mpisub's weights, so the three measured the same computation
    for key, value in res["results"].items():
        for how in ("numpy", "torch"):
            if how in value:
                assert value[how]["agrees"] <= 1e-10, (key, how)
        split = value["mpisub"]["split"]
        assert all(v >= 0 for v in split.values()) and len(value["mpisub"]["peak_rss_mb"]) == int(key.split("K=")[1][0])
    assert 0 < res["second_launch_seconds"] < 60


def test_kernels_cache_in_the_user_dir_when_the_package_is_read_only(tmp_path):
    """numba caches next to the package; read-only, it must fall back to ~/.cache/numba and reuse
    that cache on the next launch (no new files the second time: nothing was compiled again)."""
    import shutil
    import mpisub
    src, mnt, home = tmp_path / "src", tmp_path / "mnt", tmp_path / "home"
    shutil.copytree(os.path.dirname(mpisub.__file__), src / "mpisub",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    mnt.mkdir()
    if subprocess.run(["mount", "--bind", str(src), str(mnt)], capture_output=True).returncode or \
            subprocess.run(["mount", "-o", "remount,bind,ro", str(mnt)], capture_output=True).returncode:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        pytest.skip("cannot bind-mount read-only here (needs root in a mount namespace)")
    try:
        code = ("import numpy as np, mpisub; from mpisub import kernels; kernels.compile_for(np.float64); "
                "print(mpisub.__file__)")
        env = {**os.environ, "PYTHONPATH": str(mnt), "HOME": str(home)}
        env.pop("NUMBA_CACHE_DIR", None)
        stamps = []
        for _ in range(2):
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                               cwd=tmp_path)
            assert r.returncode == 0 and r.stdout.strip().startswith(str(mnt)), r.stderr
            stamps.append({p: p.stat().st_mtime_ns for p in home.rglob("*") if p.suffix in (".nbi", ".nbc")})
        assert any("local_steps" in p.name for p in stamps[0]), "no kernel cached in ~/.cache/numba"
        assert stamps[1] == stamps[0], "the second launch compiled again"
        assert not list(src.rglob("*.nbi"))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
