"""A study's expected wall time on this machine, for ``--dry-run``: a cost model of a trial.

A trial costs a start-up, then per step its rollout (generated tokens), its update (trained
tokens: prompt + response, each PPO epoch) and, every ``eval.every`` steps, an evaluation
(generated tokens). The seconds per token were measured on the default study's seven trials, two
at a time on one thread each, on the reference machine (2-core x86, AVX2; ``perf/*`` of each
trial; ``python -m benchmarks.trial_speed`` prints the same figures for one trial); a response is
taken to use ``RESPONSE_SHARE`` of its budget (the default trials' rollouts: 84 of 160 tokens). A group
filter says how many rollouts a step generates and trains at most (``rollouts_per_step``: GFPO
generates all and trains its kept share; dynamic sampling is costed at all its rounds, an upper bound).
Trials on more threads are costed as on one (an upper bound). Trials are placed on as many slots
as the machine's CPUs (or ``--max-concurrent-trials``) allow, in order, each on the slot free
first. GPU trials are not estimated: the figures are CPU ones.
"""

from __future__ import annotations

import heapq
import math
import os

from trainers.config import TrainConfig

STARTUP_SECONDS = 10.0  # the trial's process and imports, model load, Tune's bookkeeping
ROLLOUT_SECONDS_PER_TOKEN = 1.8e-4  # generated
UPDATE_SECONDS_PER_TOKEN = 2.5e-4  # trained: policy forward + backward, the reference's and the old policy's forwards
EVAL_SECONDS_PER_TOKEN = 1.7e-4  # generated
RESPONSE_SHARE = 0.55  # of the response budget
PROMPT_SHARE = 0.2  # of rollout.max_prompt_tokens
DEFAULT_EVAL_PROBLEMS = 500  # a task that does not say how many eval problems it has


def trial_seconds(config: TrainConfig) -> float:
    """The cost model's seconds for one trial of ``config`` on one thread."""
    rollout, train, evaluation = config.rollout, config.train, config.eval
    response = RESPONSE_SHARE * rollout.max_budget
    generated, rows = rollout.group_filter.rollouts_per_step(train.prompts_per_step, rollout.n)
    trained = rows * (PROMPT_SHARE * rollout.max_prompt_tokens + response) * train.ppo_epochs
    evaluations = math.ceil(train.steps / evaluation.every)
    problems = evaluation.num_problems or getattr(config.task, "eval_size", None) or DEFAULT_EVAL_PROBLEMS
    return (STARTUP_SECONDS + train.steps * generated * response * ROLLOUT_SECONDS_PER_TOKEN
            + train.steps * trained * UPDATE_SECONDS_PER_TOKEN
            + evaluations * problems * evaluation.n_samples * response * EVAL_SECONDS_PER_TOKEN)


def makespan(durations: list[float], slots: int) -> float:
    """Wall time of running ``durations`` in order, each on the first slot to come free."""
    free = [0.0] * max(1, slots)
    for duration in durations:
        heapq.heappush(free, heapq.heappop(free) + duration)
    return max(free)


def expected_wall_time(spec, plans, max_concurrent: int | None = None) -> str:
    """One line: the study's expected wall time here, or why it is not estimated."""
    if spec.resources.trial_gpus > 0:
        return "expected wall time: not estimated for GPU trials (the cost model is measured on CPU)"
    per_plan = spec.search.trials_per_plan
    configs = [TrainConfig.of(p.config) for p in plans]
    durations = [trial_seconds(config) for config in configs for _ in range(per_plan)]
    more_rounds = any(c.rollout.group_filter.rollouts_per_step(1, c.rollout.n)[0] > c.rollout.n for c in configs)
    cpus = os.cpu_count() or 1
    slots = max(1, int(cpus // spec.resources.cpus))
    for limit in (max_concurrent, spec.max_concurrent_trials):
        slots = min(slots, limit) if limit else slots
    minutes = makespan(durations, slots) / 60
    bounds = [why for why, applies in (("ASHA stops trials early", spec.search.stops_trials_early),
                                       ("trials run on more than one thread", spec.resources.trial_threads > 1),
                                       ("a group filter's extra rounds are all counted", more_rounds)) if applies]
    bound = f"; an upper bound: {' and '.join(bounds)}" if bounds else ""
    return (f"expected wall time: {minutes:.0f} min on this machine ({len(durations)} trials, {slots} at a time on "
            f"{cpus} CPUs, ~{sum(durations) / len(durations) / 60:.1f} min each; a cost model measured on a 2-core "
            f"x86 machine, base model build not included{bound})")
