"""Statistics that say how sure a comparison is: intervals, paired differences, power, a selection split.

- ``mean_interval``: an arm's mean over seeds with a 95% percentile bootstrap interval
  (``scipy.stats.bootstrap``); one seed gives no interval.
- ``compare``: arm A minus arm B on accuracy, length and AES at their final evaluations, paired
  over problems (every evaluation draws the same problems with the same sampling seed) and over
  seeds when both arms ran the same seeds. The interval is a t interval whose standard error adds
  the seed and problem variance components of the table of (seed, problem) cells
  (``variance_terms``: two-way mean squares), with Welch-Satterthwaite degrees of freedom computed
  from each term's upper 75% bound (``t_interval``), so a design with few seeds widens its interval
  by the t quantile of the few degrees of freedom its seed spread was measured on, even when that
  spread came out small by chance, while seeds that barely differ add little to the standard error
  (the interval then keeps the cells' noise, averaged over seeds and problems). With one seed a
  side the interval covers the problems only (``Comparison.covers``): the spread between training
  runs cannot be seen. AES, a
  piecewise-linear function of the mean accuracy and length, is linearized at each arm's means,
  its slope at the base accuracy's kink averaged over the arm mean's sampling error (``_aes_cells``).
  The samples of a problem (``eval.n_samples``) stay together, so they count as one problem, not
  as independent draws. ``p_ahead`` is P(A better) under that t distribution; the verdict reads
  the interval only: ``ahead`` or ``behind`` when it excludes zero, ``not distinguishable``
  otherwise; ``detectable`` states the smallest true difference the design would find with 80%
  power. Measured coverage (``python -m benchmarks.stats_coverage``): two suites of generating
  models, 1 to 8 seeds; see the README for the table.
- ``selection_split``: a fixed, seeded split of the evaluation problems into a selection part
  (where "the best arm" is chosen) and a test part (where it is compared), so no arm is picked
  and scored on the same numbers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from scipy import stats

from trainers.loop.evaluation import aes, aes_gradient

CONFIDENCE = 0.95
POWER = 0.8  # the power at which a design's detectable difference is stated
RESAMPLES = 4999
SELECTION_FRACTION = 1 / 3
DF_BOUND = 0.75  # the confidence bound at which each variance term enters the degrees of freedom (``t_interval``)
HIGHER_IS_BETTER = {"accuracy": True, "length": False, "aes": True}
PROBLEMS_ONLY = "problems only (one seed: the spread between training runs is not in it)"


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float | None  # None: no interval (fewer than two seeds)
    high: float | None
    n: int


def mean_interval(values, seed: int = 0) -> Interval:
    """The mean of ``values`` (one per seed) and its 95% percentile bootstrap interval."""
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(values) == 0:
        return Interval(float("nan"), None, None, 0)
    if len(values) < 2:
        return Interval(float(values.mean()), None, None, len(values))
    if np.ptp(values) == 0:  # every resample is the same number
        return Interval(float(values[0]), float(values[0]), float(values[0]), len(values))
    result = stats.bootstrap((values,), np.mean, confidence_level=CONFIDENCE, n_resamples=RESAMPLES,
                             method="percentile", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return Interval(float(values.mean()), float(low), float(high), len(values))


@dataclass(frozen=True)
class ArmScores:
    """One arm's final evaluation: ``accuracy`` and ``length`` per (seed, problem), each the mean
    over that problem's samples; rows follow ``seeds``, columns ``problems``."""

    seeds: tuple[int, ...]
    problems: np.ndarray
    accuracy: np.ndarray  # (seeds, problems)
    length: np.ndarray

    def restrict(self, problems) -> "ArmScores":
        keep = np.isin(self.problems, np.asarray(list(problems)))
        return ArmScores(self.seeds, self.problems[keep], self.accuracy[:, keep], self.length[:, keep])

    def aes(self, base_accuracy: float, base_length: float) -> float:
        """AES of the arm's mean accuracy and length over seeds and problems."""
        return float(aes(self.accuracy.mean(), self.length.mean(), base_accuracy, base_length))


@dataclass(frozen=True)
class Comparison:
    metric: str  # accuracy, length or aes
    difference: float  # A minus B on the data as observed
    low: float
    high: float
    p_ahead: float  # P(A better): the t distribution of the difference, at the observed difference
    verdict: str  # "ahead", "behind" or "not distinguishable" (A relative to B, from the interval)
    paired_seeds: tuple[int, ...]  # seeds paired between the arms (empty: each arm's seeds resampled alone)
    problems: int
    detectable: float  # the smallest true difference this design finds with 80% power (``detectable``)
    covers: str = "seeds and problems"  # what the interval's spread covers: PROBLEMS_ONLY with one seed a side


def detectable(standard_error: float, df: float = float("inf"), confidence: float = CONFIDENCE,
               power: float = POWER) -> float:
    """The smallest true difference that a two-sided t test at ``confidence`` would find with
    probability ``power``: ``(t_{1 - alpha/2} + t_power) * SE`` on ``df`` degrees of freedom (about
    2.8 SE with many), with the standard error measured from the seed and problem variances. A
    true difference below it would often not be seen."""
    return float((stats.t.ppf(1 - (1 - confidence) / 2, df) + stats.t.ppf(power, df)) * standard_error)


def _verdict(low: float, high: float, higher_is_better: bool) -> str:
    if low > 0 or high < 0:
        better = low > 0 if higher_is_better else high < 0
        return "ahead" if better else "behind"
    return "not distinguishable"


def _aligned(a: ArmScores, b: ArmScores) -> tuple[ArmScores, ArmScores]:
    """Both arms on the problems they share, in problem order."""
    common = np.intersect1d(a.problems, b.problems)
    if len(common) < 2:
        raise ValueError(f"the arms share {len(common)} evaluation problem(s); a paired comparison needs at least 2")
    a, b = a.restrict(common), b.restrict(common)
    order_a, order_b = np.argsort(a.problems), np.argsort(b.problems)
    a = ArmScores(a.seeds, a.problems[order_a], a.accuracy[:, order_a], a.length[:, order_a])
    b = ArmScores(b.seeds, b.problems[order_b], b.accuracy[:, order_b], b.length[:, order_b])
    return a, b


def _anova(cells: np.ndarray) -> tuple[float, float, float]:
    """Two-way mean squares of a (seeds, problems) table: seeds, problems, residual."""
    seeds, problems = cells.shape
    grand, rows, columns = cells.mean(), cells.mean(axis=1), cells.mean(axis=0)
    ms_seeds = problems * ((rows - grand) ** 2).sum() / (seeds - 1) if seeds > 1 else 0.0
    ms_problems = seeds * ((columns - grand) ** 2).sum() / (problems - 1)
    residual = cells - rows[:, None] - columns[None, :] + grand
    ms_residual = (residual ** 2).sum() / ((seeds - 1) * (problems - 1)) if seeds > 1 else 0.0
    return ms_seeds, ms_problems, ms_residual


def variance_terms(x: np.ndarray, y: np.ndarray, paired: bool) -> list[tuple[float, float]]:
    """The variance of ``mean(x) - mean(y)`` (tables of seeds x problems, problems shared) as
    (term, degrees of freedom) pairs, from the seed and problem variance components.

    Seeds shared (paired), on the differences ``d = x - y``: ``MS_seeds / (S P)`` (the seed
    component and the noise, S - 1 df) plus ``max(0, MS_problems - MS_residual) / (S P)`` (the
    problem component, P - 1 df); one seed: ``var_p(d) / P`` (problems only: the spread between
    training runs is not in it). Seeds not shared: ``var_p(d_p) / P`` over the problem-wise
    differences of the seed means (it holds each arm's cell noise already), plus each arm's seed
    component ``(MS_seeds - MS_residual) / (S P)``, floored at zero in their sum only (a
    negative estimate in one arm offsets the other's, as their expectations add): the sum is
    split over the arms in proportion to their floored components, one term of S - 1 df each, so
    the degrees of freedom still see how few seeds each arm's spread rests on. Flooring each
    arm on its own covered 0.973-0.976 where seeds barely differ (power thrown away)."""
    seeds, problems = x.shape
    if paired and seeds > 1:
        ms_seeds, ms_problems, ms_residual = _anova(x - y)
        return [(ms_seeds / (seeds * problems), seeds - 1),
                (max(ms_problems - ms_residual, 0.0) / (seeds * problems), problems - 1)]
    if paired:
        return [(float(np.var(x[0] - y[0], ddof=1)) / problems, problems - 1)]
    difference = x.mean(axis=0) - y.mean(axis=0)
    seed_terms = [((ms[0] - ms[2]) / cells.size, cells.shape[0] - 1)
                  for cells in (x, y) if cells.shape[0] > 1 for ms in [_anova(cells)]]
    floored = [(max(term, 0.0), df) for term, df in seed_terms]
    positive = sum(term for term, _ in floored)
    scale = max(sum(term for term, _ in seed_terms), 0.0) / positive if positive > 0 else 0.0
    return [(float(np.var(difference, ddof=1)) / problems, problems - 1)] + [(term * scale, df) for term, df in floored]


def t_interval(terms: list[tuple[float, float]]) -> tuple[float, float]:
    """The standard error the terms add up to, and its Welch-Satterthwaite degrees of freedom with
    each term taken at its upper ``DF_BOUND`` confidence bound (``term x df / chi2_df(1 - DF_BOUND)``).

    A seed term rests on S - 1 degrees of freedom: with 2 or 3 seeds it often comes out small by
    chance, and the plain Satterthwaite formula then gives many degrees of freedom exactly when the
    standard error is too small (coverage 0.90 at 2 seeds, ``benchmarks/stats_coverage.py``). Its
    upper bound in the degrees of freedom (not in the standard error) keeps the t quantile honest:
    0.93-0.97 from 2 seeds up in both suites of that benchmark."""
    variance = sum(term for term, _ in terms)
    bounded = [(term * df / stats.chi2.ppf(1 - DF_BOUND, df), df) for term, df in terms if term > 0]
    total = sum(term for term, _ in bounded)
    denominator = sum(term * term / df for term, df in bounded)
    return float(np.sqrt(variance)), (total * total / denominator if denominator > 0 else float("inf"))


def _aes_cells(scores: ArmScores, base_accuracy: float, base_length: float) -> np.ndarray:
    """Each cell's share of the arm's AES: AES is piecewise linear in the mean accuracy and length,
    so near the arm's means it is ``g_acc * accuracy + g_len * length`` plus a constant.

    At the base accuracy AES has a kink (slope ``beta / A_base`` above, ``gamma / A_base`` below),
    where the delta method's gradient is not defined. ``g_acc`` is therefore the slope expected
    over the arm mean's own sampling error, ``N(mean, se^2)``: ``P(above) beta / A_base +
    P(below) gamma / A_base``. Away from the kink it is the plain gradient; two arms that both sit
    near it get nearly the same slope, so the problem variation they share cancels in their
    difference instead of entering at the gap between the two slopes (which gave 0.979 coverage,
    arms on the kink with seeds not shared, ``benchmarks/stats_coverage.py``)."""
    accuracy, length = float(scores.accuracy.mean()), float(scores.length.mean())
    below_kink = base_accuracy * (1 - 2e-3)  # a point whose one-sided slope is the lower side's
    g_above, g_length = aes_gradient(max(accuracy, base_accuracy), length, base_accuracy, base_length)
    g_below, _ = aes_gradient(min(accuracy, below_kink), length, base_accuracy, base_length)
    se = np.sqrt(sum(term for term, _ in variance_terms(scores.accuracy, np.zeros_like(scores.accuracy), True)))
    share_above = float(stats.norm.cdf((accuracy - base_accuracy) / se)) if se > 0 else float(accuracy >= base_accuracy)
    g_accuracy = share_above * g_above + (1 - share_above) * g_below
    return g_accuracy * scores.accuracy + g_length * scores.length


def compare(a: ArmScores, b: ArmScores, base_accuracy: float, base_length: float) -> dict[str, Comparison]:
    """A minus B on accuracy, length and AES (see the module docstring), keyed by metric. AES is
    computed from each side's mean accuracy and length, against the base model's numbers."""
    a, b = _aligned(a, b)
    paired = a.seeds == b.seeds  # the same seeds on both sides: differenced seed by seed
    one_seed = len(a.seeds) == 1 and (paired or len(b.seeds) == 1)
    covers = PROBLEMS_ONLY if one_seed else "seeds and problems"
    observed = {"accuracy": float(a.accuracy.mean() - b.accuracy.mean()),
                "length": float(a.length.mean() - b.length.mean()),
                "aes": a.aes(base_accuracy, base_length) - b.aes(base_accuracy, base_length)}
    cells = {"accuracy": (a.accuracy, b.accuracy), "length": (a.length, b.length),
             "aes": (_aes_cells(a, base_accuracy, base_length), _aes_cells(b, base_accuracy, base_length))}
    out = {}
    for metric, difference in observed.items():
        se, df = t_interval(variance_terms(*cells[metric], paired))
        se = se if se > 1e-12 * (1.0 + abs(difference)) else 0.0  # rounding, not spread (AES's linearized cells)
        half = float(stats.t.ppf(1 - (1 - CONFIDENCE) / 2, df)) * se
        low, high = difference - half, difference + half
        sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
        ahead = float(stats.t.cdf(sign * difference / se, df)) if se > 0 else float(np.sign(sign * difference) + 1) / 2
        out[metric] = Comparison(metric, difference, low, high, ahead, _verdict(low, high, HIGHER_IS_BETTER[metric]),
                                 a.seeds if paired else (), len(a.problems), detectable(se, df), covers)
    return out


def selection_split(problem_ids, fraction: float = SELECTION_FRACTION, seed: int = 0) -> tuple[set[int], set[int]]:
    """(selection, test): each problem id goes to the selection part with probability ``fraction``,
    by a hash of (seed, id): the same split for every arm, study and machine."""
    selection, test = set(), set()
    for problem in problem_ids:
        digest = hashlib.sha256(f"{seed}:{int(problem)}".encode()).digest()
        (selection if int.from_bytes(digest[:8], "big") / 2**64 < fraction else test).add(int(problem))
    return selection, test
