"""Grading math answers, safely.

    from trainers.tasks.grading import grade_answers
    grade_answers(responses, ground_truths, timeout_s=5.0) -> list[float]   # 1.0 correct, 0.0 not

The final answer is the last ``\\boxed{...}`` (or ``\\fbox{...}``) of a response, nested braces
included; ``Grader(fallbacks=...)`` adds other places to look when there is none ("answer_is": a
final "answer is X" / "Answer: X" line; "last_number": the last number in the text). It is
compared with the ground truth by math-verify (sympy), never by ``eval``: ``$...$`` wrappers,
``\\dfrac``, units, zero-padded integers, several comma-separated answers (as a set), decimals
against fractions and scientific notation are all handled there or normalised first.

Every pair is graded in a worker process of a pebble pool, the trainer's process never runs sympy.
The limit is CPU time, not wall time, so a grade never depends on how busy the machine is: a
pathological output costs at most ``timeout_s`` CPU-seconds, counts as wrong and is counted
(``Grader.timeouts``); work stuck in C code is killed by a wall-clock backstop far above any plain
input. A broken pool or a response that is not text raises ``GraderError`` instead of scoring 0.
Workers are spawned (not forked from a process full of threads), so a script that grades at its
top level needs the usual ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import atexit
import logging
import math
import multiprocessing
import os
import re
import signal
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from decimal import Decimal

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


def _parse(latex: str):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return parse(f"\\boxed{{{latex}}}", extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
                 parsing_timeout=None)


def answers_match(answer: str, ground_truth: str) -> bool:
    """Whether an extracted answer equals the ground truth: two plain numbers compare exactly (as
    decimals: ``1048577`` is not ``1048576``, ``1e400`` is not ``5e400``); anything else by
    math-verify, with its own wall-clock alarms off (they fired on plain inputs on a busy machine).
    No limit of its own: ``Grader`` runs it under a CPU-time limit."""
    from math_verify import verify

    if not answer.strip() or len(answer) > MAX_ANSWER_CHARS:
        return False
    plain = _PLAIN_NUMBER.fullmatch(answer.strip().strip("$")), _PLAIN_NUMBER.fullmatch(ground_truth.strip().strip("$"))
    if all(plain):  # two plain numbers (math-verify would round 2.88e-19 and 1.3e-27 both to 0)
        return Decimal(plain[0].group(0)) == Decimal(plain[1].group(0))
    gold = _parse(normalize_answer(ground_truth))
    predicted = _parse(normalize_answer(answer))
    return bool(gold and predicted and verify(gold, predicted, timeout_seconds=None))


def grade_one(response: str, ground_truth: str, fallbacks: Sequence[str] = ()) -> float:
    """1.0 if the response's final answer equals the ground truth, else 0.0 (no limit of its own;
    ``Grader`` runs it under one)."""
    answer = extract_answer(response, fallbacks)
    return 1.0 if answer is not None and answers_match(answer, ground_truth) else 0.0


class GraderError(RuntimeError):
    """The grading machinery failed (a worker that could not start or died, a response that is not
    text): never scored as a wrong answer."""


class _CpuLimit(BaseException):  # not an Exception: math-verify's ``except Exception`` must not swallow it
    pass


def _stop(signum, frame):
    raise _CpuLimit


GRADED, TIMED_OUT, FAILED = "graded", "timeout", "error"


def _grade_in_worker(response: str, ground_truth: str, fallbacks: Sequence[str], cpu_seconds: float) -> tuple[str, float]:
    """``grade_one`` under a limit of ``cpu_seconds`` of this process's CPU time (``ITIMER_PROF``):
    the same input stops at the same point on an idle and on a saturated machine. Returns
    (GRADED, score), (TIMED_OUT, 0.0) or (FAILED, 0.0) when sympy raised on this input."""
    previous = signal.signal(signal.SIGPROF, _stop)
    signal.setitimer(signal.ITIMER_PROF, cpu_seconds)
    try:
        return GRADED, grade_one(response, ground_truth, fallbacks)
    except _CpuLimit:
        return TIMED_OUT, 0.0
    except Exception:
        return FAILED, 0.0
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def _warm_up() -> None:
    """Import sympy and math-verify before the first task, so no task pays for it."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled": ours is on
    grade_one("\\boxed{1}", "1")


# The wall-clock backstop for work stuck in C code, where no signal lands (a huge integer power):
# far above any plain input's wall time even with every core busy many times over.
WALL_FACTOR, WALL_MARGIN_S = 3.0, 5.0


class Grader:
    """A pool of grading processes; ``grade`` keeps the order of its inputs.

    Each pair may use ``timeout_s`` seconds of CPU time (a pathological output: counted in
    ``timeouts``, scored 0); work stuck in C code is killed after ``WALL_FACTOR * timeout_s +
    WALL_MARGIN_S`` seconds (also a timeout). An exception inside sympy on one input counts in
    ``errors`` and scores 0. A failure of the machinery itself raises ``GraderError``."""

    def __init__(self, fallbacks: Sequence[str] = (), workers: int | None = None):
        for fallback in fallbacks:
            if fallback not in FALLBACKS:
                raise ValueError(f"unknown answer fallback '{fallback}' (known: {', '.join(FALLBACKS)})")
        self.fallbacks = tuple(fallbacks)
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._pool = None
        self.timeouts = 0  # pairs stopped by a limit
        self.errors = 0  # pairs whose grading raised inside sympy / math-verify (counted wrong)

    @property
    def pool(self):
        if self._pool is None:
            from pebble import ProcessPool

            self._pool = ProcessPool(max_workers=self.workers, initializer=_warm_up,
                                     context=multiprocessing.get_context("spawn"))
            atexit.register(self.close)
        return self._pool

    def counts(self) -> dict[str, int]:
        """``{"errors": n, "timeouts": n}`` so far."""
        return {"errors": self.errors, "timeouts": self.timeouts}

    def grade(self, responses: Sequence[str], ground_truths: Sequence[str], timeout_s: float = 5.0) -> list[float]:
        if len(responses) != len(ground_truths):
            raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
        if not math.isfinite(timeout_s) or timeout_s <= 0:
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s}")
        for name, texts in (("responses", responses), ("ground_truths", ground_truths)):
            bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
            if bad:
                raise GraderError(f"{name}{bad[:5]}: not text ({type(texts[bad[0]]).__name__})")
        wall_s = WALL_FACTOR * timeout_s + WALL_MARGIN_S
        futures = [
            self.pool.schedule(_grade_in_worker, args=(response, truth, self.fallbacks, timeout_s), timeout=wall_s)
            for response, truth in zip(responses, ground_truths)
        ]
        scores = []
        for future in futures:
            try:
                outcome, score = future.result()
            except FutureTimeout:
                outcome, score = TIMED_OUT, 0.0
            except Exception as exc:  # the pool, not the answer: never a silent 0
                self.close()
                raise GraderError(f"grading failed: {type(exc).__name__}: {exc} (a script that grades at its top "
                                  "level needs an `if __name__ == \"__main__\":` guard)") from exc
            self.timeouts += outcome == TIMED_OUT
            self.errors += outcome == FAILED
            scores.append(score)
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
