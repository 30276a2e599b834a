"""The paper's instruments in plain numpy: the NTK Gram matrix, linear rates, a curve's early rate and plateau."""
import math

import numpy as np

from mpisub import theory


def test_ntk_kernel_is_the_expectation_it_claims_to_be():
    """H_ij = E_w[<x_i,x_j> 1{w.x_i > 0} 1{w.x_j > 0}], w ~ N(0, I): check by sampling."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5, 3)) * rng.uniform(0.5, 2, (5, 1))
    w = rng.standard_normal((400_000, 3))
    on = (X @ w.T > 0).astype(float)
    mc = (X @ X.T) * (on @ on.T) / w.shape[0]
    np.testing.assert_allclose(theory.gram_rows(X, 0, 5), mc, atol=0.01)
    np.testing.assert_allclose(theory.gram_rows(X, 1, 3), theory.gram_rows(X, 0, 5)[1:3])


def test_linear_rate_recovers_a_known_rate():
    loss = 3.0 * 0.9 ** np.arange(1, 41)
    assert math.isclose(theory.linear_rate(loss), 0.9, rel_tol=1e-12)
    assert theory.linear_rate(np.array([1.0])) is None


def test_curve_summary_finds_the_early_rate_and_the_plateau():
    """A known curve: loss_k = 0.9^k + 1e-3 over 200 rounds, evaluated every other round. The
    whole-curve fit is dragged up by the plateau; the early-phase fit is 0.9, the plateau 1e-3."""
    k = np.arange(0, 201, 2)
    floor = theory.curve_summary(k, 0.9 ** k + 1e-3)
    assert abs(floor["early_rate"] - 0.9) < 0.005 and floor["plateaued"]
    assert abs(floor["plateau"] / 1e-3 - 1) < 0.01
    assert theory.linear_rate((0.9 ** k + 1e-3)[1:], k[1:]) > 0.95        # what the whole-curve fit says
    falling = theory.curve_summary(k[:51], 0.9 ** k[:51])                 # no floor reached in 100 rounds
    assert abs(falling["early_rate"] - 0.9) < 1e-9 and not falling["plateaued"]
    assert theory.curve_summary([0], [1.0])["early_rate"] is None
