"""The sequential design's Ray Tune searcher: it asks ``study.sequential.allocate`` which trials the
open comparisons need next and suggests them one by one (``suggest`` returns a plan name, None to
wait for running trials, or FINISHED). When nothing is needed yet but a trial slot is free, it
starts the focus arm's next seed ahead of the look that will need it (every open comparison's next
look takes it), so the cores stay busy while a look waits for its slowest trial. Budgets: no trial
starts beyond ``max_trials`` or after ``max_hours``; the stop says why.

Its state (the outcomes of finished trials, which trials it started, the looks it has recorded, the
hours already spent) is what ``save`` / ``restore`` keep, so ``--resume`` continues to the same
decisions: the allocation is a pure function of the finished trials' outcomes, and a look is
recorded (``recorder``) only once.
"""

from __future__ import annotations

import json
import math
import pickle
import time

import numpy as np
from ray.tune.search import Searcher

from study.sequential import CONTINUE, Allocation, allocate
from study.trial import PROBLEM_SCORES
from trainers import contract as M
from trainers.loop.evaluation import aes_gradient

STOP_DECIDED = "every comparison decided or at max_seeds"
STOP_TRIALS = "the trial budget (design.max_trials) ran out"
STOP_HOURS = "the wall-time budget (design.max_hours) ran out"


def per_problem(result: dict, metric: str) -> np.ndarray | None:
    """A trial's final outcome per problem (in problem-id order) on the design's metric, from its
    last result: accuracy, length, or AES's share (linearized at the trial's means, against its own
    base model); None when the result has no per-problem scores or the metric is none of those."""
    if PROBLEM_SCORES not in result:
        return None
    scores = json.loads(result[PROBLEM_SCORES])
    order = np.argsort(scores["problem_id"])
    accuracy, length = np.asarray(scores["accuracy"])[order], np.asarray(scores["length"])[order]
    if metric == M.EVAL_ACCURACY:
        return accuracy
    if metric == M.EVAL_RESPONSE_LENGTH:
        return length
    base = result.get(M.BASE_ACCURACY), result.get(M.BASE_RESPONSE_LENGTH)
    if metric != M.EVAL_AES or not all(b and math.isfinite(b) and b > 0 for b in base):
        return None
    g_accuracy, g_length = aes_gradient(float(accuracy.mean()), float(length.mean()), *base)
    return g_accuracy * accuracy + g_length * length


class SequentialSearcher(Searcher):
    def __init__(self, groups: dict[str, list[str]], focus: str, settings, metric: str, direction: str,
                 recorder=None):
        super().__init__(metric=metric, mode=direction)
        self.groups, self.focus, self.settings = groups, focus, settings
        self.design = settings.sequential()
        self.sign = 1.0 if direction == "max" else -1.0
        self.recorder = recorder  # study.mlflow_runs.LookRecorder: each look and the stop, into MLflow
        self.scores: dict[str, dict[int, float | None]] = {label: {} for label in groups}
        self.problems: dict[str, dict[int, np.ndarray]] = {label: {} for label in groups}  # problems like these
        self.started: dict[str, tuple[str, int]] = {}  # trial id -> (group, seed index)
        self.recorded: set[tuple[str, int]] = set()  # (comparison, seeds) looks already recorded
        self.hours_before, self.clock = 0.0, time.monotonic()
        self.stopped: str | None = None
        self.stop_recorded = False

    # ------------------------------------------------------------------ what runs next

    def allocation(self) -> Allocation:
        return allocate(self.scores, self.focus, [g for g in self.groups if g != self.focus], self.design, self.problems)

    def hours(self) -> float:
        return self.hours_before + (time.monotonic() - self.clock) / 3600

    def budget_left(self) -> bool:
        s = self.settings
        if s.max_trials is not None and len(self.started) >= s.max_trials:
            self.stopped = self.stopped or STOP_TRIALS
        if s.max_hours is not None and self.hours() >= s.max_hours:
            self.stopped = self.stopped or STOP_HOURS
        return self.stopped is None

    def pick(self, allocation: Allocation) -> tuple[str, int] | None:
        """The first needed trial not yet started; else the focus arm's next seed, at most one look
        ahead of every open comparison (the look after next takes it), or None."""
        running = set(self.started.values())
        for trial in allocation.needed:
            if trial not in running:
                return trial
        open_looks = [allocation.paths[arm][-1].seeds + 1 if allocation.paths[arm] else self.design.min_seeds
                      for arm in allocation.open()]
        horizon = min(max(open_looks, default=0) + 1, self.design.max_seeds)
        ahead = next((i for i in range(horizon) if (self.focus, i) not in running
                      and i not in self.scores[self.focus]), None)
        return None if ahead is None else (self.focus, ahead)

    def suggest(self, trial_id: str):
        allocation = self.allocation()
        if allocation.done:
            self.stopped = self.stopped or STOP_DECIDED
        if self.stopped is not None or not self.budget_left():
            if self.recorder is not None and not self.stop_recorded:
                self.recorder.stopped(self.stopped)
                self.stop_recorded = True
            return Searcher.FINISHED if not self.in_flight() else None
        trial = self.pick(allocation)
        if trial is None:
            return None
        self.started[trial_id] = trial
        group, index = trial
        return {"trial": self.groups[group][index]}

    def in_flight(self) -> bool:
        done = {(g, i) for g, values in self.scores.items() for i in values}
        return any(trial not in done for trial in self.started.values())

    # ------------------------------------------------------------------ what came back

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.started:
            return
        group, index = self.started[trial_id]
        value = None if error or not result else result.get(self.metric)
        self.scores[group][index] = None if value is None or not math.isfinite(value) else self.sign * value
        outcome = None if error or not result else per_problem(result, self.metric)
        if outcome is not None:
            self.problems[group][index] = self.sign * outcome
        self.record_looks()

    def record_looks(self) -> None:
        allocation = self.allocation()
        for arm, path in allocation.paths.items():
            for look in path:
                if (arm, look.seeds) in self.recorded:
                    continue
                self.recorded.add((arm, look.seeds))
                if self.recorder is not None:
                    following = [self.groups[g][look.seeds] for g in (self.focus, arm)] if look.decision == CONTINUE else []
                    self.recorder(arm, look, len(self.started), following)

    # ------------------------------------------------------------------ --resume

    def save(self, checkpoint_path: str) -> None:
        state = {"scores": self.scores, "problems": self.problems, "started": self.started, "recorded": self.recorded,
                 "hours": self.hours(), "stopped": self.stopped, "stop_recorded": self.stop_recorded}
        with open(checkpoint_path, "wb") as out:
            pickle.dump(state, out)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as saved:
            state = pickle.load(saved)
        self.scores, self.started, self.recorded = state["scores"], state["started"], state["recorded"]
        self.problems = state["problems"]
        self.hours_before, self.clock, self.stopped = state["hours"], time.monotonic(), state["stopped"]
        self.stop_recorded = state["stop_recorded"]
