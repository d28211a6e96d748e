"""Bootstrap intervals, paired comparisons and the selection split: hand-worked numbers and a
known-answer simulation (two arms with no true difference are "not distinguishable" about 95% of the time)."""

import numpy as np
import pytest

from analysis.stats import ArmScores, compare, mean_interval, selection_split


def arm(accuracy, length, seeds=(0,)):
    accuracy, length = np.atleast_2d(np.asarray(accuracy, float)), np.atleast_2d(np.asarray(length, float))
    return ArmScores(tuple(seeds), np.arange(accuracy.shape[1]), accuracy, length)


def test_an_interval_over_seeds_needs_two_of_them():
    one = mean_interval([1.4])
    assert (one.estimate, one.low, one.high, one.n) == (1.4, None, None, 1)
    same = mean_interval([2.0, 2.0, 2.0])
    assert (same.low, same.high) == (2.0, 2.0)
    # two values: resampled means are 1, 2, 3 with chances 1/4, 1/2, 1/4: the 95% interval is [1, 3]
    two = mean_interval([1.0, 3.0])
    assert (two.estimate, two.low, two.high) == (2.0, pytest.approx(1.0), pytest.approx(3.0))
    assert mean_interval([None, float("nan"), 2.0]).n == 1


def test_a_difference_on_every_problem_is_certain_and_aes_is_the_papers():
    psi, other = arm([[1.0] * 6], [[50.0] * 6]), arm([[0.0] * 6], [[100.0] * 6])
    result = compare(psi, other, base_accuracy=0.5, base_length=100.0)
    assert (result["accuracy"].difference, result["accuracy"].low, result["accuracy"].high) == (1.0, 1.0, 1.0)
    assert result["accuracy"].verdict == "ahead" and result["accuracy"].p_ahead == 1.0
    assert result["length"].difference == -50.0 and result["length"].verdict == "ahead"  # shorter is better
    # AES(1.0, 50) = 0.5 + 3 * 1 = 3.5; AES(0.0, 100) = 0 - 5 * 1 = -5.0
    assert result["aes"].difference == pytest.approx(8.5) and result["aes"].verdict == "ahead"
    worse = compare(other, psi, base_accuracy=0.5, base_length=100.0)
    assert worse["aes"].verdict == "behind" and worse["aes"].p_ahead == 0.0


def test_two_problems_give_the_worked_t_interval():
    # differences 0 and 1 on two problems: mean 0.5, sd sqrt(0.5), SE 0.5 on 1 degree of freedom,
    # t_0.975(1) = 12.706: the interval is 0.5 -+ 6.353; P(ahead) = the t(1) cdf at 0.5 / 0.5 = 0.75
    psi, other = arm([[1.0, 1.0]], [[10.0, 10.0]]), arm([[1.0, 0.0]], [[10.0, 10.0]])
    result = compare(psi, other, 0.5, 10.0)["accuracy"]
    assert result.difference == 0.5 and (result.low, result.high) == (pytest.approx(-5.853102), pytest.approx(6.853102))
    assert result.verdict == "not distinguishable" and result.p_ahead == pytest.approx(0.75)


def test_few_seeds_that_differ_much_widen_the_interval_by_their_few_degrees_of_freedom():
    """Three shared seeds, 100 problems: the seed component is measured on 2 degrees of freedom.
    Differences that move with the seed give the seed means' standard error on about 2 degrees of
    freedom; the same noise without seed movement gives a far smaller one."""
    from analysis.stats import t_interval, variance_terms

    rng = np.random.default_rng(1)
    noise = rng.normal(0.0, 1.0, (3, 100))
    seed_moves = noise + np.array([[-2.0], [0.0], [2.0]])
    terms = variance_terms(seed_moves, np.zeros((3, 100)), paired=True)
    se, df = t_interval(terms)
    assert terms[0][1] == 2 and 2 <= df < 3  # dominated by the seeds' 2 degrees of freedom
    assert se == pytest.approx(np.sqrt(np.var(seed_moves.mean(axis=1), ddof=1) / 3), rel=0.01)  # the seed means' SE
    quiet_se, _ = t_interval(variance_terms(noise, np.zeros((3, 100)), paired=True))
    assert quiet_se < se / 5  # noise alone, its mean over the 300 cells


def test_seeds_are_paired_only_when_both_arms_ran_the_same_ones():
    rng = np.random.default_rng(0)
    three = arm(rng.random((3, 20)), rng.random((3, 20)) * 100, seeds=(0, 1, 2))
    other = arm(rng.random((3, 20)), rng.random((3, 20)) * 100, seeds=(0, 1, 2))
    assert compare(three, other, 0.5, 50.0)["aes"].paired_seeds == (0, 1, 2)
    one = arm(rng.random((1, 20)), rng.random((1, 20)) * 100, seeds=(0,))
    assert compare(three, one, 0.5, 50.0)["aes"].paired_seeds == ()
    fewer = ArmScores((0, 1, 2), np.arange(5, 25), three.accuracy, three.length)  # problems 5..24
    assert compare(fewer, other, 0.5, 50.0)["aes"].problems == 15  # only the shared ones


def test_a_true_zero_difference_is_not_distinguishable_about_95_percent_of_the_time():
    """Both arms from one model (benchmarks.stats_coverage.draw): 200 problems of varied difficulty,
    4 samples each, one seed. The interval should exclude zero in about 5% of repetitions (binomial
    sd over 200: 1.5 points)."""
    from benchmarks.stats_coverage import draw

    rng = np.random.default_rng(2026)
    kept = {"accuracy": 0, "length": 0, "aes": 0}
    repetitions = 200
    for repetition in range(repetitions):
        result = compare(*draw(rng, 1, 200, 4, 0.0), base_accuracy=0.5, base_length=100.0)
        for metric in kept:
            kept[metric] += result[metric].verdict == "not distinguishable"
    rates = {metric: count / repetitions for metric, count in kept.items()}
    assert all(0.90 <= rate <= 0.99 for rate in rates.values()), rates


def test_the_selection_split_is_fixed_disjoint_and_about_a_third():
    ids = range(3000)
    selection, test = selection_split(ids)
    assert selection.isdisjoint(test) and selection | test == set(ids)
    assert abs(len(selection) / 3000 - 1 / 3) < 0.03
    assert selection_split(ids) == (selection, test)  # the same split every time
    assert selection_split(ids, seed=1)[0] != selection


def test_the_detectable_difference_is_2_8_standard_errors_of_the_measured_spread():
    """One seed, 400 problems whose accuracy differences have a known spread: the standard error is
    the textbook sd / sqrt(n), and the difference found with 80% power at 95% is (1.97 + 0.84) of
    it (t quantiles on 399 degrees of freedom)."""
    from analysis.stats import detectable

    assert detectable(1.0) == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    rng = np.random.default_rng(3)
    a_acc, b_acc = rng.random(400), rng.random(400)
    result = compare(arm([a_acc], [[50.0] * 400]), arm([b_acc], [[50.0] * 400]), 0.5, 50.0)
    textbook = np.std(a_acc - b_acc, ddof=0) / np.sqrt(400)
    assert result["accuracy"].detectable == pytest.approx(2.801585 * textbook, rel=0.05)
    certain = compare(arm([[1.0] * 6], [[50.0] * 6]), arm([[0.0] * 6], [[100.0] * 6]), 0.5, 100.0)
    assert certain["accuracy"].detectable == 0.0  # no spread: any difference is seen


def test_two_seeds_cover_about_95_percent_where_the_plain_satterthwaite_count_did_not():
    """The independent generating models (U-shaped binary correctness, method x problem, seed x
    problem and seed x topic effects, capped lengths) at 2 seeds: plain Welch-Satterthwaite kept
    zero in about 0.90 of studies; with each term at its upper bound in the degrees of freedom the
    interval keeps it about 0.95 (400 repetitions: binomial sd 1.1 points)."""
    from benchmarks.stats_coverage import MODELS, kept_rates, draw_model

    rng = np.random.default_rng(11)
    two = next(m for m in MODELS if m.name == "2 seeds")
    rates = kept_rates(lambda: draw_model(rng, two), 400)
    assert all(0.92 <= rate <= 0.98 for rate in rates), rates


def test_a_one_seed_interval_says_it_covers_problems_only():
    from benchmarks.stats_coverage import draw

    one, three = (compare(*draw(np.random.default_rng(3), s, 50, 1, 0.3), 0.5, 100.0)["aes"] for s in (1, 3))
    assert one.covers.startswith("problems only") and three.covers == "seeds and problems"


def test_arms_on_either_side_of_the_aes_kink_by_a_hair_get_nearly_the_same_slope():
    """AES's slope jumps from gamma / A_base to beta / A_base at the base accuracy. Two arms whose
    mean accuracies straddle it by 0.001 share the problems' variation; with one slope each that
    variation entered their difference at the gap between the slopes. The slope averaged over each
    mean's sampling error keeps the interval near the one both arms get on the same side."""
    rng = np.random.default_rng(5)
    shared = rng.binomial(1, rng.beta(0.3, 0.3, 300), (3, 300)).astype(float)
    lengths = np.full((3, 300), 50.0)
    straddle_base = shared.mean() + 0.0005  # arm a just below the kink, arm b just above it
    same_side_base = shared.mean() - 0.01

    def width(base_accuracy, shift):
        b = shared.copy()
        b[:, :1] += shift  # nudges b's mean by shift / 300
        result = compare(arm(shared, lengths, (0, 1, 2)), arm(b, lengths, (7, 8, 9)), base_accuracy, 50.0)["aes"]
        return result.high - result.low

    assert width(straddle_base, 0.3) == pytest.approx(width(same_side_base, 0.3), rel=0.25)


def test_unshared_seed_components_are_floored_in_their_sum_only():
    """One arm's seed component estimated below zero offsets the other's (their expectations add):
    the seed terms add up to max(sum, 0), split in proportion to the floored components."""
    from analysis.stats import _anova, variance_terms

    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (3, 50)) + np.array([[-1.0], [0.0], [1.0]])  # a real seed spread
    y = rng.normal(0, 1, (3, 50))
    components = [(_anova(c)[0] - _anova(c)[2]) / c.size for c in (x, y)]
    terms = variance_terms(x, y, paired=False)
    assert len(terms) == 3 and terms[1][1] == terms[2][1] == 2
    assert terms[1][0] + terms[2][0] == pytest.approx(max(sum(components), 0.0))
    assert components[1] < 0 < components[0]  # this draw: y's estimate came out below zero
    assert terms[2][0] == 0.0 and terms[1][0] == pytest.approx(components[0] + components[1])
