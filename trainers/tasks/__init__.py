"""Tasks the trainer takes: ``build_task(config.task)`` gives the synthetic sums or a math data set.

Every task offers ``config``, ``train_problems(step, count, seed)``, ``eval_problems()``,
``prompt_ids(problem, tokenizer)``, ``grade(responses, problems)``, ``grading_counts()`` (responses
whose grading raised or hit the limit so far: ``{"errors": n, "timeouts": n}``),
``response_features(text)`` and ``close()`` (release what it holds, such as grading processes).
"""

from __future__ import annotations

from trainers import contract as M


def build_task(config):
    if config.kind == "math":
        from trainers.tasks.math import MathTask

        return MathTask(config)
    from trainers.tasks.synthetic import SyntheticTask

    return SyntheticTask(config)


TRAINING_ONLY = {"truncated_is_wrong"}  # task settings that shape the training reward only


def task_identity(config) -> dict:
    """A task config's settings that decide its problems and grading (what base models and base
    evaluations are cached under): all of them but the training-reward ones, ``TRAINING_ONLY``."""
    return config.model_dump(mode="json", exclude=TRAINING_ONLY)


def grade_rollouts(task, texts: list[str], problems: list, truncated) -> tuple[list[float], dict[str, float]]:
    """The training reward's grades: ``task.grade`` of each response against its problem, and with
    ``task.truncated_is_wrong`` a response the budget cut off (``truncated``, one bool per response)
    scores 0. Evaluation grades with ``task.grade`` alone, the same for every arm of a study.
    Also returns this call's ``grader/errors`` and ``grader/timeouts`` counts."""
    before = task.grading_counts()
    scores = task.grade(texts, problems)
    after = task.grading_counts()
    if task.config.truncated_is_wrong:
        scores = [0.0 if cut else score for score, cut in zip(scores, truncated.tolist())]
    failures = {M.GRADER_ERRORS: float(after["errors"] - before["errors"]),
                M.GRADER_TIMEOUTS: float(after["timeouts"] - before["timeouts"])}
    return scores, failures
