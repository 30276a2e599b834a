"""mpisub-bench and benchmarks/peers.py as a user runs them: the peer table, every case at the ranks
asked for, the kernels' cache, the first launch's compile."""
import json
import os
import subprocess
import sys

import peers  # benchmarks/peers.py (pyproject.toml puts benchmarks/ on the tests' path)
import pytest
from helpers import ROOT


def test_quick_peer_benchmark_prints_the_table_with_consistent_ratios(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "peers.py"), "--quick", "--rounds", "2",
                        "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [line.split("|")[1:-1] for line in r.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    # the header, every target, local steps vs bare products, each dropout case's round vs its
    # products, and each case's evaluation share
    assert len(rows) == len(peers.TARGETS) + 2 + len(peers.ROUND_TARGETS) + len(peers.CASES)
    res = json.loads(out.read_text())

    def result(key):
        return res["results"][f"{key[0]} K={key[1]} {key[2]} threads={key[3] or 'auto'}"]
    for t in peers.TARGETS:
        row = next(cells for cells in rows if cells[0].strip() == t.name and cells[3].strip() == t.against)
        if not row[5].strip():
            continue                                 # torch not installed: the row says so
        ratio = float(row[5].split("x")[0])
        mine = result((t.case, t.K, t.dtype, t.threads))["mpisub"]["seconds"]
        base = result(t.baseline_key)
        other = base[t.against]["seconds"] if t.peer else base["mpisub"]["seconds"]
        expected = mine / other if t.peer else other / mine   # a variant is shown as "N x faster"
        assert abs(ratio - expected) <= 0.006, row   # printed with two decimals
        assert row[7].strip() == ("yes" if (expected if t.peer else 1 / expected) <= t.target else "NO"), row
    for case, target in peers.ROUND_TARGETS.items():
        got = result((case, 1, "float64", 0))
        row = next(cells for cells in rows if cells[0].strip() == f"{case}: whole round vs its products")
        ratio = got["mpisub"]["seconds"] / got["bare products"]
        assert abs(float(row[5].split("x")[0]) - ratio) <= 0.006
        assert row[7].strip() == ("yes" if ratio <= target else "NO")
    for case in peers.CASES:
        row = next(cells for cells in rows if cells[0].strip().startswith(f"{case}: evaluations"))
        share = result((case, 1, "float64", 0))["mpisub"]["evaluation_share"]
        assert 0 <= share <= 1 and abs(float(row[5]) - share) <= 0.0006
        assert row[7].strip() == ("yes" if share <= peers.INSTRUMENTS_SHARE else "NO")
    # the baselines reproduced mpisub's weights, so the three measured the same computation
    for key, value in res["results"].items():
        for how in ("numpy", "torch"):
            if how in value:
                assert value[how]["agrees"] <= 1e-10, (key, how)
    assert 0 < res["second_launch_seconds"] < 60

def test_mpisub_bench_reports_every_case_at_the_ranks_asked_for(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "mpisub-bench")
    out = tmp_path / "bench.json"
    r = subprocess.run([exe, "--quick", "--ranks", "2", "--rounds", "2", "--json", str(out)], capture_output=True,
                       text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())["results"]
    assert sorted(res) == ["dropout K=2", "multisample K=2", "paper K=2", "theory-small K=2", "wide-ist K=2"]
    for name, numbers in res.items():
        assert all(v >= 0 for v in numbers["split"].values()), name
        assert len(numbers["peak_rss_mb"]) == 2 and min(numbers["peak_rss_mb"]) > 50
        assert f"{name}: {numbers['seconds']:.4f} s/round" in r.stdout
    assert res["wide-ist K=2"]["bytes_per_round"] > 0   # two ranks exchange something every round

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
        code = ("import numpy as np, mpisub; from mpisub.nn import kernels; kernels.compile_for(np.float64); "
                "print(mpisub.__file__)")
        env = {**os.environ, "PYTHONPATH": str(mnt), "HOME": str(home)}
        env.pop("NUMBA_CACHE_DIR", None)
        stamps = []
        for _ in range(2):
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                               cwd=tmp_path)
            assert r.returncode == 0 and r.stdout.strip().startswith(str(mnt)), r.stderr
            stamps.append({p: p.stat().st_mtime_ns for p in home.rglob("*") if p.suffix in (".nbi", ".nbc")})
        assert any("_step" in p.name for p in stamps[0]), "no kernel cached in ~/.cache/numba"
        assert stamps[1] == stamps[0], "the second launch compiled again"
        assert not list(src.rglob("*.nbi"))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)

def test_a_launch_compiles_only_the_kernels_its_plan_uses_and_knows_a_cold_cache(tmp_path):
    """With an empty numba cache, cache_is_cold() says so; compile_for(dtype, "rows") caches the
    local step and the evaluation but not plan outputs' kernels; then the cache is warm."""
    code = ("import numpy as np; from mpisub.nn import kernels; print(kernels.cache_is_cold()); "
            "kernels.compile_for(np.float64, 'rows'); print(kernels.cache_is_cold())")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.split() == ["True", "False"], r.stdout + r.stderr
    cached = {p.name.split(".")[1].rsplit("-", 1)[0] for p in tmp_path.rglob("*.nbi")}
    assert {"_step", "output_and_pattern", "residual"} <= cached, cached
    assert not cached & {"part_forward", "part_backward"}, cached
