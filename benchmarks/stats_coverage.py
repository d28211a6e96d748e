"""How often the paired comparison's 95% interval holds the true difference (0 when the arms are
alike): ``python -m benchmarks.stats_coverage [--repetitions 1000] [--suite designs|models|all]``
(a binomial standard error of 0.007 at 0.95 with 1,000 repetitions, 0.005 with 2,000; the target
band is 0.93-0.97).

Two suites of generating models, both scored by the project's real ``analysis.stats.compare``:

- ``designs``: problems of varied difficulty (logit sd 1.2), ``n_samples`` graded samples per
  problem, per-seed training effects (sd ``seed_sd`` on the logit, and -30 x that on the length).
- ``models``: an independent check with what the first leaves out: binary correctness on problems
  of U-shaped difficulty (solve rates from Beta(0.3, 0.3)), a method x problem effect per arm,
  seed x problem and seed x topic effects (20 topics), unequal seed spread between the arms, seeds
  not shared between the arms, lengths capped at the budget, and training that collapses on some
  seeds, in both arms alike or more often in one (``true_difference``: the truth over the problems'
  and the seeds' laws). Rows where the arms differ in how often a run collapses are expected to fall
  short (a rare mode 3-8 seeds mostly did not see cannot be estimated); the one-seed rows have no
  interval over seeds (``Comparison.covers``).

A well-calibrated interval holds the truth about 95% of the time; less means too narrow (too many
false "ahead"/"behind"), more means conservative.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from scipy.stats import norm

from analysis.stats import ArmScores, compare
from trainers.loop.evaluation import aes

DESIGNS = [  # seeds, problems, samples per problem, seed-effect sd
    (1, 200, 1, 0.0), (1, 200, 4, 0.0), (3, 200, 1, 0.0), (3, 200, 1, 0.1), (3, 200, 1, 0.5),
    (5, 200, 1, 0.1), (5, 200, 1, 0.5), (8, 200, 1, 0.2), (8, 200, 1, 0.5),
]
BUDGET = 160.0  # response budget of the ``models`` suite: longer responses are cut there


def draw(rng, seeds: int, problems: int, samples: int, seed_sd: float) -> list[ArmScores]:
    difficulty = rng.normal(0.0, 1.2, problems)
    arms = []
    for _ in range(2):
        skill = rng.normal(0.0, seed_sd, (seeds, 1)) if seed_sd else np.zeros((seeds, 1))
        solve = 1 / (1 + np.exp(-(0.3 + skill - difficulty)))
        accuracy = rng.binomial(samples, solve) / samples
        length = rng.normal(100 + 20 * difficulty - 30 * skill, 10.0 / np.sqrt(samples))
        arms.append(ArmScores(tuple(range(seeds)), np.arange(problems), accuracy, length))
    return arms


@dataclass(frozen=True)
class Model:
    """One row of the ``models`` suite: both arms drawn from the same law (a true difference of 0)."""

    name: str
    seeds: int
    seed_sd: tuple[float, float] = (0.3, 0.3)  # per arm: the sd of a seed's effect on the logit
    shared_seeds: bool = True
    collapse: tuple[float, float] = (0.0, 0.0)  # per arm: the chance a seed's run collapses (accuracy 0.05, lengths at the budget)
    problems: int = 300
    samples: int = 1


def problems_drawn(rng, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``p`` problems: the logit of a U-shaped solve rate, a topic (of 20), a minimal length."""
    base_logit = np.log(rng.beta(0.3, 0.3, p).clip(1e-3, 1 - 1e-3))
    base_logit -= np.log1p(-np.exp(base_logit))
    return base_logit, rng.integers(0, 20, p), rng.uniform(20, 90, p)


def draw_model(rng, model: Model) -> list[ArmScores]:
    """Two arms on the same problems: U-shaped difficulty, a method x problem effect per arm, seed,
    seed x problem and seed x topic effects, lengths capped at ``BUDGET``, optional collapse."""
    p, s = model.problems, model.seeds
    base_logit, topic, minimal = problems_drawn(rng, p)
    arms = []
    for arm in range(2):
        method = rng.normal(0.0, 0.4, p)  # this arm's own per-problem effect (zero on average over problems)
        seed = rng.normal(0.0, model.seed_sd[arm], (s, 1))
        seed_problem = rng.normal(0.0, 0.3, (s, p))
        seed_topic = rng.normal(0.0, 0.3, (s, 20))[:, topic]
        logit = base_logit + method + seed + seed_problem + seed_topic
        collapsed = rng.random((s, 1)) < model.collapse[arm]
        solve = np.where(collapsed, 0.05, 1 / (1 + np.exp(-logit)))
        accuracy = rng.binomial(model.samples, solve) / model.samples
        verbose = np.exp(rng.normal(0.4 - 0.3 * seed, 0.35, (s, p)))  # > 1: overthinking, shorter on better seeds
        length = np.where(collapsed, BUDGET, np.minimum(minimal * verbose, BUDGET))
        seeds = tuple(range(s)) if model.shared_seeds or arm == 0 else tuple(range(100, 100 + s))
        arms.append(ArmScores(seeds, np.arange(p), accuracy, length))
    return arms


def true_difference(model: Model, problems: int = 400_000) -> dict[str, float]:
    """A minus B in expectation over the problems' and the seeds' laws (what an interval over seeds
    and problems is for): 0 when the arms are alike; not 0 when they differ in seed spread or in how
    often a run collapses. Problems by Monte Carlo (fixed seed), seeds by ``expected``."""
    base_logit, _, minimal = problems_drawn(np.random.default_rng(99), problems)
    method = np.random.default_rng(98).normal(0.0, 0.4, problems)
    truth = [expected(base_logit + method, minimal, model.seed_sd[arm], model.collapse[arm]) for arm in range(2)]
    difference = {m: truth[0][m] - truth[1][m] for m in ("accuracy", "length")}
    difference["aes"] = (aes(truth[0]["accuracy"], truth[0]["length"], *AES_BASE)
                         - aes(truth[1]["accuracy"], truth[1]["length"], *AES_BASE))
    return difference


HERMITE = np.polynomial.hermite_e.hermegauss(60)  # nodes and weights for E[f(Z)], Z standard normal


def expected(logit: np.ndarray, minimal: np.ndarray, seed_sd: float, collapse: float) -> dict[str, float]:
    """An arm's mean accuracy and length over the given problems, in expectation over seeds: the solve
    rate E[sigmoid(logit + R)] with R ~ N(0, seed_sd^2 + 0.3^2 + 0.3^2) (Gauss-Hermite), the length
    E[min(minimal e^Z, BUDGET)] with Z ~ N(0.4, 0.35^2 + (0.3 seed_sd)^2) (the capped lognormal's
    mean), each mixed with a collapsed run's (0.05, BUDGET) at rate ``collapse``."""
    nodes, weights = HERMITE
    sd = np.sqrt(seed_sd**2 + 0.18)
    solve = (weights[None, :] / (1 + np.exp(-(logit[:, None] + sd * nodes[None, :])))).sum(axis=1) / weights.sum()
    mu, sigma = 0.4, np.sqrt(0.35**2 + (0.3 * seed_sd) ** 2)
    cut = np.log(BUDGET / minimal)
    below = minimal * np.exp(mu + sigma**2 / 2) * norm.cdf((cut - mu - sigma**2) / sigma)
    length = below + BUDGET * norm.sf((cut - mu) / sigma)
    return {"accuracy": float((1 - collapse) * solve.mean() + collapse * 0.05),
            "length": float((1 - collapse) * length.mean() + collapse * BUDGET)}


MODELS = [
    Model("one seed, seed effects", 1),
    Model("2 seeds", 2), Model("3 seeds", 3), Model("5 seeds", 5), Model("8 seeds", 8),
    Model("2 seeds, little seed spread", 2, seed_sd=(0.05, 0.05)),
    Model("3 seeds, unequal spread", 3, seed_sd=(0.05, 0.6)),
    Model("5 seeds, unequal spread", 5, seed_sd=(0.05, 0.6)),
    Model("3 seeds not shared", 3, shared_seeds=False),
    Model("3 seeds not shared, little spread", 3, seed_sd=(0.05, 0.05), shared_seeds=False),
    Model("5 seeds not shared, little spread", 5, seed_sd=(0.05, 0.05), shared_seeds=False),
    Model("4 samples a problem, 3 seeds", 3, samples=4),
    Model("5 seeds, collapse on 10%", 5, collapse=(0.1, 0.1)),
    Model("3 seeds, collapse on 10%", 3, collapse=(0.1, 0.1)),
    Model("5 seeds, collapse on 10% / 2%", 5, collapse=(0.1, 0.02)),
    Model("3 seeds, collapse on 10% / 2%", 3, collapse=(0.1, 0.02)),
    Model("8 seeds, collapse on 10% / 2%", 8, collapse=(0.1, 0.02)),
]


AES_BASE = (0.5, 100.0)  # the base model's accuracy and length the comparisons are scored against


def kept_rates(draws, repetitions: int, truth: dict[str, float] | None = None) -> list[float]:
    """The share of ``repetitions`` comparisons (accuracy, length, AES) whose interval holds the true
    difference (``truth``; 0 when none is given)."""
    kept = {"accuracy": 0, "length": 0, "aes": 0}
    truth = truth or {m: 0.0 for m in kept}
    for _ in range(repetitions):
        result = compare(*draws(), *AES_BASE)
        for metric in kept:
            kept[metric] += result[metric].low <= truth[metric] <= result[metric].high
    return [kept[m] / repetitions for m in ("accuracy", "length", "aes")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=1000)
    parser.add_argument("--suite", choices=("designs", "models", "all"), default="all")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"share of {args.repetitions} repetitions whose interval holds the true difference (target 0.95)")
    if args.suite in ("designs", "all"):
        print(f"\n{'seeds':>5} {'problems':>8} {'samples':>7} {'seed sd':>7} {'accuracy':>8} {'length':>7} {'AES':>6}")
        for seeds, problems, samples, seed_sd in DESIGNS:
            rates = kept_rates(lambda: draw(rng, seeds, problems, samples, seed_sd), args.repetitions)
            print(f"{seeds:>5} {problems:>8} {samples:>7} {seed_sd:>7.2f} {rates[0]:>8.3f} {rates[1]:>7.3f} {rates[2]:>6.3f}")
    if args.suite in ("models", "all"):
        print(f"\n{'generating model':<36} {'accuracy':>8} {'length':>7} {'AES':>6}")
        for model in MODELS:
            rates = kept_rates(lambda: draw_model(rng, model), args.repetitions, true_difference(model))
            print(f"{model.name:<36} {rates[0]:>8.3f} {rates[1]:>7.3f} {rates[2]:>6.3f}")


if __name__ == "__main__":
    main()
