"""Tasks the trainer takes: ``build_task(config.task)`` gives the synthetic sums or a math data set.

Every task offers ``train_problems(step, count, seed)``, ``eval_problems()``,
``prompt_ids(problem, tokenizer)``, ``grade(responses, problems)`` and ``response_features(text)``.
"""

from __future__ import annotations


def build_task(config):
    if config.kind == "math":
        from trainers.tasks.math import MathTask

        return MathTask(config)
    from trainers.tasks.synthetic import SyntheticTask

    return SyntheticTask(config)
