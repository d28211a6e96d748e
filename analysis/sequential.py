"""Repeated confidence intervals of a group-sequential paired t design (Jennison & Turnbull 1984;
"Group Sequential Methods", 2000, ch. 9).

Unit: a seed (or a (base model, seed) pair) on which both arms ran; ``d_s`` the focus arm minus the
other on that seed. After ``n`` seeds, with mean ``dbar_n`` and standard deviation ``s_n`` (n - 1
df), the repeated interval at look ``n`` is ``dbar_n +- c_n s_n / sqrt(n)``. The boundaries ``c_n``
of the planned looks are chosen so that the true difference lies inside every interval of the plan
with probability 1 - alpha; then the interval reported at any look where the study stops, for
whatever reason (a decision, futility, the budget), covers it with probability at least 1 - alpha.

Calibration: for Gaussian ``d_s`` the joint law of the t statistics at the looks does not depend
on sigma, so the boundaries are found once by Monte Carlo, spending alpha as
``alpha (n / n_max) ** rho`` by look ``n`` (the power family of Kim & DeMets 1987): at each look,
among the simulated studies whose statistic has stayed inside every earlier boundary, ``c_n`` is
the quantile of ``|T_n|`` that spends that look's share. ``boundaries`` returns them from the table
checked in beside this module (``sequential_boundaries.json``, written by ``python -m
analysis.sequential --write-table``) or, for a design not in it, computes them (a second or two).
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TABLE = Path(__file__).with_name("sequential_boundaries.json")
DRAWS = 1_000_000  # simulated null studies per design (Monte Carlo error of a boundary: about 0.5%)
CALIBRATION_SEED = 20261206
TABLE_ALPHAS = (0.05,)
TABLE_RHO = 2.0
TABLE_MIN_SEEDS = (3, 4, 5, 6)
TABLE_MAX_SEEDS = 12


def design_key(looks: tuple[int, ...], alpha: float, rho: float) -> str:
    return f"looks={','.join(map(str, looks))};alpha={alpha:g};rho={rho:g}"


def spent(looks: tuple[int, ...], alpha: float, rho: float) -> np.ndarray:
    """The type-I error spent by each look, cumulated: ``alpha (n / n_max) ** rho``."""
    return alpha * (np.asarray(looks, dtype=float) / looks[-1]) ** rho


def null_statistics(looks: tuple[int, ...], draws: int, seed: int) -> np.ndarray:
    """``|T_n|`` at each look of ``draws`` simulated studies with Gaussian seed differences and no
    true difference: shape (draws, looks)."""
    rng = np.random.default_rng(seed)
    out = np.empty((draws, len(looks)))
    for start in range(0, draws, 100_000):  # in blocks: memory stays small
        d = rng.standard_normal((min(100_000, draws - start), looks[-1]))
        sums, squares = np.cumsum(d, axis=1), np.cumsum(d * d, axis=1)
        for j, n in enumerate(looks):
            mean = sums[:, n - 1] / n
            sd = np.sqrt(np.maximum(squares[:, n - 1] - n * mean * mean, 0.0) / (n - 1))
            out[start : start + len(d), j] = np.abs(mean) * np.sqrt(n) / sd
    return out


def calibrate(looks: tuple[int, ...], alpha: float, rho: float, draws: int = DRAWS,
              seed: int = CALIBRATION_SEED) -> tuple[float, ...]:
    """The boundaries ``c_n`` of the planned ``looks`` (each at least 2 seeds, increasing) that
    spend ``alpha`` by the power family with exponent ``rho``, by Monte Carlo."""
    statistics = null_statistics(looks, draws, seed)
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


def table_designs() -> list[tuple[tuple[int, ...], float, float]]:
    """The designs the checked-in table holds: looks at every seed from each minimum to 12."""
    return [(tuple(range(low, TABLE_MAX_SEEDS + 1)), alpha, TABLE_RHO)
            for alpha in TABLE_ALPHAS for low in TABLE_MIN_SEEDS]


@functools.cache
def _table() -> dict[str, list[float]]:
    return json.loads(TABLE.read_text())["boundaries"] if TABLE.is_file() else {}


def boundaries(looks: tuple[int, ...], alpha: float, rho: float = TABLE_RHO) -> tuple[float, ...]:
    """``c_n`` for each planned look: from the checked-in table, else calibrated now."""
    looks = tuple(int(n) for n in looks)
    if len(looks) == 0 or looks[0] < 2 or any(b <= a for a, b in zip(looks, looks[1:])):
        raise ValueError(f"looks {looks}: need increasing seed counts of at least 2")
    stored = _table().get(design_key(looks, alpha, rho))
    return tuple(stored) if stored is not None else calibrate(looks, alpha, rho)


AHEAD, BEHIND, EQUIVALENT, CONTINUE, AT_MAXIMUM = "ahead", "behind", "equivalent", "continue", "at max_seeds"


@dataclass(frozen=True)
class SequentialDesign:
    """Looks at every seed count from ``min_seeds`` to ``max_seeds`` of a pre-registered seed list;
    ``equivalence``: a margin within which an interval decides "equivalent" (None: never)."""

    min_seeds: int = 4
    max_seeds: int = 12
    alpha: float = 0.05
    rho: float = TABLE_RHO
    equivalence: float | None = None

    @property
    def looks(self) -> tuple[int, ...]:
        return tuple(range(self.min_seeds, self.max_seeds + 1))

    def boundary(self, seeds: int) -> float:
        return boundaries(self.looks, self.alpha, self.rho)[self.looks.index(seeds)]


@dataclass(frozen=True)
class Look:
    """A comparison's repeated interval after ``seeds`` seeds, and what it decides."""

    seeds: int
    estimate: float
    low: float
    high: float
    decision: str  # AHEAD, BEHIND (the focus arm against the other), EQUIVALENT, CONTINUE or AT_MAXIMUM


def look(differences: Sequence[float], design: SequentialDesign) -> Look:
    """The repeated interval ``dbar +- c_n s / sqrt(n)`` over the paired seed differences so far
    (the focus arm minus the other, oriented so that positive is better for the focus) and its
    decision: ahead or behind when it excludes 0, equivalent when it lies inside the margin, at the
    maximum when the design allows no more seeds, else continue."""
    d = np.asarray(differences, dtype=float)
    n = len(d)
    half = design.boundary(n) * float(d.std(ddof=1)) / np.sqrt(n)
    estimate = float(d.mean())
    low, high = estimate - half, estimate + half
    margin = design.equivalence
    if low > 0 or high < 0:
        decision = AHEAD if low > 0 else BEHIND
    elif margin is not None and -margin < low and high < margin:
        decision = EQUIVALENT
    else:
        decision = AT_MAXIMUM if n >= design.max_seeds else CONTINUE
    return Look(n, estimate, low, high, decision)


def run_sequence(differences: Sequence[float], design: SequentialDesign) -> list[Look]:
    """One comparison's looks over a pre-registered sequence of seed differences (at least
    ``max_seeds`` of them), up to the first that decides or the maximum."""
    looks = []
    for n in design.looks:
        looks.append(look(differences[:n], design))
        if looks[-1].decision != CONTINUE:
            break
    return looks


def write_table(path: Path = TABLE) -> None:
    """Calibrate every design of ``table_designs`` and write the table (temporary file, then rename)."""
    entries = {design_key(*design): [round(c, 4) for c in calibrate(*design)] for design in table_designs()}
    payload = {"method": "group-sequential paired t, power-family alpha spending, Monte Carlo",
               "draws": DRAWS, "seed": CALIBRATION_SEED, "boundaries": entries}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.rename(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.sequential", description=__doc__.split("\n")[0])
    parser.add_argument("--write-table", action="store_true", help=f"calibrate and write {TABLE.name}")
    args = parser.parse_args(argv)
    if args.write_table:
        write_table()
    for key, bounds in json.loads(TABLE.read_text())["boundaries"].items():
        print(key, " ".join(f"{c:.2f}" for c in bounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
