"""How often the paired comparison's 95% interval says "not distinguishable" when two arms are
truly alike, per design: ``python -m benchmarks.stats_coverage [--repetitions 1000]`` (a
binomial standard error of 0.007 at 0.95; the target band is 0.93-0.97).

Each repetition draws two arms from one model: problems of varied difficulty (logit sd 1.2),
``n_samples`` graded samples per problem, and per-seed training effects (sd ``seed_sd`` on the
logit, and -30 x that on the length). A well-calibrated interval keeps zero about 95% of the time;
fewer kept means too narrow (too many false "ahead"/"behind"), more means conservative.
"""

from __future__ import annotations

import argparse

import numpy as np

from analysis.stats import ArmScores, compare

DESIGNS = [  # seeds, problems, samples per problem, seed-effect sd
    (1, 200, 1, 0.0), (1, 200, 4, 0.0), (3, 200, 1, 0.0), (3, 200, 1, 0.1), (3, 200, 1, 0.5),
    (5, 200, 1, 0.1), (5, 200, 1, 0.5), (8, 200, 1, 0.2), (8, 200, 1, 0.5),
]


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=1000)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"share of {args.repetitions} repetitions (true difference 0) judged 'not distinguishable' (target 0.95)")
    print(f"{'seeds':>5} {'problems':>8} {'samples':>7} {'seed sd':>7} {'accuracy':>8} {'length':>7} {'AES':>6}")
    for seeds, problems, samples, seed_sd in DESIGNS:
        kept = {"accuracy": 0, "length": 0, "aes": 0}
        for _ in range(args.repetitions):
            result = compare(*draw(rng, seeds, problems, samples, seed_sd), 0.5, 100.0)
            for metric in kept:
                kept[metric] += result[metric].verdict == "not distinguishable"
        rates = [kept[m] / args.repetitions for m in ("accuracy", "length", "aes")]
        print(f"{seeds:>5} {problems:>8} {samples:>7} {seed_sd:>7.2f} {rates[0]:>8.3f} {rates[1]:>7.3f} {rates[2]:>6.3f}")


if __name__ == "__main__":
    main()
