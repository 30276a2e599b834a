"""The paper's instruments in plain numpy: the NTK Gram matrix, linear rates, a curve's early rate and plateau."""
import math

import numpy as np

from mpisub.nn import theory


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


def test_a_short_run_still_falling_three_percent_a_round_has_not_plateaued():
    """20 rounds falling 3% a round: the last quarter drops only 1.16x, which the old 1.5x rule
    called plateaued; falling 0.5% a round is a plateau."""
    k = np.arange(0, 21)
    assert not theory.curve_summary(k, 0.97 ** k)["plateaued"]
    assert theory.curve_summary(k, 0.995 ** k)["plateaued"]


def authors_rule(error_hist, window_size, floor, patience_limit=0, reset=True):
    """MaskedNTK-TMLR's loops on a given history (window_size = points - 1): heatmap_exp.py's
    (patience reset on a new best, stop at patience > 0 or a best below the floor) and, with
    reset=False and patience_limit=5, resnet_cifar_experiments.IST_Converge's (Fig. 2c: stop at
    patience > 5, never reset, no floor)."""
    best_avg, gstep, patience = float("inf"), 0, 0
    while gstep + 1 < len(error_hist):
        gstep += 1
        avg = np.mean(error_hist[np.maximum(0, gstep - window_size):gstep + 1])
        if avg < best_avg:
            best_avg = avg
            patience = 0 if reset else patience
        else:
            patience += 1
        if patience > patience_limit or best_avg < floor:
            return gstep, best_avg
    return None, best_avg


def test_running_plateau_is_the_authors_stopping_rule():
    rng = np.random.default_rng(3)
    for trial in range(200):
        n = int(rng.integers(2, 80))
        losses = np.exp(-rng.uniform(0, 0.3) * np.arange(n)) + rng.uniform(0, 0.05) * rng.random(n)
        points, floor = int(rng.integers(1, 15)), float(rng.choice([0.0, 0.05, 0.2]))
        got, want = theory.running_plateau(losses, points, floor), authors_rule(losses, points - 1, floor)
        assert got[0] == want[0] and math.isclose(got[1], want[1], rel_tol=1e-12), (trial, got, want)
        got, want = theory.running_plateau(losses, 11, 0.0, 6), authors_rule(losses, 10, 0.0, 5, reset=False)
        assert got[0] == want[0] and math.isclose(got[1], want[1], rel_tol=1e-12), (trial, got, want)


def test_lambda_max_and_the_step_number():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((100, 6))
    H = theory.gram_rows(X, 0, 100)
    top = np.linalg.eigvalsh(H)[-1]
    assert math.isclose(theory.largest_eigenvalue(H), top, rel_tol=1e-9)
    assert math.isclose(theory.largest_eigenvalue(H[:10, :10]), np.linalg.eigvalsh(H[:10, :10])[-1], rel_tol=1e-12)
    # the linearised surrogate step: residual modes scale by 1 - lr lambda / (n keep); the top one
    # flips sign and grows past step number 2
    lr, keep = 3.0, 0.5
    step = theory.step_number(lr, top, 100, keep)
    factor = 1 - lr * top / (100 * keep)
    assert math.isclose(step, 1 - factor, rel_tol=1e-12) and (abs(factor) > 1) == (step > 2)


def test_the_plateau_interval_over_seeds_is_students_t():
    """Three seeds 1, 2, 3: mean 2, std 1, t(0.975, 2 dof) = 4.3027 (tables): 2 -+ 4.3027 / sqrt(3)."""
    from mpisub.analysis.report import plateau_interval
    half = 4.302653 / math.sqrt(3)
    assert plateau_interval([1.0, 2.0, 3.0, None]) == f"plateau 2 (95% CI {2 - half:.4g} to {2 + half:.4g})"
    assert plateau_interval([1.0]) == ""
