"""The arm under test against the other arms of a study, with intervals, by a protocol that never
picks and scores on the same numbers.

The arm under test (the focus) is the study's to name (``StudySpec.focus``: PSI by default, or a
user's own weighting from a plugin, or any arm). Protocol: the evaluation problems are split once
(``analysis.stats.selection_split``: a third for selection, the rest for testing, by a seeded hash
of the problem id). Every (arm, variant) is scored at its trials' last evaluations. On the
selection problems, the focus arm's best variant and the best (arm, variant) of every other arm
(static grids, schedules, baselines, population members) are chosen by mean AES over seeds; on
the test problems, the chosen focus variant is compared with the chosen other arm and with every
other (arm, variant) (``analysis.stats.compare``). AES is computed against the base model's numbers
on the whole evaluation set, the same reference the trainer uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from analysis.compute import final_problems
from analysis.load import StudyData
from analysis.stats import SELECTION_FRACTION, ArmScores, Comparison, compare, selection_split
from trainers import contract as M


@dataclass(frozen=True)
class Group:
    """One (arm, variant) at its trials' final evaluations."""

    arm: str
    variant: str
    weighting: str | None
    scores: ArmScores
    motion: str | None = None  # how its weight moves (trainers.contract.MOTIONS)
    trials: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return M.arm_label(self.arm, self.variant)


def final_groups(data: StudyData, steps: dict[str, int] | None = None) -> list[Group]:
    """Every evaluated (arm, variant): accuracy and length per (seed, problem) at each trial's last
    evaluation (or at ``steps[trial]``), on the problems all its trials evaluated."""
    final = final_problems(data.problems, steps)
    runs = data.runs.select(["trial", "arm", "variant", "seed", M.TAG_WEIGHTING, M.TAG_MOTION]).to_pylist()
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["arm"], run["variant"], run[M.TAG_WEIGHTING], run[M.TAG_MOTION]), []).append(run)
    out = []
    for (arm, variant, weighting, motion), members in sorted(groups.items(), key=lambda item: item[0][:2]):
        tables = {m["seed"]: final.filter(pc.equal(final["trial"], m["trial"])) for m in members}
        tables = {seed: t for seed, t in tables.items() if t.num_rows}
        if not tables:
            continue
        problems = sorted(set.intersection(*(set(t["problem_id"].to_pylist()) for t in tables.values())))
        seeds = tuple(sorted(tables))

        def matrix(column: str) -> np.ndarray:
            rows = []
            for seed in seeds:
                values = dict(zip(tables[seed]["problem_id"].to_pylist(), tables[seed][column].to_pylist()))
                rows.append([values[p] for p in problems])
            return np.asarray(rows, dtype=float)

        scores = ArmScores(seeds, np.asarray(problems), matrix("accuracy"), matrix("mean_length"))
        out.append(Group(arm, variant, weighting, scores, motion, tuple(m["trial"] for m in members)))
    return out


def base_numbers(data: StudyData) -> tuple[float, float] | None:
    """The base model's accuracy and mean length on the whole evaluation set (None if not logged);
    where trials started from several base models, the mean over the trials of each one's own."""
    values = {}
    for key in (M.BASE_ACCURACY, M.BASE_RESPONSE_LENGTH):
        rows = data.history.filter(pc.equal(data.history["key"], key))
        per_trial = dict(zip(rows["run_id"].to_pylist(), rows["value"].to_pylist()))  # one value a trial
        distinct = set(per_trial.values())
        values[key] = (distinct.pop() if len(distinct) == 1 else sum(per_trial.values()) / len(per_trial)) if distinct else None
    if not values[M.BASE_ACCURACY] or not values[M.BASE_RESPONSE_LENGTH]:
        return None
    return values[M.BASE_ACCURACY], values[M.BASE_RESPONSE_LENGTH]


@dataclass
class StudyComparison:
    selection_problems: int
    test_problems: int
    best_focus: Group
    best_other: Group
    selection_aes: dict[str, float]  # label -> mean AES on the selection problems
    headline: dict[str, Comparison]  # best focus variant minus best other, on the test problems
    versus: list[tuple[Group, dict[str, Comparison]]]  # best focus variant minus every other (arm, variant), test problems


def compare_study(data: StudyData, fraction: float = SELECTION_FRACTION, seed: int = 0,
                  steps: dict[str, int] | None = None) -> StudyComparison | None:
    """The protocol of the module docstring (each trial at its last evaluation, or at ``steps[trial]``);
    None when the study has no evaluated focus arm and other arm, no base numbers, or too few
    problems to split."""
    groups, base = final_groups(data, steps), base_numbers(data)
    focus = [g for g in groups if g.arm == data.focus]
    others = [g for g in groups if g.arm != data.focus]
    if not focus or not others or base is None:
        return None
    problems = set.intersection(*(set(g.scores.problems.tolist()) for g in groups))
    selection, test = selection_split(sorted(problems), fraction, seed)
    if len(selection) < 2 or len(test) < 2:
        return None
    selection_aes = {g.label: g.scores.restrict(selection).aes(*base) for g in groups}
    best_focus = max(focus, key=lambda g: selection_aes[g.label])
    best_other = max(others, key=lambda g: selection_aes[g.label])
    on_test = {g.label: g.scores.restrict(test) for g in groups}
    versus = [(g, compare(on_test[best_focus.label], on_test[g.label], *base)) for g in others]
    headline = next(result for g, result in versus if g is best_other)
    return StudyComparison(len(selection), len(test), best_focus, best_other, selection_aes, headline, versus)


@dataclass
class Regret:
    """An adaptive or searched (arm, variant) against the best fixed-weight one (chosen on the
    selection problems), on the test problems: its AES minus the fixed arm's."""

    group: Group
    best_fixed: Group
    aes: Comparison


def regrets(data: StudyData, fraction: float = SELECTION_FRACTION, seed: int = 0) -> list[Regret]:
    """Every adaptive or searched (arm, variant) against the best arm of the fixed-weight grid it
    stands in for, by the protocol of the module docstring (empty when there is no such pair)."""
    groups, base = final_groups(data), base_numbers(data)
    fixed = [g for g in groups if g.motion == M.FIXED]
    moving = [g for g in groups if g.motion in (M.ADAPTIVE, M.SEARCHED)]
    if not fixed or not moving or base is None:
        return []
    problems = set.intersection(*(set(g.scores.problems.tolist()) for g in fixed + moving))
    selection, test = selection_split(sorted(problems), fraction, seed)
    if len(selection) < 2 or len(test) < 2:
        return []
    best = max(fixed, key=lambda g: g.scores.restrict(selection).aes(*base))
    return [Regret(g, best, compare(g.scores.restrict(test), best.scores.restrict(test), *base)["aes"])
            for g in moving]
