"""Grading math answers, safely.

    from trainers.grading import grade_answers
    grade_answers(responses, ground_truths, timeout_s=5.0) -> list[float]   # 1.0 correct, 0.0 not

The final answer is the last ``\\boxed{...}`` (or ``\\fbox{...}``) of a response, nested braces
included; ``Grader(fallbacks=...)`` adds other places to look when there is none ("answer_is": a
final "answer is X" / "Answer: X" line; "last_number": the last number in the text). It is
compared with the ground truth by math-verify (sympy), never by ``eval``: ``$...$`` wrappers,
``\\dfrac``, units, zero-padded integers, several comma-separated answers (as a set), decimals
against fractions and scientific notation are all handled there or normalised first.

Every pair is graded in a worker process of a pebble pool with a hard time limit (math-verify's
own limits sit inside it): a pathological output costs at most ``timeout_s`` and counts as wrong;
the hung worker is killed and replaced, and the trainer's process never runs sympy at all.
Workers are spawned (not forked from a process full of threads), so a script that grades at its
top level needs the usual ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import atexit
import math
import multiprocessing
import os
import re
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout

FALLBACKS = ("answer_is", "last_number")
MAX_ANSWER_CHARS = 1_000  # longer "answers" are not math answers, and sympy must not see them

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_ANSWER_IS = re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*:?\s*\$*([^\n$]+?)\$*\s*\.?\s*$", re.IGNORECASE | re.MULTILINE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_SCIENTIFIC = re.compile(r"^(-?\d+(?:\.\d+)?)[eE]([+-]?\d+)$")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (braces balanced), or of a bare
    ``\\boxed 5``; None when there is none or its braces never close."""
    matches = list(_BOXED.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    if start < len(text) and text[start] != "{":
        bare = re.match(r"[^\s$]+", text[start:])
        return bare.group(0) if bare else None
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
    return None


def extract_answer(text: str, fallbacks: Sequence[str] = ()) -> str | None:
    """The response's final answer: its last box, else each fallback in order."""
    answer = last_boxed(text)
    for fallback in fallbacks:
        if answer is not None:
            break
        if fallback == "answer_is":
            found = _ANSWER_IS.findall(text)
            answer = found[-1].strip() if found else None
        elif fallback == "last_number":
            found = _NUMBER.findall(text)
            answer = found[-1] if found else None
        else:
            raise ValueError(f"unknown answer fallback '{fallback}' (known: {', '.join(FALLBACKS)})")
    return answer


def normalize_answer(answer: str) -> str:
    """Spellings math-verify reads differently, in datasets and in model output alike:
    ``$69$,$84$`` -> ``69,84``; ``4.5e33`` -> ``4.5\\times10^{33}``; ``np.arcsin(x)`` -> ``\\arcsin(x)``."""
    answer = answer.strip()
    if "$" in answer:
        answer = ",".join(part.strip().strip("$").strip() for part in answer.split("$,$")) if "$,$" in answer else answer.strip("$")
    scientific = _SCIENTIFIC.match(answer)
    if scientific:
        answer = f"{scientific.group(1)}\\times10^{{{scientific.group(2)}}}"
    return re.sub(r"\bnp\.(\w+)", r"\\\1", answer)


def _parse(latex: str, limit: int):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return parse(f"\\boxed{{{latex}}}", extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
                 parsing_timeout=limit)


def answers_match(answer: str, ground_truth: str, timeout_s: float = 5.0) -> bool:
    """Whether an extracted answer equals the ground truth (math-verify; each of its three steps,
    two parses and the comparison, within a third of ``timeout_s``)."""
    from math_verify import verify

    if not answer.strip() or len(answer) > MAX_ANSWER_CHARS:
        return False
    plain = _PLAIN_NUMBER.fullmatch(answer.strip().strip("$")), _PLAIN_NUMBER.fullmatch(ground_truth.strip().strip("$"))
    if all(plain):  # two plain numbers: relative tolerance (math-verify rounds 2.88e-19 and 1.3e-27 both to 0)
        a, b = float(plain[0].group(0)), float(plain[1].group(0))
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=0.0)
    limit = max(1, int(timeout_s // 3))
    gold = _parse(normalize_answer(ground_truth), limit)
    predicted = _parse(normalize_answer(answer), limit)
    return bool(gold and predicted and verify(gold, predicted, timeout_seconds=limit))


def grade_one(response: str, ground_truth: str, fallbacks: Sequence[str] = (), timeout_s: float = 5.0) -> float:
    """1.0 if the response's final answer equals the ground truth, else 0.0 (no hard limit of its
    own; ``Grader`` runs it in a worker it can kill)."""
    answer = extract_answer(response, fallbacks)
    return 1.0 if answer is not None and answers_match(answer, ground_truth, timeout_s) else 0.0


def _warm_up() -> None:
    """Import sympy and math-verify before the first task, so no task pays for it."""
    grade_one("\\boxed{1}", "1")


class Grader:
    """A pool of grading processes; ``grade`` keeps the order of its inputs."""

    def __init__(self, fallbacks: Sequence[str] = (), workers: int | None = None):
        for fallback in fallbacks:
            if fallback not in FALLBACKS:
                raise ValueError(f"unknown answer fallback '{fallback}' (known: {', '.join(FALLBACKS)})")
        self.fallbacks = tuple(fallbacks)
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._pool = None
        self.timeouts = 0  # pairs stopped by the hard limit (their worker was killed)
        self.errors = 0  # pairs whose grading raised (counted wrong)

    @property
    def pool(self):
        if self._pool is None:
            from pebble import ProcessPool

            self._pool = ProcessPool(max_workers=self.workers, initializer=_warm_up,
                                     context=multiprocessing.get_context("spawn"))
            atexit.register(self.close)
        return self._pool

    def grade(self, responses: Sequence[str], ground_truths: Sequence[str], timeout_s: float = 5.0) -> list[float]:
        if len(responses) != len(ground_truths):
            raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
        if not math.isfinite(timeout_s) or timeout_s <= 0:
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s}")
        futures = [
            self.pool.schedule(grade_one, args=(response, truth, self.fallbacks, timeout_s), timeout=timeout_s)
            for response, truth in zip(responses, ground_truths)
        ]
        scores = []
        for future in futures:  # over the limit, or an error inside sympy: wrong, never a crash
            try:
                scores.append(float(future.result()))
            except FutureTimeout:
                self.timeouts += 1
                scores.append(0.0)
            except Exception:
                self.errors += 1
                scores.append(0.0)
        return scores

    def close(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool.join()
            self._pool = None


_shared: Grader | None = None


def grade_answers(responses: list[str], ground_truths: list[str], timeout_s: float = 5.0) -> list[float]:
    """1.0 for each response whose last ``\\boxed{}`` equals its ground truth, else 0.0, in order;
    each pair costs at most ``timeout_s`` seconds."""
    global _shared
    if _shared is None:
        _shared = Grader()
    return _shared.grade(responses, ground_truths, timeout_s)
