"""Rollout engines by name: ``rollout.engine`` in a config picks one, and the trainer, the
evaluator and ``python -m trainers.evaluate`` all get theirs from ``build_engine``.

    engine = build_engine("hf", model, tokenizer, EngineSpec(model_path, max_model_len))
    rollouts = engine.generate(prompts, n, sampling, seed)
    engine.sync_weights(model)        # after every policy update (a no-op for an engine sharing them)
    engine.close()

A new engine is one class with ``__init__(model, tokenizer, spec)``, ``generate``, ``sync_weights`` and ``close`` (``trainers.rollout.base``) and one
``@register_engine("name")`` line above it; its module is listed in ``ENGINE_MODULES`` so that
naming the engine imports it (heavy engines stay unimported until asked for).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

ENGINES: dict[str, Callable] = {}
ENGINE_MODULES = {"hf": "trainers.rollout.hf", "vllm": "trainers.rollout.vllm"}  # engine name -> the module that registers it


def register_engine(name: str) -> Callable:
    """Class decorator: ``@register_engine("hf")`` makes ``build_engine("hf", ...)`` construct it."""

    def add(cls: Callable) -> Callable:
        ENGINES[name] = cls
        return cls

    return add


def build_engine(name: str, model, tokenizer, spec):
    """The engine ``name`` over ``model`` (the trainer's policy), its tokenizer and an
    ``EngineSpec`` (``trainers.rollout.base``)."""
    if name not in ENGINES:
        if name not in ENGINE_MODULES:
            raise ValueError(f"unknown rollout engine '{name}' (known: {', '.join(sorted(ENGINE_MODULES))})")
        importlib.import_module(ENGINE_MODULES[name])
    return ENGINES[name](model, tokenizer, spec)
