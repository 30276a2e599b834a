"""mpisub-bench and benchmarks/peers.py: the peers' rounds compute mpisub's algorithm, and the
tables say what was measured. (Speed itself is not asserted here: the machine is shared; the
benchmarks print ratios.)"""
import math

import numpy as np
import peers  # benchmarks/peers.py (pyproject.toml puts benchmarks/ on the tests' path)
import pytest
from helpers.reference import replay

from mpisub.nn import masks


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
        W_np, loss = peers.numpy_round(W_np, a, X, Y, M[k], keep, 0.3, 2)
        assert math.isclose(loss, losses[k], rel_tol=1e-10)
    np.testing.assert_allclose(W_np, W_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind,p,keep", [("bernoulli", 3, 0.5), ("partition", 4, 0.25)])
def test_torch_round_matches_the_reference_replay(kind, p, keep):
    torch = pytest.importorskip("torch", reason="torch is optional and kept out of CI (pip install torch==2.13.0)")
    X, Y, W, a, M = _problem(kind, p, keep)
    W_ref, losses, _ = replay(W, a, X, Y, M, keep, lr=0.3, local_steps=2)
    W_t = torch.from_numpy(W)
    for k in range(3):
        W_t, loss = peers.torch_round(torch, W_t, torch.from_numpy(a), torch.from_numpy(X), torch.from_numpy(Y),
                                      M[k], keep, 0.3, 2)
        assert math.isclose(loss, losses[k], rel_tol=1e-10)
    np.testing.assert_allclose(W_t.numpy(), W_ref, rtol=1e-10, atol=1e-12)








def test_scaling_at_ranks_that_do_not_divide_its_subnetworks_is_one_line(capsys):
    from mpisub.bench.cases import bench_main
    with pytest.raises(SystemExit) as e:
        bench_main(["--scaling", "--ranks", "2", "3"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == ("mpisub-bench: error: --ranks 3: the scaling case trains masks.subnets "
                                               "= 8 under plan rows at every K; give ranks that divide 8 (e.g. "
                                               "--ranks 1 2 4 8)")


