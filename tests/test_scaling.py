"""lfm2engine.scaling: the closed-form compute-optimal allocation against two independent numerical
searches (golden section and a dense log-space grid), the loss formula by hand, fits that recover a
known synthetic law, and rejection of bad input."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from lfm2engine.errors import InputError
from lfm2engine.scaling import (
    DEFAULT_LAW,
    ScalingLaw,
    fit,
    isoflop_curve,
    loss_at_compute,
    optimal_allocation,
    optimal_allocation_numeric,
)

LAWS = [DEFAULT_LAW, ScalingLaw(A=482.0, alpha=0.35, B=2085.4, beta=0.37, E=1.82), ScalingLaw(1.0, 0.5, 1.0, 0.5, 0.0)]


def test_loss_by_hand():
    # 406.4 / 1e9^0.34 + 410.7 / 1e10^0.29 + 1.69, exponents worked out with logs base 10.
    expected = 406.4 / 10 ** (9 * 0.34) + 410.7 / 10 ** (10 * 0.29) + 1.69
    assert DEFAULT_LAW.loss(1e9, 1e10) == pytest.approx(expected, rel=1e-14)
    # 406.4 / 1148.2 + 410.7 / 794.3 + 1.69
    assert DEFAULT_LAW.loss(1e9, 1e10) == pytest.approx(0.35396 + 0.51704 + 1.69, abs=1e-4)


@pytest.mark.parametrize("law", LAWS)
@pytest.mark.parametrize("compute", [1e18, 5.616e23, 1e26])
def test_closed_form_matches_golden_section_and_grid(law, compute):
    n, d = optimal_allocation(compute, law)
    assert 6 * n * d == pytest.approx(compute, rel=1e-12)
    n_gs, d_gs = optimal_allocation_numeric(compute, law)
    assert n_gs == pytest.approx(n, rel=1e-6)
    assert 6 * n_gs * d_gs == pytest.approx(compute, rel=1e-12)
    # Dense grid in log N, independent of both: the best grid point lies within one grid step of N_opt.
    grid = np.exp(np.linspace(math.log(n) - 3, math.log(n) + 3, 6001))
    losses = isoflop_curve(compute, grid, law)
    step = 6 / 6000
    assert abs(math.log(grid[int(np.argmin(losses))]) - math.log(n)) <= step
    # The optimum is a minimum: moving N by 1% either way costs loss.
    l0 = loss_at_compute(n, compute, law)
    assert loss_at_compute(n * 1.01, compute, law) > l0 < loss_at_compute(n / 1.01, compute, law)


def test_optimum_satisfies_first_order_condition():
    # alpha A N^-alpha = beta B D^-beta at the optimum.
    law = DEFAULT_LAW
    n, d = optimal_allocation(1e22, law)
    assert law.alpha * law.A * n ** -law.alpha == pytest.approx(law.beta * law.B * d ** -law.beta, rel=1e-10)


def test_fit_recovers_a_synthetic_law():
    truth = ScalingLaw(A=406.4, alpha=0.34, B=410.7, beta=0.29, E=1.69)
    rng = np.random.default_rng(0)
    n = 10 ** rng.uniform(7, 11, 60)
    d = 10 ** rng.uniform(9, 12.5, 60)
    y = np.array([truth.loss(a, b) for a, b in zip(n, d, strict=True)])
    got = fit(n, d, y)
    assert got.alpha == pytest.approx(truth.alpha, abs=0.01)
    assert got.beta == pytest.approx(truth.beta, abs=0.01)
    assert got.E == pytest.approx(truth.E, abs=0.02)
    # The fitted law predicts unseen points and the optimum well.
    assert got.loss(3e10, 6e11) == pytest.approx(truth.loss(3e10, 6e11), rel=2e-3)
    assert optimal_allocation(1e23, got)[0] == pytest.approx(optimal_allocation(1e23, truth)[0], rel=0.1)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ScalingLaw(A=-1.0), 'A must be a finite number > 0, found -1.0'),
        (lambda: ScalingLaw(alpha=0.0), 'alpha must be a finite number > 0, found 0.0'),
        (lambda: ScalingLaw(E=-0.1), 'E must be a finite number >= 0, found -0.1'),
        (lambda: ScalingLaw(beta=float("nan")), 'beta must be a finite number > 0, found nan'),
        (lambda: DEFAULT_LAW.loss(-5, 1e9), 'N must be a finite number > 0, found -5'),
        (lambda: DEFAULT_LAW.loss(1e9, 0), 'D must be a finite number > 0, found 0'),
        (lambda: optimal_allocation(-1.0), 'compute C (FLOPs) must be a finite number > 0,'),
        (lambda: optimal_allocation(0), 'compute C (FLOPs) must be a finite number > 0,'),
        (lambda: optimal_allocation("1e20"), "compute C (FLOPs) must be a number, found '1e20'"),
        (lambda: optimal_allocation_numeric(3.0), 'compute C = 3 FLOPs is too small: it must'),
        (lambda: fit([1, 2, 3], [1, 2, 3], [1, 2, 3]), 'fit needs at least 5 observations for 5'),
        (lambda: fit([1e9] * 5, [1e9] * 5, [2.0, 2.0, -1.0, 2.0, 2.0]), 'fit: every loss must be finite and > 0'),
        (lambda: fit([1e9] * 5, [1e9] * 4, [2.0] * 5), 'fit needs three 1-D sequences of equal length,'),
    ],
)
def test_bad_input_is_rejected(call, match):
    with pytest.raises(InputError, match=re.escape(match)):
        call()
