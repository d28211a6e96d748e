"""Statistics that say how sure a comparison is: bootstrap intervals, paired differences, a selection split.

- ``mean_interval``: an arm's mean over seeds with a 95% percentile bootstrap interval
  (``scipy.stats.bootstrap``); one seed gives no interval.
- ``compare``: arm A minus arm B on accuracy, length and AES at their final evaluations, paired
  over problems (every evaluation draws the same problems with the same sampling seed) and over
  seeds when both arms ran the same seeds (otherwise each arm's seeds are resampled on their
  own). The interval comes from a two-way bootstrap that resamples seeds and problems
  independently (Owen's pigeonhole bootstrap for crossed designs);
  the samples of a problem (``eval.n_samples``) stay together, so they count as one problem, not
  as independent draws. ``p_ahead`` is the share of resamples in which A is better (ties count
  half); the verdict reads the interval only: ``ahead`` or ``behind`` when it excludes zero,
  ``not distinguishable`` otherwise; ``detectable`` states the smallest true difference the
  design would find with 80% power, from the bootstrap's standard error. Measured coverage (``benchmarks/stats_coverage.py``): about
  95% with one seed; conservative when seeds barely differ; too narrow with few seeds whose runs
  differ much (a bootstrap over 3 seeds cannot see their spread well).
- ``selection_split``: a fixed, seeded split of the evaluation problems into a selection part
  (where "the best arm" is chosen) and a test part (where it is compared), so no arm is picked
  and scored on the same numbers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from scipy import stats

from trainers.evaluation import aes

CONFIDENCE = 0.95
POWER = 0.8  # the power at which a design's detectable difference is stated
RESAMPLES = 4999
SELECTION_FRACTION = 1 / 3
HIGHER_IS_BETTER = {"accuracy": True, "length": False, "aes": True}


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
    p_ahead: float  # the share of bootstrap resamples in which A is better
    verdict: str  # "ahead", "behind" or "not distinguishable" (A relative to B, from the interval)
    paired_seeds: tuple[int, ...]  # seeds paired between the arms (empty: each arm's seeds resampled alone)
    problems: int
    detectable: float  # the smallest true difference this design finds with 80% power (``detectable``)


def detectable(standard_error: float, confidence: float = CONFIDENCE, power: float = POWER) -> float:
    """The smallest true difference that a two-sided test at ``confidence`` would find with
    probability ``power``: ``(z_{1 - alpha/2} + z_power) * SE`` (normal approximation), with the
    standard error of the difference as the bootstrap measured it from the seeds and problems
    resampled (about 2.8 SE at 95% and 80%). A true difference below it would often not be seen."""
    return float((stats.norm.ppf(1 - (1 - confidence) / 2) + stats.norm.ppf(power)) * standard_error)


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


def compare(a: ArmScores, b: ArmScores, base_accuracy: float, base_length: float, seed: int = 0,
            resamples: int = RESAMPLES) -> dict[str, Comparison]:
    """A minus B on accuracy, length and AES (see the module docstring), keyed by metric. AES is
    computed from each side's mean accuracy and length, against the base model's numbers."""
    a, b = _aligned(a, b)
    paired = a.seeds == b.seeds  # the same seeds on both sides: resampled together; otherwise each arm's alone
    # What the bootstrap resamples, each independently: the shared seeds (or each arm's own seeds)
    # when there are two or more, and the problems, always paired.
    seed_axes = {"a": "seeds", "b": "seeds"} if paired else {"a": "seeds_a", "b": "seeds_b"}
    sizes = {seed_axes["a"]: len(a.seeds), seed_axes["b"]: len(b.seeds)}
    names = [name for name, size in sizes.items() if size > 1] + ["problems"]
    samples = [np.arange(sizes.get(name, len(a.problems))) for name in names]

    def means(scores: ArmScores, seeds, problems):
        rows = seeds[..., :, None] if seeds is not None else np.zeros((1, 1), dtype=int)
        cells = (rows, problems[..., None, :])
        return scores.accuracy[cells].mean(axis=(-2, -1)), scores.length[cells].mean(axis=(-2, -1))

    def statistic(*indices, axis=-1):
        index = dict(zip(names, indices))
        acc_a, len_a = means(a, index.get(seed_axes["a"]), index["problems"])
        acc_b, len_b = means(b, index.get(seed_axes["b"]), index["problems"])
        return np.stack([acc_a - acc_b, len_a - len_b,
                         aes(acc_a, len_a, base_accuracy, base_length) - aes(acc_b, len_b, base_accuracy, base_length)])

    result = stats.bootstrap(samples, statistic, paired=False, vectorized=True, confidence_level=CONFIDENCE,
                             n_resamples=resamples, batch=500, method="percentile", rng=np.random.default_rng(seed))
    observed = statistic(*samples)
    out = {}
    for i, metric in enumerate(("accuracy", "length", "aes")):
        sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
        distribution = sign * result.bootstrap_distribution[i]
        low, high = (float(x) for x in (result.confidence_interval.low[i], result.confidence_interval.high[i]))
        out[metric] = Comparison(
            metric, float(observed[i]), low, high,
            float(np.mean(distribution > 0) + 0.5 * np.mean(distribution == 0)),
            _verdict(low, high, HIGHER_IS_BETTER[metric]),
            a.seeds if paired else (), len(a.problems), detectable(float(result.standard_error[i])),
        )
    return out


def selection_split(problem_ids, fraction: float = SELECTION_FRACTION, seed: int = 0) -> tuple[set[int], set[int]]:
    """(selection, test): each problem id goes to the selection part with probability ``fraction``,
    by a hash of (seed, id): the same split for every arm, study and machine."""
    selection, test = set(), set()
    for problem in problem_ids:
        digest = hashlib.sha256(f"{seed}:{int(problem)}".encode()).digest()
        (selection if int.from_bytes(digest[:8], "big") / 2**64 < fraction else test).add(int(problem))
    return selection, test
