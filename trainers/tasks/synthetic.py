"""The synthetic overthinking task: sums of k single-digit numbers, answered by running sums.

A problem ``3+5+2+7`` is prompted as ``Q:3+5+2+7=`` and minimally answered by the chain of
running partial sums and an answer line, then EOS::

    3+5=8;8+2=10;10+7=17;A:17

The verbose traces the base model is trained on add redundant work in random amounts: re-check
lines ``c:<step>`` after steps (each with a per-trace probability ``p ~ U(0, 1)``) and a full
re-derivation ``r:<all steps>`` (probability ``rederive_prob``). Some traces take shortcuts that
merge 2-3 numbers per step (probability ``shortcut_prob``); the small model gets those wrong more
often, so compressing too far costs accuracy. Correctness is the exact final answer.

Every problem has a stable id (``int("1" + digits)``) and a known minimal trace length. The
train / eval split is a fixed function of the problem (a hash of its digits), not of any seed: the
eval split is never trained on.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from trainers.tasks import TaskSettings, register_task

PROMPT_PREFIX = "Q:"
PROMPT_SUFFIX = "="
ANSWER_RE = re.compile(r"A:(\d+)$")
VOCAB = ["<pad>", "<eos>", "<unk>", *"0123456789", "+", "=", ";", ":", "Q", "A", "c", "r"]


@register_task("synthetic")
class SyntheticTaskConfig(TaskSettings):
    """Settings of the generated task (problems, split and verbose traces)."""

    kind: Literal["synthetic"] = "synthetic"
    min_terms: int = Field(2, ge=2)
    max_terms: int = Field(10, le=12)
    eval_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share of all problems in the eval split")
    eval_size: int = Field(500, ge=1, description="eval problems drawn from the eval split")
    eval_seed: int = 1234
    truncated_is_wrong: bool = Field(False, description="a response cut off by the budget counts as incorrect (ThinkPrune)")
    # verbose traces of the SFT data
    rederive_prob: float = Field(0.6, ge=0.0, le=1.0)
    shortcut_prob: float = Field(0.25, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _terms_ordered(self) -> "SyntheticTaskConfig":
        if self.min_terms > self.max_terms:
            raise ValueError(f"min_terms ({self.min_terms}) must not exceed max_terms ({self.max_terms})")
        return self

    def build(self) -> "SyntheticTask":
        return SyntheticTask(self)

    def check_run(self, config) -> None:
        longest_prompt = len("Q:") + 2 * self.max_terms
        if longest_prompt > config.rollout.max_prompt_tokens:
            raise ValueError(
                f"rollout.max_prompt_tokens ({config.rollout.max_prompt_tokens}) is smaller than the longest "
                f"prompt ({longest_prompt} tokens)"
            )


@dataclass(frozen=True)
class Problem:
    """One problem: its digits, stable id, prompt, answer and minimal response length (tokens)."""

    digits: tuple[int, ...]

    @property
    def id(self) -> int:
        return int("1" + "".join(map(str, self.digits)))

    @property
    def k(self) -> int:
        return len(self.digits)

    @property
    def prompt(self) -> str:
        return PROMPT_PREFIX + "+".join(map(str, self.digits)) + PROMPT_SUFFIX

    @property
    def answer(self) -> str:
        return str(sum(self.digits))

    @property
    def minimal_response(self) -> str:
        return "".join(chain_steps(self.digits, [1] * (self.k - 1))) + "A:" + self.answer

    @property
    def minimal_length(self) -> int:
        """Tokens of the minimal response, EOS included (one token per character)."""
        return len(self.minimal_response) + 1


def chain_steps(digits: tuple[int, ...], merges: list[int]) -> list[str]:
    """Running-sum steps; ``merges[j]`` is how many new numbers step ``j`` adds (1 = minimal)."""
    steps, total, pos = [], digits[0], 1
    for add in merges:
        terms = digits[pos : pos + add]
        new_total = total + sum(terms)
        steps.append(f"{total}+{'+'.join(map(str, terms))}={new_total};")
        total, pos = new_total, pos + add
    return steps


def in_eval_split(problem: Problem, eval_fraction: float) -> bool:
    """Fixed by the problem alone: a hash of its digits below ``eval_fraction``."""
    digest = hashlib.blake2b(str(problem.id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < eval_fraction


def sample_problem(rng: random.Random, config: SyntheticTaskConfig, split: Literal["train", "eval"]) -> Problem:
    """A uniformly drawn number of terms, then uniform digits 1-9, rejected until in ``split``."""
    want_eval = split == "eval"
    while True:
        k = rng.randint(config.min_terms, config.max_terms)
        problem = Problem(tuple(rng.randint(1, 9) for _ in range(k)))
        if in_eval_split(problem, config.eval_fraction) == want_eval:
            return problem


def eval_problems(config: SyntheticTaskConfig) -> list[Problem]:
    """The fixed eval set: ``eval_size`` distinct problems of the eval split, seeded by ``eval_seed``."""
    rng = random.Random(config.eval_seed)
    chosen: dict[int, Problem] = {}
    pool = sum(9**k for k in range(config.min_terms, config.max_terms + 1)) * config.eval_fraction
    if config.eval_size > 0.5 * pool:
        raise ValueError(f"task.eval_size ({config.eval_size}) is too large for an eval split of ~{int(pool)} problems")
    while len(chosen) < config.eval_size:
        problem = sample_problem(rng, config, "eval")
        chosen.setdefault(problem.id, problem)
    return list(chosen.values())


def verbose_response(problem: Problem, rng: random.Random, config: SyntheticTaskConfig) -> str:
    """An SFT trace: the chain (maybe with shortcuts), re-checks and maybe a full re-derivation."""
    merges = [1] * (problem.k - 1)
    if problem.k > 2 and rng.random() < config.shortcut_prob:
        merges, left = [], problem.k - 1
        while left:
            add = min(left, rng.choice((1, 2, 3)))
            merges.append(add)
            left -= add
    check_prob = rng.random()
    parts = []
    for step in chain_steps(problem.digits, merges):
        parts.append(step)
        if rng.random() < check_prob:
            parts.append("c:" + step)
    if rng.random() < config.rederive_prob:
        parts.append("r:" + "".join(chain_steps(problem.digits, [1] * (problem.k - 1))))
    return "".join(parts) + "A:" + problem.answer


class SyntheticTask:
    """The task as the trainer sees it: train batches by step, the fixed eval set, grading."""

    def __init__(self, config: SyntheticTaskConfig):
        self.config = config

    def train_problems(self, step: int, count: int, seed: int) -> list[Problem]:
        """The training prompts of ``step``: a pure function of (seed, step), so resuming is exact."""
        rng = random.Random(f"train-{seed}-{step}")
        return [sample_problem(rng, self.config, "train") for _ in range(count)]

    def eval_problems(self) -> list[Problem]:
        return eval_problems(self.config)

    def prompt_ids(self, problem: Problem, tokenizer) -> list[int]:
        return tokenizer.encode(problem.prompt)

    def grade(self, responses: list[str], problems: list[Problem]) -> list[float]:
        return [grade(response, problem) for response, problem in zip(responses, problems)]

    def response_features(self, response: str) -> dict[str, int]:
        return count_features(response)

    def close(self) -> None:
        """Nothing to release: the task is pure Python."""

    def grading_counts(self) -> dict[str, int]:
        """Exact string matching never fails nor times out."""
        return {"errors": 0, "timeouts": 0}


def grade(response: str, problem: Problem) -> float:
    """1.0 when the response ends with the answer line ``A:<sum>`` (exact), else 0.0."""
    match = ANSWER_RE.search(response)
    return float(match is not None and match.group(1) == problem.answer)


def count_features(response: str) -> dict[str, int]:
    """Counts of redundant work in a response: re-check lines and re-derivations."""
    return {"rechecks": response.count("c:"), "rederivations": response.count("r:")}
