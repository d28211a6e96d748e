"""The sequential design's repeated intervals, measured on the code that runs them: how often the
interval reported where a comparison stops covers the true difference, how many comparisons it
decides, and how many seeds it spends against fixed designs of 5 and 12 seeds.

    python -m benchmarks.sequential_coverage [--repetitions 4000] [--min-seeds 4] [--max-seeds 12] [--rho 0.5]
        [--tracking-uri URI --study NAME]

Each repetition draws one comparison's pre-registered sequence of seed differences (the focus arm
minus the other, in seed standard deviations) and drives ``study.sequential.allocate`` (the
allocator a sequential study runs on) with it until the study is done: the real boundaries, looks
and decisions. Scenarios: Gaussian differences with true means 0, 0.5, 1, 2 and 3; heavy tails
(t, 3 df); skewed seed outcomes (one arm's exponential, the other's Gaussian); one arm collapsing
on 10% of seeds (a difference of -4 sd then); with ``--study``, seed differences resampled from a
real study's runs (each comparison's per-seed AES differences, centred and scaled, pooled); then
three rows beyond the laws the boundaries are calibrated under (``CALIBRATION_LAWS``): collapse on
20% of seeds, collapse by 6 sd, and differences that are themselves exponential (skewness 2).
Columns: the sequential design's coverage, share decided and mean seeds; the share a fixed design
of 5 and of 12 seeds decides (its 95% t interval); decisions per seed of each. Then a six-comparison
study's trials and decisions against fixed designs, and naive peeking: a fixed-n 95% t interval
re-checked after every seed, stopped when it excludes 0. With ``--study``, last: which design
decides the most comparisons per trial for a study with that study's effects (``design_rows``).
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

from study.sequential import AHEAD, BEHIND, DEFAULT_RHO, SequentialDesign, allocate


def gaussian(rng, size, mean):
    return rng.normal(mean, 1.0, size)


def heavy_tails(rng, size, mean):
    return mean + rng.standard_t(3, size) / np.sqrt(3.0)  # unit variance


def skewed(rng, size, mean):
    """Skewed seed outcomes: the focus arm's exponential, the other's Gaussian, equal spread."""
    return mean + (rng.exponential(1.0, size) - 1.0 - rng.normal(0.0, 1.0, size)) / np.sqrt(2.0)


def collapse(rate: float, drop: float):
    """One arm collapses on ``rate`` of seeds: the difference falls by ``drop`` sd there (its true
    mean includes that)."""
    def draw(rng, size, mean):
        return rng.normal(0.0, 1.0, size) - drop * (rng.random(size) < rate) + mean + rate * drop
    return draw


def skewed_differences(rng, size, mean):
    """Beyond the calibration: the difference itself exponential (skewness 2)."""
    return mean + rng.exponential(1.0, size) - 1.0


def resampled(residuals: np.ndarray):
    def draw(rng, size, mean):
        return mean + rng.choice(residuals, size)
    return draw


def study_differences(tracking_uri: str, study: str) -> dict[str, np.ndarray]:
    """Each comparison's per-seed AES differences: the focus arm minus each other (arm, variant),
    on the seeds both ran."""
    from analysis.compute import paired_differences
    from analysis.load import load_study

    data = load_study(tracking_uri, study)
    return {label: np.asarray(list(d.values()), dtype=float) for label, d in paired_differences(data.runs, data.focus).items()}


def study_residuals(differences: dict[str, np.ndarray]) -> np.ndarray:
    """Every comparison's seed differences centred and scaled to unit sd, pooled."""
    return np.concatenate([(d - d.mean()) / d.std(ddof=1) for d in differences.values()
                           if len(d) > 2 and d.std(ddof=1) > 0])


def design_rows(differences: dict[str, np.ndarray], designs: list[tuple[str, SequentialDesign, int | None]],
                repetitions: int, rng) -> list[str]:
    """Which design decides the most comparisons per trial for a study like this one: every
    comparison's true difference set to its observed standardized mean (Gaussian seeds), the
    sequential designs driven through the real allocator with their trial budgets, against fixed
    designs of 4, 5 and 6 seeds (their 95% t interval)."""
    effects = [float(d.mean() / d.std(ddof=1)) for d in differences.values() if len(d) > 2 and d.std(ddof=1) > 0]
    arms = len(effects) + 1
    lines = [f"effects (standardized, from the study): {', '.join(f'{e:+.2f}' for e in effects)}"]
    for n in (4, 5, 6):
        d = rng.normal(np.asarray(effects)[None, :, None], 1.0, (repetitions, len(effects), n))
        half = stats.t.ppf(0.975, n - 1) * d.std(axis=2, ddof=1) / np.sqrt(n)
        decided = float(np.mean(np.sum(np.abs(d.mean(axis=2)) > half, axis=1)))
        lines.append(f"fixed {n} seeds: {decided:.2f} decided in {arms * n} trials, {decided / (arms * n):.3f} per trial")
    for name, design, budget in designs:
        decided = used = 0
        for _ in range(repetitions):
            paths, trials = simulate({f"arm{k}": rng.normal(e, 1.0, design.max_seeds) for k, e in enumerate(effects)},
                                     design, budget)
            decided += sum(path[-1].decision in (AHEAD, BEHIND) for path in paths.values() if path)
            used += trials
        lines.append(f"{name}: {decided / repetitions:.2f} decided in {used / repetitions:.1f} trials, "
                     f"{decided / used:.3f} per trial")
    return lines


def naive_peeking(d: np.ndarray, design: SequentialDesign) -> tuple[int, float, float]:
    """A fixed-n 95% t interval re-checked after every seed: (seeds, low, high) where it stopped."""
    for n in design.looks:
        mean, half = d[:n].mean(), stats.t.ppf(0.975, n - 1) * d[:n].std(ddof=1) / np.sqrt(n)
        if mean - half > 0 or mean + half < 0 or n == design.max_seeds:
            return n, mean - half, mean + half
    raise AssertionError("unreachable")


def simulate(sequences: dict[str, np.ndarray], design: SequentialDesign,
             max_trials: int | None = None) -> tuple[dict[str, list], int]:
    """A study driven by the real allocator: the focus arm scores 0 on every seed, arm k scores
    ``-sequences[k][i]`` on seed i (so the focus-minus-k differences are the sequence); each
    round runs the trials the allocation asks for, in its order, until ``max_trials`` have run (as
    the searcher does: ``design.max_trials``). Returns each comparison's looks and the trials run."""
    scores: dict[str, dict[int, float]] = {"focus": {}, **{arm: {} for arm in sequences}}
    used = 0
    while not (allocation := allocate(scores, "focus", list(sequences), design)).done:
        if max_trials is not None and used >= max_trials:
            break
        for arm, i in allocation.needed[: None if max_trials is None else max_trials - used]:
            scores[arm][i] = 0.0 if arm == "focus" else -float(sequences[arm][i])
            used += 1
    return allocation.paths, used


def measure(draw, mean: float, design: SequentialDesign, repetitions: int, rng) -> tuple[float, float, float]:
    """Coverage of the interval where each simulated comparison stopped, the share decided, and the
    mean seeds it spent."""
    covered = decided = seeds = 0
    for _ in range(repetitions):
        paths, _ = simulate({"other": draw(rng, design.max_seeds, mean)}, design)
        last = paths["other"][-1]
        covered += last.low <= mean <= last.high
        decided += last.decision in (AHEAD, BEHIND)
        seeds += last.seeds
    return covered / repetitions, decided / repetitions, seeds / repetitions


def study_row(effects: tuple[float, ...], design: SequentialDesign, repetitions: int, rng) -> str:
    """A study of one focus arm against len(effects) arms (Gaussian differences, these true means in
    sd): trials used and comparisons decided, sequential against fixed 5 and 12 seeds."""
    trials = decided = 0.0
    fixed = {5: 0.0, design.max_seeds: 0.0}
    for _ in range(repetitions):
        sequences = {f"arm{k}": gaussian(rng, design.max_seeds, m) for k, m in enumerate(effects)}
        paths, used = simulate(sequences, design)
        trials += used
        decided += sum(path[-1].decision in (AHEAD, BEHIND) for path in paths.values())
        for n in fixed:
            d = np.stack(list(sequences.values()))[:, :n]
            fixed[n] += np.sum(np.abs(d.mean(1)) > stats.t.ppf(0.975, n - 1) * d.std(1, ddof=1) / np.sqrt(n))
    arms = len(effects) + 1
    return (f"a study, focus against {len(effects)} arms at {', '.join(f'{m:g}' for m in effects)} sd: "
            f"sequential {decided / repetitions:.2f} decided in {trials / repetitions:.1f} trials; "
            + "; ".join(f"fixed {n} seeds {fixed[n] / repetitions:.2f} in {arms * n}" for n in fixed))


def fixed_decided(draw, mean: float, seeds: int, repetitions: int, rng) -> float:
    """The share a fixed design of ``seeds`` seeds decides (its 95% t interval excludes 0)."""
    d = draw(rng, (repetitions, seeds), mean)
    half = stats.t.ppf(0.975, seeds - 1) * d.std(axis=1, ddof=1) / np.sqrt(seeds)
    return float(np.mean(np.abs(d.mean(axis=1)) > half))


def row(name: str, draw, mean: float, design: SequentialDesign, repetitions: int, rng) -> str:
    coverage, decided, seeds = measure(draw, mean, design, repetitions, rng)
    fixed = [fixed_decided(draw, mean, n, repetitions, rng) for n in (5, design.max_seeds)]
    return (f"{name:<48} {coverage:>8.3f} {decided:>8.3f} {seeds:>10.2f} {fixed[0]:>8.3f} {fixed[1]:>8.3f}"
            f" {decided / seeds:>9.3f} {fixed[0] / 5:>9.3f} {fixed[1] / design.max_seeds:>9.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=4000)
    parser.add_argument("--min-seeds", type=int, default=4)
    parser.add_argument("--max-seeds", type=int, default=12)
    parser.add_argument("--rho", type=float, default=DEFAULT_RHO, help="alpha spent by look n: alpha (n / max) ** rho")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--study", default=None, help="resample seed differences from this study's runs")
    args = parser.parse_args(argv)
    design = SequentialDesign(args.min_seeds, args.max_seeds, rho=args.rho)
    rng = np.random.default_rng(0)
    scenarios = [(f"Gaussian, true difference {m:g} sd", gaussian, m) for m in (0, 0.5, 1, 2, 3)]
    scenarios += [("t with 3 df, difference 0", heavy_tails, 0.0), ("t with 3 df, difference 1", heavy_tails, 1.0),
                  ("skewed outcomes, difference 0", skewed, 0.0), ("skewed outcomes, difference 1", skewed, 1.0),
                  ("one arm collapses on 10% of seeds", collapse(0.1, 4.0), 0.0)]
    beyond = [("collapse on 20% of seeds", collapse(0.2, 4.0), 0.0), ("collapse by 6 sd on 10%", collapse(0.1, 6.0), 0.0),
              ("skewed differences (skewness 2)", skewed_differences, 0.0)]
    if args.study:
        differences = study_differences(args.tracking_uri, args.study)
        residuals = study_residuals(differences)
        scenarios += [(f"{args.study}'s seeds resampled, difference {m:g}", resampled(residuals), m) for m in (0, 1)]
    print(f"design: looks at {design.looks[0]}..{design.looks[-1]} seeds, alpha {design.alpha}, rho {design.rho:g}, "
          f"boundaries {', '.join(f'{c:.2f}' for c in (design.boundary(n) for n in design.looks))}; "
          f"{args.repetitions} repetitions a row")
    print(f"{'':<48} {'':>8} {'sequential':>19} {'':>10} {'decided at':>17} {'decided per seed':>29}")
    print(f"{'scenario':<48} {'coverage':>8} {'decided':>8} {'mean seeds':>10} {'5 seeds':>8} {'12 seeds':>8}"
          f" {'sequent.':>9} {'fixed 5':>9} {'fixed 12':>9}")
    for name, draw, mean in scenarios:
        print(row(name, draw, mean, design, args.repetitions, rng))
    print("beyond the laws the boundaries are calibrated under (study.sequential.CALIBRATION_LAWS):")
    for name, draw, mean in beyond:
        print(row(name, draw, mean, design, args.repetitions, rng))
    covered = 0
    for _ in range(args.repetitions):
        n, low, high = naive_peeking(gaussian(rng, design.max_seeds, 0.0), design)
        covered += low <= 0.0 <= high
    print(study_row((0.0, 0.5, 1.0, 2.0, 3.0, 5.0), design, args.repetitions // 4, rng))
    print(f"{'naive peeking (fixed-n t), difference 0':<48} {covered / args.repetitions:>8.3f}")
    if args.study:
        print(f"\nwhich design decides the most per trial for a study like {args.study} "
              f"({args.repetitions // 4} simulated studies a row):")
        designs = [(f"sequential, looks {low}..12, rho {rho:g}, at most {budget or 'any'} trials",
                    SequentialDesign(low, 12, rho=rho), budget)
                   for rho in (0.5, 2.0) for low in (4, 5) for budget in (35, 42, None)]
        for line in design_rows(differences, designs, args.repetitions // 4, rng):
            print(line)


if __name__ == "__main__":
    main()
