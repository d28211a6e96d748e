"""Evaluation: pass@1 and mean length on a fixed eval set, and the Accuracy-Efficiency Score."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from trainers.method.lead import LeadConfig
from trainers.method.rewards import target_lengths
from trainers.method.segments import Groups
from trainers.rollout.base import RolloutEngine, SamplingParams
from trainers.runtime.process import step_seed


def aes(
    accuracy: float,
    length: float,
    base_accuracy: float,
    base_length: float,
    alpha: float = 1.0,
    beta: float = 3.0,
    gamma: float = 5.0,
) -> float:
    """Accuracy-Efficiency Score (O1-Pruner, arXiv 2501.12570), as used by LEAD.

    ``dL = (L_base - L) / L_base``, ``dA = (A - A_base) / A_base``;
    ``AES = alpha dL + beta dA`` when ``dA >= 0``, else ``alpha dL - gamma |dA|``. Accuracy and
    length may be arrays (one AES each, e.g. over bootstrap resamples).
    """
    if base_length <= 0:
        raise ValueError(f"base_length must be positive, got {base_length}")
    if base_accuracy <= 0:
        raise ValueError(f"base_accuracy must be positive, got {base_accuracy}")
    d_length = (base_length - length) / base_length
    d_accuracy = (accuracy - base_accuracy) / base_accuracy
    if np.ndim(d_accuracy) == 0:
        return float(alpha * d_length + (beta * d_accuracy if d_accuracy >= 0 else -gamma * abs(d_accuracy)))
    return alpha * d_length + np.where(d_accuracy >= 0, beta * d_accuracy, -gamma * np.abs(d_accuracy))


def aes_gradient(accuracy: float, length: float, base_accuracy: float, base_length: float) -> tuple[float, float]:
    """AES's slopes in the mean accuracy and in the mean length at (accuracy, length): AES is
    piecewise linear in them, so near there ``AES = g_acc accuracy + g_len length + constant``
    (one-sided differences of 1e-3 of the base's numbers)."""
    step = 1e-3
    at = aes(accuracy, length, base_accuracy, base_length)
    g_accuracy = (aes(accuracy + step * base_accuracy, length, base_accuracy, base_length) - at) / (step * base_accuracy)
    g_length = (aes(accuracy, length + step * base_length, base_accuracy, base_length) - at) / (step * base_length)
    return g_accuracy, g_length


# --------------------------------------------------------------------------- pass@1 on an eval set


@dataclass
class EvalResult:
    accuracy: float  # pass@1 averaged over samples and problems
    response_length: float  # mean generated tokens (EOS included)
    truncated_fraction: float
    features: dict[str, float]  # task-specific counts per response (e.g. re-check lines)
    table: pa.Table  # one row per problem

    def metrics(self, prefix: str) -> dict[str, float]:
        out = {
            f"{prefix}/accuracy": self.accuracy,
            f"{prefix}/response_length": self.response_length,
            f"{prefix}/truncated_fraction": self.truncated_fraction,
        }
        out.update({f"{prefix}/{name}": value for name, value in self.features.items()})
        return out


def evaluate(
    engine: RolloutEngine,
    tokenizer,
    task,
    problems: list,
    sampling: SamplingParams,
    n_samples: int,
    seed: int,
    lead_config: LeadConfig,
    batch_size: int = 512,
) -> EvalResult:
    """Pass@1 over ``n_samples`` per problem, mean length, and a per-problem table.

    The table's ``lstar`` is the target LEAD would set for the problem from these samples
    (``trainers.method.rewards.target_lengths``), to set against its ``minimal_length``.
    """
    lengths, scores, truncated, features = [], [], [], {}
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        prompts = [task.prompt_ids(problem, tokenizer) for problem in chunk]
        rollouts = engine.generate(prompts, n_samples, sampling, seed=seed + start)
        texts = tokenizer.batch_decode(rollouts.response_ids.tolist(), skip_special_tokens=True)
        scores += task.grade(texts, [problem for problem in chunk for _ in range(n_samples)])
        lengths.append(rollouts.lengths.cpu())
        truncated.append(rollouts.truncated.cpu())
        for text in texts:
            for name, count in task.response_features(text).items():
                features[name] = features.get(name, 0) + count
    lengths_t = torch.cat(lengths).to(torch.float64)
    scores_t = torch.tensor(scores, dtype=torch.float64)
    truncated_t = torch.cat(truncated)
    groups = Groups.of(torch.arange(len(problems)).repeat_interleave(n_samples))
    cfg = lead_config
    lstar = target_lengths(lengths_t, scores_t > 0.5, groups, cfg.aggregator, cfg.floor, cfg.bmax)
    per_problem = lambda values: values.view(len(problems), n_samples).mean(1).tolist()  # noqa: E731
    table = pa.table(
        {
            "problem_id": pa.array([problem.id for problem in problems], pa.int64()),
            "minimal_length": pa.array([getattr(problem, "minimal_length", None) for problem in problems], pa.int64()),
            "lstar": pa.array(lstar.tolist(), pa.float64()),
            "mean_length": pa.array(per_problem(lengths_t), pa.float64()),
            "accuracy": pa.array(per_problem(scores_t), pa.float64()),
            "truncated_fraction": pa.array(per_problem(truncated_t.to(torch.float64)), pa.float64()),
        }
    )
    total = len(scores)
    return EvalResult(
        accuracy=float(scores_t.mean()),
        response_length=float(lengths_t.mean()),
        truncated_fraction=float(truncated_t.to(torch.float64).mean()),
        features={f"{name}_per_response": count / total for name, count in sorted(features.items())},
        table=table,
    )


def evaluation_folder(cache_dir: Path, key: dict) -> Path:
    """Where ``cached_evaluation`` keeps the result for ``key``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"eval-{digest}"


def cached_evaluation(cache_dir: Path, key: dict, compute: Callable[[], EvalResult]) -> EvalResult:
    """``compute()`` once per ``key`` (JSON-able settings); later calls read the cached result.

    Stored as ``result.json`` and ``problems.parquet`` in a folder named by the key's hash, written
    to a temporary folder first and renamed, so a crash never leaves a half-written result.
    """
    folder = evaluation_folder(cache_dir, key)
    if not folder.is_dir():
        result = compute()
        tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        summary = {
            "accuracy": result.accuracy,
            "response_length": result.response_length,
            "truncated_fraction": result.truncated_fraction,
            "features": result.features,
            "key": key,
        }
        (tmp / "result.json").write_text(json.dumps(summary, indent=2, default=str))
        pq.write_table(result.table, tmp / "problems.parquet")
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    summary = json.loads((folder / "result.json").read_text())
    return EvalResult(
        accuracy=summary["accuracy"],
        response_length=summary["response_length"],
        truncated_fraction=summary["truncated_fraction"],
        features=summary["features"],
        table=pq.read_table(folder / "problems.parquet"),
    )


@dataclass
class Evaluator:
    """Evaluation on the fixed eval set with the eval sampling. One seed serves every evaluation
    (the base model's included), so arms and steps are compared on common random numbers."""

    config: object  # the run's TrainConfig
    engine: RolloutEngine
    tokenizer: object
    task: object  # see trainers.tasks

    def __post_init__(self):
        self.problems = self.task.eval_problems()[: self.config.eval.num_problems]

    def __call__(self) -> EvalResult:
        cfg = self.config
        return evaluate(
            self.engine, self.tokenizer, self.task, self.problems, cfg.eval_sampling, cfg.eval.n_samples,
            step_seed(cfg.task.eval_seed, 0, 7), cfg.lead, cfg.eval.batch_size,
        )
