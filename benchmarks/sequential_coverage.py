"""The sequential design's repeated intervals, measured on the code that runs them: how often the
interval reported where a comparison stops covers the true difference, how many comparisons it
decides, and how many seeds it spends against fixed designs of 5 and 12 seeds.

    python -m benchmarks.sequential_coverage [--repetitions 4000] [--min-seeds 4] [--max-seeds 12]
        [--tracking-uri URI --study NAME]

Each repetition draws one comparison's pre-registered sequence of seed differences (the focus arm
minus the other, in seed standard deviations) and runs ``analysis.sequential.run_sequence`` on it:
the real boundaries and decisions. Scenarios: Gaussian differences with true means 0, 0.5, 1, 2
and 3; heavy tails (t, 3 df); skewed outcomes (a centred exponential); one arm collapsing on 10% of
seeds (a difference of -4 sd then); and, with ``--study``, seed differences resampled from a real
study's runs (each comparison's per-seed AES differences, centred and scaled, pooled). The last row
is naive peeking: a fixed-n 95% t interval re-checked after every seed, stopped when it excludes 0.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

from analysis.sequential import CONTINUE, SequentialDesign, run_sequence


def gaussian(rng, size, mean):
    return rng.normal(mean, 1.0, size)


def heavy_tails(rng, size, mean):
    return mean + rng.standard_t(3, size) / np.sqrt(3.0)  # unit variance


def skewed(rng, size, mean):
    return mean + rng.exponential(1.0, size) - 1.0


def collapse(rng, size, mean):
    """One arm collapses on 10% of seeds: the difference falls by 4 there (its true mean includes that)."""
    return rng.normal(0.0, 1.0, size) - 4.0 * (rng.random(size) < 0.1) + mean + 0.4


def resampled(residuals: np.ndarray):
    def draw(rng, size, mean):
        return mean + rng.choice(residuals, size)
    return draw


def study_residuals(tracking_uri: str, study: str) -> np.ndarray:
    """Every comparison's per-seed AES differences (the focus arm minus each other (arm, variant),
    seeds both ran), centred and scaled to unit sd per comparison, pooled."""
    from analysis.load import load_study
    from trainers import contract as M

    data = load_study(tracking_uri, study)
    rows = data.runs.select(["arm", "variant", "seed", M.final_column(M.EVAL_AES)]).to_pylist()
    scores: dict[tuple, dict[int, float]] = {}
    for row in rows:
        scores.setdefault((row["arm"], row["variant"]), {})[row["seed"]] = row[M.final_column(M.EVAL_AES)]
    focus = next(group for group in scores if group[0] == data.focus)
    pooled = []
    for group, values in scores.items():
        if group[0] == data.focus:
            continue
        seeds = sorted(set(values) & set(scores[focus]))
        d = np.asarray([scores[focus][s] - values[s] for s in seeds], dtype=float)
        if len(d) > 2 and d.std(ddof=1) > 0:
            pooled.extend((d - d.mean()) / d.std(ddof=1))
    return np.asarray(pooled)


def naive_peeking(d: np.ndarray, design: SequentialDesign) -> tuple[int, float, float]:
    """A fixed-n 95% t interval re-checked after every seed: (seeds, low, high) where it stopped."""
    for n in design.looks:
        mean, half = d[:n].mean(), stats.t.ppf(0.975, n - 1) * d[:n].std(ddof=1) / np.sqrt(n)
        if mean - half > 0 or mean + half < 0 or n == design.max_seeds:
            return n, mean - half, mean + half
    raise AssertionError("unreachable")


def measure(draw, mean: float, design: SequentialDesign, repetitions: int, rng) -> tuple[float, float, float]:
    """Coverage of the interval where each simulated comparison stopped, the share decided, and the
    mean seeds it spent."""
    covered = decided = seeds = 0
    for _ in range(repetitions):
        looks = run_sequence(draw(rng, design.max_seeds, mean), design)
        last = looks[-1]
        covered += last.low <= mean <= last.high
        decided += last.decision != CONTINUE and last.low * last.high > 0
        seeds += last.seeds
    return covered / repetitions, decided / repetitions, seeds / repetitions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=4000)
    parser.add_argument("--min-seeds", type=int, default=4)
    parser.add_argument("--max-seeds", type=int, default=12)
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--study", default=None, help="resample seed differences from this study's runs")
    args = parser.parse_args(argv)
    design = SequentialDesign(args.min_seeds, args.max_seeds)
    rng = np.random.default_rng(0)
    scenarios = [(f"Gaussian, true difference {m:g} sd", gaussian, m) for m in (0, 0.5, 1, 2, 3)]
    scenarios += [("t with 3 df, difference 0", heavy_tails, 0.0), ("t with 3 df, difference 1", heavy_tails, 1.0),
                  ("skewed, difference 0", skewed, 0.0), ("skewed, difference 1", skewed, 1.0),
                  ("one arm collapses on 10% of seeds", collapse, 0.0)]
    if args.study:
        residuals = study_residuals(args.tracking_uri, args.study)
        scenarios += [(f"{args.study}'s seeds resampled, difference {m:g}", resampled(residuals), m) for m in (0, 1)]
    print(f"design: looks at {design.looks[0]}..{design.looks[-1]} seeds, alpha {design.alpha}, "
          f"boundaries {', '.join(f'{c:.2f}' for c in (design.boundary(n) for n in design.looks))}; "
          f"{args.repetitions} repetitions a row")
    print(f"{'scenario':<34} {'coverage':>8} {'decided':>8} {'mean seeds':>10} {'fixed 5':>8} {'fixed 12':>8}")
    for name, draw, mean in scenarios:
        coverage, decided, seeds = measure(draw, mean, design, args.repetitions, rng)
        print(f"{name:<34} {coverage:>8.3f} {decided:>8.3f} {seeds:>10.2f} {5:>8} {design.max_seeds:>8}")
    covered = 0
    for _ in range(args.repetitions):
        n, low, high = naive_peeking(gaussian(rng, design.max_seeds, 0.0), design)
        covered += low <= 0.0 <= high
    print(f"{'naive peeking (fixed-n t), difference 0':<34} {covered / args.repetitions:>8.3f}")


if __name__ == "__main__":
    main()
