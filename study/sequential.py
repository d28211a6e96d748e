"""Repeated confidence intervals of a group-sequential paired t design (Jennison & Turnbull 1984;
"Group Sequential Methods", 2000, ch. 9).

Unit: a seed (or a (base model, seed) pair) on which both arms ran; ``d_s`` the focus arm minus the
other on that seed. After ``n`` seeds, with mean ``dbar_n`` and standard deviation ``s_n`` (n - 1
df), the repeated interval at look ``n`` is ``dbar_n +- c_n s_n / sqrt(n)``. The boundaries ``c_n``
of the planned looks are chosen so that the true difference lies inside every interval of the plan
with probability 1 - alpha; then the interval reported at any look where the study stops, for
whatever reason (a decision, futility, the budget), covers it with probability at least 1 - alpha.

Calibration: the law of the t statistics at the looks does not depend on the scale of the seed
differences, only on their shape, so the boundaries are found once by Monte Carlo, spending alpha
as ``alpha (n / n_max) ** rho`` by look ``n`` (the power family of Kim & DeMets 1987): at each look,
among the simulated studies whose statistic has stayed inside every earlier boundary, ``c_n`` is
the quantile of ``|T_n|`` that spends that look's share. A t procedure at 4-12 seeds is not robust
to skew or to a rare collapse (calibrated under the Gaussian alone, the interval where a study
stopped covered 0.92 when one arm collapses on 10% of seeds; fewer looks or a higher minimum did
not mend it: 0.916-0.918 for looks 4..12, 5..12, 6..12, {4, 8, 12}, {6, 9, 12}, measured in this
issue's work). So each boundary is the largest of those calibrated under each law of
``CALIBRATION_LAWS`` (Gaussian; Student's t with 3 df; one arm's outcomes skewed, exponential; one
arm collapsing on 10% of seeds, a drop of 4 sd), and the plan keeps 1 - alpha under every one of
them (the least favourable law sets each look). ``boundaries`` returns them from the table checked
in beside this module (``sequential_boundaries.json``, written by ``python -m study.sequential
--write-table``) or, for a design not in it, computes them (seconds).
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

TABLE = Path(__file__).with_name("sequential_boundaries.json")
DRAWS = 1_000_000  # simulated null studies per design (Monte Carlo error of a boundary: about 0.5%)
CALIBRATION_SEED = 20261206
TABLE_ALPHAS = (0.05, 0.04)  # 0.04: a design on problems like these (0.05 less the problem share)
TABLE_RHOS = (0.5, 2.0)
DEFAULT_RHO = 0.5  # of the power family: decided the most per trial at a fixed-5 budget (see the README)
TABLE_MIN_SEEDS = (3, 4, 5, 6)
TABLE_MAX_SEEDS = 12


def design_key(looks: tuple[int, ...], alpha: float, rho: float) -> str:
    return f"looks={','.join(map(str, looks))};alpha={alpha:g};rho={rho:g}"


def spent(looks: tuple[int, ...], alpha: float, rho: float) -> np.ndarray:
    """The type-I error spent by each look, cumulated: ``alpha (n / n_max) ** rho``."""
    return alpha * (np.asarray(looks, dtype=float) / looks[-1]) ** rho


def _gaussian(rng, shape):
    return rng.standard_normal(shape)


def _t3(rng, shape):
    return rng.standard_t(3, shape)


def _one_arm_skewed(rng, shape):
    """The focus arm's outcome exponential, the other's Gaussian, equal spread: skewness 0.71."""
    return (rng.exponential(1.0, shape) - 1.0 - rng.standard_normal(shape)) / np.sqrt(2.0)


def _one_arm_collapses(rng, shape):
    """Gaussian, less 4 sd on 10% of seeds (centred: the collapse is part of the true difference)."""
    return rng.standard_normal(shape) - 4.0 * (rng.random(shape) < 0.1) + 0.4


CALIBRATION_LAWS = {"gaussian": _gaussian, "t3": _t3, "one arm skewed": _one_arm_skewed,
                    "one arm collapses on 10% of seeds": _one_arm_collapses}


def null_statistics(looks: tuple[int, ...], draws: int, seed: int, law=_gaussian) -> np.ndarray:
    """``|T_n|`` at each look of ``draws`` simulated studies whose seed differences follow ``law``
    (centred: no true difference): shape (draws, looks)."""
    rng = np.random.default_rng(seed)
    out = np.empty((draws, len(looks)))
    for start in range(0, draws, 100_000):  # in blocks: memory stays small
        d = law(rng, (min(100_000, draws - start), looks[-1]))
        sums, squares = np.cumsum(d, axis=1), np.cumsum(d * d, axis=1)
        for j, n in enumerate(looks):
            mean = sums[:, n - 1] / n
            sd = np.sqrt(np.maximum(squares[:, n - 1] - n * mean * mean, 0.0) / (n - 1))
            with np.errstate(divide="ignore", invalid="ignore"):  # sd 0: a tie, never inside
                out[start : start + len(d), j] = np.abs(mean) * np.sqrt(n) / sd
    return out


def spend(statistics: np.ndarray, looks: tuple[int, ...], alpha: float, rho: float) -> tuple[float, ...]:
    """The boundaries that spend ``alpha`` by the power family over simulated null ``statistics``."""
    draws = len(statistics)
    targets = spent(looks, alpha, rho)
    inside = np.ones(draws, dtype=bool)  # studies that have crossed no boundary yet
    bounds = []
    for j in range(len(looks)):
        crossings_allowed = targets[j] * draws - (draws - inside.sum())  # this look's share, in studies
        candidates = np.sort(statistics[inside, j])[::-1]
        k = int(np.floor(crossings_allowed))
        bound = float(candidates[k]) if 0 <= k < len(candidates) else float("inf")
        bounds.append(bound)
        inside &= statistics[:, j] <= bound
    return tuple(bounds)


def calibrate(looks: tuple[int, ...], alpha: float, rho: float, draws: int = DRAWS,
              seed: int = CALIBRATION_SEED, laws: tuple[str, ...] = tuple(CALIBRATION_LAWS)) -> tuple[float, ...]:
    """The boundaries ``c_n`` of the planned ``looks`` (each at least 2 seeds, increasing): at each
    look the largest over ``laws`` of the boundary that spends ``alpha`` by the power family with
    exponent ``rho`` under that law, by Monte Carlo."""
    per_law = [spend(null_statistics(looks, draws, seed + list(CALIBRATION_LAWS).index(name),
                                         CALIBRATION_LAWS[name]), looks, alpha, rho)
               for name in laws]
    return tuple(float(c) for c in np.max(per_law, axis=0))


def table_designs() -> list[tuple[tuple[int, ...], float, float]]:
    """The designs the checked-in table holds: looks at every seed from each minimum to 12."""
    return [(tuple(range(low, TABLE_MAX_SEEDS + 1)), alpha, rho)
            for alpha in TABLE_ALPHAS for rho in TABLE_RHOS for low in TABLE_MIN_SEEDS]


@functools.cache
def _table() -> dict[str, list[float]]:
    return json.loads(TABLE.read_text())["boundaries"] if TABLE.is_file() else {}


@functools.cache
def boundaries(looks: tuple[int, ...], alpha: float, rho: float = DEFAULT_RHO) -> tuple[float, ...]:
    """``c_n`` for each planned look: from the checked-in table, else calibrated now (once a process)."""
    looks = tuple(int(n) for n in looks)
    if len(looks) == 0 or looks[0] < 2 or any(b <= a for a, b in zip(looks, looks[1:])):
        raise ValueError(f"looks {looks}: need increasing seed counts of at least 2")
    stored = _table().get(design_key(looks, alpha, rho))
    return tuple(stored) if stored is not None else calibrate(looks, alpha, rho)


AHEAD, BEHIND, EQUIVALENT, CONTINUE, AT_MAXIMUM = "ahead", "behind", "equivalent", "continue", "at max_seeds"
FAILED = "no outcome"  # a trial of the comparison failed, or its metric is not a number
FUTILE = "more seeds cannot decide"  # on problems like these: the problem set's margin is wider than the difference
THESE, LIKE_THESE = "these", "like these"  # what the intervals speak of: these evaluation problems, or problems like them
PROBLEM_SHARE = 0.2  # of alpha, spent on the problem set's margin when the intervals speak of problems like these


@dataclass(frozen=True)
class SequentialDesign:
    """Looks at every seed count from ``min_seeds`` to ``max_seeds`` of a pre-registered seed list;
    ``equivalence``: a margin within which an interval decides "equivalent" (None: never);
    ``problems``: THESE (the intervals speak of the study's evaluation problems) or LIKE_THESE
    (of problems like them: each interval widened by the problem set's own margin, alpha split)."""

    min_seeds: int = 4
    max_seeds: int = 12
    alpha: float = 0.05
    rho: float = DEFAULT_RHO
    equivalence: float | None = None
    problems: str = THESE

    @property
    def looks(self) -> tuple[int, ...]:
        return tuple(range(self.min_seeds, self.max_seeds + 1))

    @property
    def seed_alpha(self) -> float:
        """The alpha the seeds' repeated intervals spend: all of it, or all but the problem share."""
        return self.alpha if self.problems == THESE else round(self.alpha * (1 - PROBLEM_SHARE), 10)

    def boundary(self, seeds: int) -> float:
        return boundaries(self.looks, self.seed_alpha, self.rho)[self.looks.index(seeds)]

    def problem_margin(self, per_problem: np.ndarray) -> float:
        """The margin for the problem set's own effect: ``z sd_p(dbar_p) / sqrt(P)`` over the
        per-problem differences averaged over the seeds so far (rows: seeds, columns: problems;
        the seeds' noise in it makes it conservative), z spending ``PROBLEM_SHARE`` of alpha; 0 on
        these problems."""
        if self.problems == THESE or per_problem.size == 0:
            return 0.0
        means = per_problem.mean(axis=0)
        z = stats.norm.ppf(1 - self.alpha * PROBLEM_SHARE / 2)
        return float(z * means.std(ddof=1) / np.sqrt(len(means)))


@dataclass(frozen=True)
class Look:
    """A comparison's repeated interval after ``seeds`` seeds, and what it decides."""

    seeds: int
    estimate: float
    low: float
    high: float
    boundary: float
    decision: str  # AHEAD, BEHIND (the focus arm against the other), EQUIVALENT, CONTINUE, AT_MAXIMUM, FUTILE or FAILED
    problem_margin: float = 0.0  # in low and high: the problem set's margin (problems like these)


def look(differences: Sequence[float], design: SequentialDesign, problem_margin: float = 0.0) -> Look:
    """The repeated interval ``dbar +- (c_n s / sqrt(n) + problem_margin)`` over the paired seed
    differences so far (the focus arm minus the other, oriented so that positive is better for the
    focus) and its decision: ahead or behind when it excludes 0, equivalent when it lies inside the
    margin, futile when the problem margin alone is wider than the difference (more seeds shrink only
    the seed part), at the maximum when the design allows no more seeds, else continue."""
    d = np.asarray(differences, dtype=float)
    n = len(d)
    boundary = design.boundary(n)
    half = boundary * float(d.std(ddof=1)) / np.sqrt(n) + problem_margin
    estimate = float(d.mean())
    low, high = estimate - half, estimate + half
    margin = design.equivalence
    if low > 0 or high < 0:
        decision = AHEAD if low > 0 else BEHIND
    elif margin is not None and -margin < low and high < margin:
        decision = EQUIVALENT
    elif problem_margin > 0 and abs(estimate) <= problem_margin:
        decision = FUTILE
    else:
        decision = AT_MAXIMUM if n >= design.max_seeds else CONTINUE
    return Look(n, estimate, low, high, boundary, decision, problem_margin)


Scores = Mapping[str, Mapping[int, float | None]]  # arm -> seed index -> its outcome (None: the trial failed)
Problems = Mapping[str, Mapping[int, np.ndarray]]  # arm -> seed index -> its outcome per problem (problems like these)


@dataclass(frozen=True)
class Allocation:
    """What the scores so far say: each comparison's looks (the focus arm against ``arm``), the
    trials still needed for the next look of every open comparison, and whether the study is done."""

    paths: dict[str, list[Look]]
    needed: list[tuple[str, int]]  # (arm, seed index), lowest seed first, the focus arm first at each
    done: bool

    def open(self) -> list[str]:
        return [arm for arm, path in self.paths.items() if not path or path[-1].decision == CONTINUE]


def _path(focus: Mapping[int, float | None], other: Mapping[int, float | None], design: SequentialDesign,
          problems: tuple[Mapping[int, np.ndarray], Mapping[int, np.ndarray]] = ({}, {})) -> list[Look]:
    """A comparison's looks, as far as both arms' finished seeds (a prefix of the seed list) reach."""
    looks: list[Look] = []
    for n in design.looks:
        pairs = [(focus.get(i), other.get(i)) for i in range(n)]
        if any(i not in focus or i not in other for i in range(n)):
            break
        if any(a is None or b is None for a, b in pairs):
            looks.append(Look(n, float("nan"), float("nan"), float("nan"), design.boundary(n), FAILED))
            break
        per_problem = np.asarray([problems[0][i] - problems[1][i] for i in range(n)
                                  if i in problems[0] and i in problems[1]])
        looks.append(look([a - b for a, b in pairs], design, design.problem_margin(per_problem)))
        if looks[-1].decision != CONTINUE:
            break
    return looks


def allocate(scores: Scores, focus: str, others: Sequence[str], design: SequentialDesign,
             problems: Problems | None = None) -> Allocation:
    """Each comparison's looks from the finished trials' outcomes (oriented: higher is better), and
    the trials the open ones need next: every seed up to the next look, for both arms; the focus
    arm's run on a seed serves every comparison that reaches it. A pure function of the scores, so
    a resumed study re-derives the same decisions and never records one twice. ``problems``: each
    trial's outcome per problem (the same problems, in the same order), for problems like these."""
    problems = problems or {}
    paths = {arm: _path(scores.get(focus, {}), scores.get(arm, {}), design,
                        (problems.get(focus, {}), problems.get(arm, {}))) for arm in others}
    needed: set[tuple[str, int]] = set()
    for arm, path in paths.items():
        if path and path[-1].decision != CONTINUE:
            continue
        upto = path[-1].seeds + 1 if path else design.min_seeds
        needed |= {(name, i) for name in (focus, arm) for i in range(upto) if i not in scores.get(name, {})}
    order = sorted(needed, key=lambda trial: (trial[1], trial[0] != focus, trial[0]))
    return Allocation(paths, order, done=not needed)


def write_table(path: Path = TABLE, draws: int = DRAWS) -> None:
    """Calibrate every design of ``table_designs`` on ``draws`` null studies and write the table
    (temporary file, then rename)."""
    entries = {design_key(*design): [round(c, 4) for c in calibrate(*design, draws=draws)] for design in table_designs()}
    payload = {"method": "group-sequential paired t, power-family alpha spending, Monte Carlo, the largest "
                         "boundary over the laws: " + ", ".join(CALIBRATION_LAWS),
               "draws": draws, "seed": CALIBRATION_SEED, "boundaries": entries}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.rename(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.sequential", description=__doc__.split("\n")[0])
    parser.add_argument("--write-table", action="store_true", help=f"calibrate and write {TABLE.name}")
    parser.add_argument("--draws", type=int, default=DRAWS, help="simulated null studies per design")
    parser.add_argument("--out", type=Path, default=TABLE, help="where --write-table writes (default: the checked-in table)")
    args = parser.parse_args(argv)
    if args.write_table:
        write_table(args.out, args.draws)
    for key, bounds in json.loads(args.out.read_text())["boundaries"].items():
        print(key, " ".join(f"{c:.2f}" for c in bounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
