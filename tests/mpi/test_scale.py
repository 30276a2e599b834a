"""Owner storage and one copy of the data per node (docs/design.md, section 3): the multi-node
paths run here through the fake-node hook (MPISUB_FAKE_NODE_SIZE), and give the bits of one node;
the exchange plan against an independent statement; the scaling report against its model."""
import json
import subprocess

import numpy as np
import pytest
from helpers.jobs import BIN, ONE_THREAD, mpirun, sets

from mpisub.io.readback import read_run

JOB = dict(data__n=48, data__d=6, data__outputs=2, model__width=96, train__rounds=4, train__local_steps=2,
           train__lr=1.5, output__record_masks=True, masks__subnets=4, train__plan="rows")


@pytest.mark.parametrize("kind", ["partition", "bernoulli"])
def test_two_fake_nodes_of_two_ranks_give_the_bits_of_one_rank(tmp_path, kind):
    extra = dict(masks__kind=kind, **({"masks__keep": 0.6} if kind == "bernoulli" else {}))
    one = mpirun(1, *sets(output__dir="one", **JOB, **extra), cwd=tmp_path, env=ONE_THREAD)
    assert one.returncode == 0, one.stderr
    nodes = mpirun(4, *sets(output__dir="nodes", **JOB, **extra), cwd=tmp_path,
                   env={**ONE_THREAD, "MPISUB_FAKE_NODE_SIZE": "2"})
    assert nodes.returncode == 0, nodes.stderr
    assert "# 4 rank(s) on 2 node(s) (one copy of the data each)" in nodes.stdout
    a, b = read_run(str(tmp_path / "one")), read_run(str(tmp_path / "nodes"))
    assert a["model/W"].tobytes() == b["model/W"].tobytes()       # every rank saw the node's one copy
    assert a["model/W_init"].tobytes() == b["model/W_init"].tobytes()
    np.testing.assert_array_equal(a["data/X"], b["data/X"])


@pytest.mark.parametrize("name,value", [("MPISUB_FAKE_NODE_SIZE", "two"), ("SLURM_CPUS_PER_TASK", "\u00b2"),
                                        ("MPISUB_MAX_COUNT", "0"), ("SLURM_STEP_NUM_TASKS", "4x"),
                                        ("MPISUB_LOCK_WAIT", "nan")])
def test_a_bad_number_in_the_environment_is_one_line(tmp_path, name, value):
    """One parser for them all (errors.env_number): '²'.isdigit() holds but int('²') fails."""
    r = mpirun(2, cwd=tmp_path, env={name: value})
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"mpisub-train: error: {name} = {value!r} is not a {'number' if name == 'MPISUB_LOCK_WAIT' else 'whole number'}"
        f" of at least {0 if name == 'MPISUB_LOCK_WAIT' else 1}; unset it or give e.g. "
        f"{'10.0' if name == 'MPISUB_LOCK_WAIT' else 2**31 - 1 if name == 'MPISUB_MAX_COUNT' else 1}"], r.stderr
    assert not (tmp_path / "runs").exists()


def test_the_scaling_report_measures_what_its_model_says(tmp_path):
    out = tmp_path / "scaling.json"
    r = subprocess.run([f"{BIN}/mpisub-bench", "--scaling", "--width", "4096", "--strong-width", "16384",
                        "--ranks", "2", "4", "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())
    rows = {row["K"]: row for row in report["traffic"]}
    assert sorted(rows) == [2, 4, 16, 64, 256, 1024] and "sent" not in rows[16]
    for K in (2, 4):
        for measured, model in ((rows[K]["sent"] + rows[K]["recv"], rows[K]["rows_sent"] + rows[K]["rows_recv"]),
                                (rows[K]["outputs_sent"] + rows[K]["outputs_recv"], rows[K]["outputs_bytes"])):
            assert abs(measured / model - 1) <= 0.10, (K, measured, model)
    # the model: traffic per rank falls with K for owner storage, not for the replicated design
    assert rows[1024]["rows_sent"] < rows[16]["rows_sent"] < rows[2]["rows_sent"]
    assert rows[1024]["replicated_recv"] > rows[2]["replicated_recv"]
    assert f"{'K':>5} |" in r.stdout
    # the cluster model: every input named, efficiency with checkpoints on at every K of the strong
    # table, the sharded checkpoints' never below rank 0's whole-W writes; rounds to a target measured
    cluster = report["cluster"]
    assert set(cluster["sharded"]) == {str(K) for K in (1, 4, 16, 64, 256, 1024)}
    assert all(cluster["sharded"][K] >= cluster["before"][K] for K in cluster["sharded"])
    assert all(row["rounds"] is None or row["rounds"] >= 1 for row in cluster["target"].values())
    assert "(measured)" in r.stdout and "(assumed)" in r.stdout
    # sharded checkpoints: at K = 4 rank 0 writes at most half what it writes at K = 1, and no rank
    # more than its rows (W/K per checkpoint, and W_init's) and 2 MiB a file (HDF5's metadata, numba's cache)
    one, four = report["writes"]
    assert (one["K"], four["K"]) == (1, 4) and four["rank0"] <= 0.5 * one["rank0"], report["writes"]
    assert max(four["rank0"], four["others"]) <= four["shares"] + 5 * 2 * 2**20, report["writes"]
    # the same job in 2, 64, 512 subnetworks, run as a user runs it
    assert [row["p"] for row in report["subnets"]] == [2, 64, 512]
    assert all(row["compute"] > row["local"] > 0 and row["peak_rss_mb"] > 0 for row in report["subnets"])
    # strong scaling: every block fits here, so every bookkeeping is measured; a round is its parts,
    # the efficiency T(1) / (K T(K)), the memory estimate falls with K
    for case in ("ist", "moonshot"):
        strong = [row for row in report["strong"] if row["case"] == case]
        assert [row["K"] for row in strong] == [1, 4, 16, 64, 256, 1024] and all(row["book_measured"] for row in strong)
        for row in strong:
            assert row["seconds"] == row["local"] + row["bookkeeping"] + row["comm"]
            assert abs(row["efficiency"] - strong[0]["seconds"] / (row["K"] * row["seconds"])) < 1e-12
            assert row["local"] > 0 and row["bookkeeping"] > 0 and row["plan_seconds"] > 0 and row["plan_mib"] > 0
        assert strong[0]["comm"] == 0 < strong[1]["comm"]
        assert [row["memory_mib"] for row in strong] == sorted((row["memory_mib"] for row in strong), reverse=True)


PLAN_JOB = dict(data__n=40, data__d=5, data__outputs=2, model__width=24, train__rounds=4, train__local_steps=3,
                train__lr=1.5, output__record_masks=True, output__eval_every=1)
PLAN_KINDS = {"partition": dict(masks__kind="partition", masks__subnets=4),
              "categorical": dict(masks__kind="categorical", masks__subnets=4),
              "bernoulli": dict(masks__kind="bernoulli", masks__subnets=4, masks__keep=0.6),
              "full": dict(masks__kind="full", masks__subnets=1)}


@pytest.mark.parametrize("kind,K", [("partition", 2), ("categorical", 4), ("bernoulli", 2), ("bernoulli", 3),
                                    ("full", 2)])
def test_plan_outputs_matches_the_replay_and_plan_rows(tmp_path, kind, K):
    """Neurons never move: every rank steps its rows of every subnetwork from the Allreduced
    outputs. Same mathematics as plan rows (to rounding), for any K, p a multiple of K or not."""
    from helpers.reference import replay
    keep = {"bernoulli": 0.6, "full": 1.0}.get(kind, 0.25)
    r = mpirun(K, *sets(output__dir="outputs", train__plan="outputs", **PLAN_JOB, **PLAN_KINDS[kind]),
               cwd=tmp_path, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    assert "# plan outputs: as set" in r.stdout
    run = read_run(str(tmp_path / "outputs"))
    W, losses, sub_losses = replay(run["model/W_init"], run["model/a"], run["data/X"], run["data/Y"],
                                   run["masks"].astype(float), keep, lr=1.5, local_steps=3)

    def rel(x, y):
        return np.abs(x - y).max() / np.abs(y).max()
    assert rel(W, run["model/W_init"]) > 1e-3
    assert rel(run["model/W"], W) <= 1e-10
    assert rel(run["eval"]["loss"][1:], losses) <= 1e-10
    assert rel(run["metrics"]["sub_loss"], sub_losses) <= 1e-10
    # the traffic target, 2 tau p n c 8 bytes per rank per round (x 1.1): one Allreduce of
    # the p x n x c outputs per local step, plus the evaluation every plan shares: n x c outputs, the
    # sub-loss sum, 4 flags and 3 lazy-regime sums in one Allreduce, and one max
    n, c, p, tau = 40, 2, PLAN_KINDS[kind]["masks__subnets"], 3
    moved = run["metrics"]["bytes_comm"] + run["metrics"]["bytes_recv"]
    np.testing.assert_array_equal(moved, 2 * tau * p * n * c * 8 + 2 * ((n * c + 8) * 8 + 8))
    r = mpirun(1, *sets(output__dir="rows", train__plan="rows", **PLAN_JOB, **PLAN_KINDS[kind]),
               cwd=tmp_path, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    assert rel(run["model/W"], read_run(str(tmp_path / "rows"))["model/W"]) <= 1e-12


def test_gd_at_two_ranks_is_gd_at_one_to_rounding(tmp_path):
    a = mpirun(1, "--preset", "gd", *sets(output__dir="one", train__rounds=15), cwd=tmp_path, env=ONE_THREAD)
    b = mpirun(2, "--preset", "gd", *sets(output__dir="two", train__rounds=15), cwd=tmp_path, env=ONE_THREAD)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    one, two = read_run(str(tmp_path / "one")), read_run(str(tmp_path / "two"))
    assert json.loads(two["attrs"]["config"])["train"]["plan"] == "outputs" and "outputs" in two["attrs"]["plan_reason"]
    np.testing.assert_allclose(two["model/W"], one["model/W"], rtol=0, atol=1e-12 * np.abs(one["model/W"]).max())
    np.testing.assert_allclose(two["eval"]["loss"], one["eval"]["loss"], rtol=1e-12)


def test_plan_outputs_on_two_fake_nodes_and_resumed_at_three_ranks(tmp_path):
    job = sets(train__plan="outputs", masks__kind="bernoulli", masks__subnets=4, masks__keep=0.5,
               train__rounds=12, output__checkpoint_every=5, model__width=256, data__n=64)
    unbroken = mpirun(4, *job, *sets(output__dir="unbroken"), cwd=tmp_path,
                      env={**ONE_THREAD, "MPISUB_FAKE_NODE_SIZE": "2"})
    assert unbroken.returncode == 0, unbroken.stderr
    part = mpirun(4, *job, *sets(output__dir="part"), "--set", "train.rounds=7", cwd=tmp_path,
                  env={**ONE_THREAD, "MPISUB_FAKE_NODE_SIZE": "2"})
    assert part.returncode == 0, part.stderr
    rest = mpirun(3, "--resume", "part", "--set", "train.rounds=12", cwd=tmp_path, env=ONE_THREAD)
    assert rest.returncode == 0, rest.stderr                           # p = 4 over 3 ranks: plan outputs
    a, b = read_run(str(tmp_path / "unbroken")), read_run(str(tmp_path / "part"))
    np.testing.assert_array_equal(b["metrics"]["round"], np.arange(1, 13))
    np.testing.assert_allclose(b["model/W"], a["model/W"], rtol=0, atol=1e-12 * np.abs(a["model/W"]).max())


def test_a_collective_past_the_count_limit_goes_in_pieces_with_the_same_bits(tmp_path):
    """MPISUB_MAX_COUNT = 7 forces every Allreduce (plan outputs' p x n x c, the loss's n x c + 3)
    into pieces of 7 elements: the same bits as whole buffers (elementwise sums over 2 ranks)."""
    job = sets(train__plan="outputs", masks__kind="bernoulli", masks__subnets=3, train__rounds=5, data__n=50,
               model__width=64)
    whole = mpirun(2, *job, *sets(output__dir="whole"), cwd=tmp_path, env=ONE_THREAD)
    cut = mpirun(2, *job, *sets(output__dir="cut"), cwd=tmp_path, env={**ONE_THREAD, "MPISUB_MAX_COUNT": "7"})
    assert whole.returncode == 0 and cut.returncode == 0, whole.stderr + cut.stderr
    a, b = read_run(str(tmp_path / "whole")), read_run(str(tmp_path / "cut"))
    assert a["model/W"].tobytes() == b["model/W"].tobytes()
    np.testing.assert_array_equal(a["eval"]["loss"], b["eval"]["loss"])
    assert a["lambda0"] == b["lambda0"]


def test_sixteen_ranks_oversubscribed_give_the_bits_of_one(tmp_path):
    """More ranks than cores (16 on this machine's 2): plan rows ends on the bits of one rank,
    plan outputs equal to rounding; bernoulli masks, whose neurons several subnetworks share."""
    job = dict(masks__kind="bernoulli", masks__subnets=16, masks__keep=0.4, model__width=640, data__n=64,
               train__rounds=4, output__eval_every=2, theory__max_n=0, train__lr=0.5)
    W = {}
    for K, plan in ((1, "rows"), (16, "rows"), (16, "outputs")):
        r = mpirun(K, *sets(output__dir=f"{plan}{K}", train__plan=plan, **job), cwd=tmp_path, env=ONE_THREAD,
                   timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        W[plan, K] = read_run(str(tmp_path / f"{plan}{K}"))["model/W"]
    assert W["rows", 1].tobytes() == W["rows", 16].tobytes()
    np.testing.assert_allclose(W["outputs", 16], W["rows", 1], rtol=0, atol=1e-12 * np.abs(W["rows", 1]).max())
    assert np.abs(W["rows", 1] - read_run(str(tmp_path / "rows1"))["model/W_init"]).max() > 1e-3
