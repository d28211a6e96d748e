"""Tasks by name: ``task.kind`` in a config picks one from ``TASKS``; ``build_task(config.task)``
gives the task object.

A task is registered as its settings model (a ``TaskSettings``: validated at config load, errors
at ``task.<key>``), which builds the task::

    @register_task("synthetic")
    class SyntheticTaskConfig(TaskSettings):
        kind: Literal["synthetic"] = "synthetic"
        truncated_is_wrong: bool = False
        ...
        def build(self): return SyntheticTask(self)

Every task object offers ``config``, ``train_problems(step, count, seed)``, ``eval_problems()``,
``prompt_ids(problem, tokenizer)``, ``grade(responses, problems)``, ``grading_counts()``
(responses whose grading raised or hit the limit so far: ``{"errors": n, "timeouts": n}``),
``response_features(text)`` and ``close()`` (release what it holds, such as grading processes).
"""

from __future__ import annotations

from trainers import contract as M
from trainers.registry import Registry, kind_model
from trainers.settings import Strict


class TaskSettings(Strict):
    """What every task's settings offer besides their fields (``kind`` and ``truncated_is_wrong``,
    which each declares itself)."""

    def build(self):
        """The task object these settings describe."""
        raise NotImplementedError

    def check_run(self, config) -> None:
        """Raise ValueError (one line) if a ``TrainConfig`` cannot run this task (none by default)."""


TASKS: Registry[type[TaskSettings]] = Registry(
    "task", modules={"synthetic": "trainers.tasks.synthetic", "math": "trainers.tasks.math"}, check=kind_model(TaskSettings)
)
register_task = TASKS.register  # class decorator on a TaskSettings: @register_task("math")


def task_settings(data):
    """A task's settings from a mapping (``kind`` picks the registered model; default "synthetic")."""
    return TASKS.settings_of(data, TaskSettings, "synthetic")


def build_task(config: TaskSettings):
    return config.build()


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
