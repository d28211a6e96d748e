"""The group-sequential boundaries: the checked-in table is what the code writes, and independent
computations agree with it (the first look exactly, every look's cumulative crossing rate by a
simulation built another way)."""

import json

import numpy as np
import pytest
from scipy import stats

from study import sequential


def test_the_table_holds_every_planned_design_and_the_code_reproduces_an_entry():
    stored = json.loads(sequential.TABLE.read_text())
    assert stored["draws"] == sequential.DRAWS and stored["seed"] == sequential.CALIBRATION_SEED
    assert set(stored["boundaries"]) == {sequential.design_key(*d) for d in sequential.table_designs()}
    looks = tuple(range(6, 13))
    assert sequential.boundaries(looks, 0.05) == tuple(stored["boundaries"][sequential.design_key(looks, 0.05, 2.0)])
    fresh = sequential.calibrate(looks, 0.05, 2.0)
    assert np.allclose(fresh, sequential.boundaries(looks, 0.05), atol=1e-4)


@pytest.mark.parametrize("looks", [tuple(range(3, 13)), tuple(range(4, 13)), (4, 8, 12), (5,)])
def test_the_first_boundary_is_the_t_quantile_of_what_the_first_look_spends(looks):
    """At the first look only that look's statistic counts: ``c`` is exactly Student's quantile."""
    alpha = 0.05 * (looks[0] / looks[-1]) ** 2
    exact = stats.t.ppf(1 - alpha / 2, looks[0] - 1)
    assert sequential.boundaries(looks, 0.05)[0] == pytest.approx(exact, rel=0.02)


def test_the_boundaries_spend_alpha_as_planned_by_a_simulation_built_another_way():
    """Seed differences drawn as a Gaussian mean and chi-square sums of squares, updated look by
    look (Helmert's decomposition), another generator and seed: the share of null studies that
    have crossed by each look is the planned spending, within 4 binomial standard errors."""
    looks = tuple(range(4, 13))
    bounds = np.asarray(sequential.boundaries(looks, 0.05))
    rng, draws = np.random.Generator(np.random.MT19937(7)), 400_000
    total, squares = np.zeros(draws), np.zeros(draws)
    crossed = np.zeros(draws, dtype=bool)
    rates = []
    for n in range(1, looks[-1] + 1):
        x = rng.normal(size=draws)
        if n > 1:  # the within sum of squares grows by (n-1)/n (x - previous mean)^2
            squares += (n - 1) / n * (x - total / (n - 1)) ** 2
        total += x
        if n in looks:
            t = np.abs(total / n) * np.sqrt(n) / np.sqrt(squares / (n - 1))
            crossed |= t > bounds[looks.index(n)]
            rates.append(crossed.mean())
    planned = sequential.spent(looks, 0.05, 2.0)
    error = np.sqrt(planned * (1 - planned) / draws)
    assert np.all(np.abs(np.asarray(rates) - planned) < 4 * error + 1e-3), (rates, planned)


def test_a_design_outside_the_table_is_calibrated_and_bad_looks_refused():
    assert len(sequential.boundaries((4, 6, 8), 0.1)) == 3
    with pytest.raises(ValueError, match="increasing seed counts of at least 2"):
        sequential.boundaries((1, 3), 0.05)


def test_a_look_is_the_repeated_interval_and_decides_by_it():
    design = sequential.SequentialDesign(min_seeds=4, max_seeds=12, equivalence=0.5)
    d = [1.0, 1.2, 0.8, 1.1]
    first = sequential.look(d, design)
    half = design.boundary(4) * np.std(d, ddof=1) / 2
    assert (first.seeds, first.estimate) == (4, pytest.approx(1.025))
    assert (first.low, first.high) == (pytest.approx(1.025 - half), pytest.approx(1.025 + half))
    assert first.decision == sequential.AHEAD
    assert sequential.look([-x for x in d], design).decision == sequential.BEHIND
    assert sequential.look([0.01, -0.01, 0.02, -0.02], design).decision == sequential.EQUIVALENT
    assert sequential.look([1.0, -1.0, 2.0, -2.0], design).decision == sequential.CONTINUE
    noisy = [1.0, -1.0, 2.0, -2.0] * 3
    path = sequential.run_sequence(noisy, design)
    assert [l.seeds for l in path] == list(range(4, 13)) and path[-1].decision == sequential.AT_MAXIMUM


def test_the_interval_where_a_gaussian_study_stops_covers_at_least_95_percent():
    """The real looks and decisions, 2,000 simulated comparisons with a true difference of 1 sd: the
    interval at the look where each stopped keeps the truth at least 0.94 of the time (it is
    conservative by design: 0.95 for the whole plan), and most are decided."""
    from benchmarks.sequential_coverage import gaussian, measure

    coverage, decided, seeds = measure(gaussian, 1.0, sequential.SequentialDesign(), 2000, np.random.default_rng(4))
    assert coverage >= 0.94 and decided > 0.7 and seeds < 12
