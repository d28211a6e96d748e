"""The group-sequential boundaries: the checked-in table is what the code writes, and independent
computations agree with it (the first look exactly, every look's cumulative crossing rate by a
simulation built another way, under the Gaussian and under a collapsing arm); the allocator asks
for the right trials."""

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
    assert sequential.boundaries(looks, 0.05, 2.0) == tuple(stored["boundaries"][sequential.design_key(looks, 0.05, 2.0)])
    fresh = sequential.calibrate(looks, 0.05, 2.0)
    assert np.allclose(fresh, sequential.boundaries(looks, 0.05, 2.0), atol=1e-4)


def test_the_boundary_table_recalibrated_on_fewer_draws_is_the_checked_in_one(tmp_path, capsys):
    """``python -m study.sequential --write-table`` at 20,000 draws a design (the table: 1,000,000):
    the same designs, every boundary within 10% of the checked-in one (its Monte Carlo error at
    the first looks, which spend the least alpha), the last looks within 5%; the table it prints
    is the one it wrote."""
    out = tmp_path / "boundaries.json"
    assert sequential.main(["--write-table", "--draws", "20000", "--out", str(out)]) == 0
    written, shipped = (json.loads(path.read_text())["boundaries"] for path in (out, sequential.TABLE))
    assert written.keys() == shipped.keys() and json.loads(out.read_text())["draws"] == 20000
    for key, bounds in written.items():
        assert np.allclose(bounds, shipped[key], rtol=0.10), key
        assert bounds[-1] == pytest.approx(shipped[key][-1], rel=0.05), key
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[0] == next(iter(written)) and len(printed) == len(written)
    assert not out.with_suffix(".tmp").exists()


@pytest.mark.parametrize("looks", [tuple(range(3, 13)), tuple(range(4, 13)), (4, 8, 12), (5,)])
def test_the_first_gaussian_boundary_is_the_t_quantile_of_what_the_first_look_spends(looks):
    """At the first look only that look's statistic counts: under the Gaussian alone ``c`` is
    exactly Student's quantile; the design's boundary (the largest over the laws) is no smaller."""
    alpha = 0.05 * (looks[0] / looks[-1]) ** 2
    exact = stats.t.ppf(1 - alpha / 2, looks[0] - 1)
    gaussian = sequential.calibrate(looks, 0.05, 2.0, draws=400_000, laws=("gaussian",))
    assert gaussian[0] == pytest.approx(exact, rel=0.02)
    assert sequential.boundaries(looks, 0.05, 2.0)[0] >= gaussian[0] * 0.99


def crossing_rates(bounds, looks, draw, seed):
    """Cumulative share of 400,000 null studies whose |t| crossed a boundary by each look, the
    statistics updated seed by seed (Welford's running mean and sum of squares), another generator."""
    rng, draws = np.random.Generator(np.random.MT19937(seed)), 400_000
    mean, squares = np.zeros(draws), np.zeros(draws)
    crossed = np.zeros(draws, dtype=bool)
    rates = []
    for n in range(1, looks[-1] + 1):
        x = draw(rng, draws)
        delta = x - mean
        mean += delta / n
        squares += delta * (x - mean)
        if n in looks:
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.abs(mean) * np.sqrt(n) / np.sqrt(squares / (n - 1))
            crossed |= ~(t <= bounds[looks.index(n)])
            rates.append(crossed.mean())
    return np.asarray(rates)


def test_the_gaussian_boundaries_spend_alpha_as_planned_by_a_simulation_built_another_way():
    looks = tuple(range(4, 13))
    bounds = list(sequential.calibrate(looks, 0.05, 2.0, laws=("gaussian",)))
    rates = crossing_rates(bounds, looks, lambda rng, n: rng.normal(size=n), 7)
    planned = sequential.spent(looks, 0.05, 2.0)
    error = np.sqrt(planned * (1 - planned) / 400_000)
    assert np.all(np.abs(rates - planned) < 4 * error + 1e-3), (rates, planned)


@pytest.mark.parametrize("rho", [0.5, 2.0])
def test_the_design_spends_no_more_than_alpha_under_a_collapsing_arm_or_a_skewed_one(rho):
    """The table's boundaries, checked by the other simulation under two laws of the family: a drop
    of 4 sd on 10% of seeds, and one arm's exponential outcome; the plan crosses at most alpha."""
    looks = tuple(range(4, 13))
    bounds = list(sequential.boundaries(looks, 0.05, rho))
    laws = {"collapse": lambda rng, n: rng.normal(size=n) - 4.0 * (rng.random(n) < 0.1) + 0.4,
            "skewed": lambda rng, n: (rng.exponential(size=n) - 1.0 - rng.normal(size=n)) / np.sqrt(2)}
    for name, draw in laws.items():
        rates = crossing_rates(bounds, looks, draw, 11)
        assert rates[-1] < 0.05 + 4 * np.sqrt(0.05 * 0.95 / 400_000), (name, rates)


def test_a_design_outside_the_table_is_calibrated_and_bad_looks_refused():
    assert len(sequential.boundaries((4, 6, 8), 0.1)) == 3  # calibrated now
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
    scores = {"psi": {i: x for i, x in enumerate(noisy)}, "other": {i: 0.0 for i in range(12)}}
    path = sequential.allocate(scores, "psi", ["other"], design).paths["other"]
    assert [l.seeds for l in path] == list(range(4, 13)) and path[-1].decision == sequential.AT_MAXIMUM


def test_the_interval_where_a_gaussian_study_stops_covers_at_least_95_percent():
    """The real looks and decisions, 2,000 simulated comparisons with a true difference of 1 sd: the
    interval at the look where each stopped keeps the truth at least 0.94 of the time (it is
    conservative by design: 0.95 for the whole plan), and most are decided."""
    from benchmarks.sequential_coverage import gaussian, measure

    coverage, decided, seeds = measure(gaussian, 1.0, sequential.SequentialDesign(), 2000, np.random.default_rng(4))
    assert coverage >= 0.94 and decided > 0.5 and seeds < 12


def test_the_allocator_asks_for_the_first_look_then_only_the_open_comparisons_next_seed():
    design = sequential.SequentialDesign(min_seeds=3, max_seeds=5)
    first = sequential.allocate({}, "psi", ["a", "b"], design)
    assert first.needed == [("psi", 0), ("a", 0), ("b", 0), ("psi", 1), ("a", 1), ("b", 1), ("psi", 2), ("a", 2), ("b", 2)]
    scores = {"psi": {0: 1.0, 1: 1.1, 2: 0.9}, "a": {0: -5.0, 1: -5.1, 2: -4.9}, "b": {0: 1.0, 1: 0.2, 2: 2.0}}
    after = sequential.allocate(scores, "psi", ["a", "b"], design)
    assert after.paths["a"][-1].decision == sequential.AHEAD and after.paths["b"][-1].decision == sequential.CONTINUE
    assert after.needed == [("psi", 3), ("b", 3)] and after.open() == ["b"]
    scores["b"][3], scores["psi"][3] = None, 1.0  # b's fourth trial failed
    failed = sequential.allocate(scores, "psi", ["a", "b"], design)
    assert failed.paths["b"][-1].decision == sequential.FAILED and failed.done


def test_on_problems_like_these_the_interval_adds_the_problem_margin_and_a_margin_bound_comparison_stops():
    design = sequential.SequentialDesign(min_seeds=3, max_seeds=6, problems=sequential.LIKE_THESE)
    assert design.seed_alpha == 0.04 and design.boundary(3) > sequential.SequentialDesign(3, 6).boundary(3)
    rng = np.random.default_rng(0)
    per_problem = rng.normal(0.0, 1.0, (3, 400))  # 3 seeds x 400 problems, the problem effect alone
    margin = design.problem_margin(per_problem)
    z = stats.norm.ppf(1 - 0.05 * sequential.PROBLEM_SHARE / 2)
    assert margin == pytest.approx(z * per_problem.mean(axis=0).std(ddof=1) / 20)
    tight = sequential.look([0.01, 0.012, 0.011], design, margin)  # seeds agree, the difference is inside the margin
    assert tight.decision == sequential.FUTILE and tight.problem_margin == margin
    assert tight.high - tight.low == pytest.approx(2 * (design.boundary(3) * np.std([0.01, 0.012, 0.011], ddof=1) / np.sqrt(3) + margin))
    assert sequential.look([1.0, 1.02, 1.01], design, margin).decision == sequential.AHEAD
    assert sequential.SequentialDesign(3, 6).problem_margin(per_problem) == 0.0  # these problems: no margin
    scores = {"psi": {0: 0.011, 1: 0.013, 2: 0.012}, "a": {0: 0.001, 1: 0.001, 2: 0.001}}
    problems = {"psi": {i: per_problem[i] for i in range(3)}, "a": {i: np.zeros(400) for i in range(3)}}
    stopped = sequential.allocate(scores, "psi", ["a"], design, problems)
    assert stopped.paths["a"][-1].decision == sequential.FUTILE and stopped.done
