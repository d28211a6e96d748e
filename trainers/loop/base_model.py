"""The model a run starts from, and its numbers on the eval set: built or found, loaded, evaluated
once and cached. One key (``base_identity``) says which runs share a base model and its
evaluation, for the study driver (which prepares each distinct one once) and for the cache."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainers.config import TrainConfig
from trainers.io.fingerprint import EVALUATION_CODE, fingerprint, weights_digest
from trainers.io.remote import cached_model, is_uri
from trainers.loop.evaluation import EvalResult, Evaluator, cached_evaluation
from trainers.models.tiny import default_cache_dir, ensure_base_model
from trainers.rollout import build_engine
from trainers.tasks import build_task, task_identity

TARGET_FIELDS = {"aggregator", "floor", "bmax"}  # the LEAD settings an evaluation depends on (its lstar column)


class ModelLoadError(ValueError):
    """The model directory is missing or cannot be loaded (one line, naming the path)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def base_model_path(config: TrainConfig, log: Callable[[str], None] = print) -> Path:
    """The model to start from: ``model.path`` (a URI: its copy in the cache), or the tiny base
    model built (or reused) in the cache."""
    if is_uri(config.model.path):
        return cached_model(str(config.model.path), config.model.cache_dir or default_cache_dir(), log)
    if config.model.path is not None:
        return config.model.path  # validated by ModelConfig: an existing model directory
    return ensure_base_model(config.task, config.model.tiny, config.model.cache_dir, log=log)


def load_model(path: Path, config: TrainConfig):
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        # float32 weights whatever model.dtype says: bfloat16 computes under autocast (trainers.runtime.process)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model.path: cannot load {path}: {str(exc).splitlines()[0]}") from None
    needed = config.rollout.max_prompt_tokens + config.rollout.max_budget
    if needed > model.config.max_position_embeddings:
        raise ModelLoadError(
            f"rollout.max_prompt_tokens + rollout.max_new_tokens ({needed}) exceeds the model's "
            f"max_position_embeddings ({model.config.max_position_embeddings})"
        )
    return model.to(resolve_device(config.model.device)), tokenizer


def evaluation_identity(config: TrainConfig) -> dict:
    """What a base evaluation depends on besides the model's weights: the engine, the task's
    problems and grading, the eval problems and sampling, and the L* settings of its table."""
    return {
        "engine": config.rollout.engine,
        "task": task_identity(config.task),
        "problems": config.eval.num_problems,
        "sampling": config.eval_sampling,
        "n_samples": config.eval.n_samples,
        "lead": config.lead.model_dump(include=TARGET_FIELDS),
    }


def base_identity(config: TrainConfig) -> dict:
    """What a run's base model and its evaluation depend on (besides code and library versions):
    runs with equal identities share both."""
    return {"model": config.model.model_dump(mode="json"), **evaluation_identity(config)}


def base_evaluation_key(model_path: Path, config: TrainConfig) -> tuple[Path, dict]:
    """Where the base evaluation is cached and what it is keyed on: the weights' content (not
    their path: a copy on another node finds it), the thread count, the code and the settings."""
    cache_dir = Path(config.model.cache_dir or default_cache_dir()).expanduser()
    key = {
        "weights": weights_digest(model_path, cache_dir / "digests"),
        "threads": torch.get_num_threads(),  # other threads: other last bits, other samples
        "code": fingerprint(EVALUATION_CODE, libraries=("torch", "transformers", "tokenizers", "math-verify")),
        **evaluation_identity(config),
    }
    return cache_dir / "evaluations", key


def base_evaluation(model_path: Path, evaluator: Evaluator) -> EvalResult:
    """The base model's numbers on the eval set, computed once per thread count and cached next to
    the base models.

    ``evaluator`` must sample from the base model's weights (call it before any update)."""
    return cached_evaluation(*base_evaluation_key(model_path, evaluator.config), evaluator)


def prepare(config: TrainConfig, log: Callable[[str], None] = print) -> tuple[Path, EvalResult]:
    """Build (or reuse) the base model and evaluate it once; trials then find both in the cache."""
    model_path = base_model_path(config, log=log)
    model, tokenizer = load_model(model_path, config)
    with contextlib.closing(build_task(config.task)) as task, contextlib.closing(
        build_engine(config.rollout.engine, model, tokenizer, config.engine_spec(model_path))
    ) as engine:
        return model_path, base_evaluation(model_path, Evaluator(config, engine, tokenizer, task))
