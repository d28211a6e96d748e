"""Rollout engines by name: ``rollout.engine`` in a config picks one, and the trainer, the
evaluator and ``python -m trainers.evaluate`` all get theirs from ``build_engine``.

    engine = build_engine("hf", model, tokenizer, EngineSpec(model_path, max_model_len))
    rollouts = engine.generate(prompts, n, sampling, seed)
    engine.sync_weights(model)        # after every policy update (a no-op for an engine sharing them)
    engine.close()

A new engine is one class with ``__init__(model, tokenizer, spec)``, ``generate``, ``sync_weights``
and ``close`` (``trainers.rollout.base``) and one ``@register_engine("name")`` line above it, in
any module a config's ``plugins:`` imports; the built-in ones are imported only when named.
"""

from __future__ import annotations

from trainers.registry import Registry

ENGINES: Registry = Registry("rollout engine", modules={"hf": "trainers.rollout.hf", "vllm": "trainers.rollout.vllm"})
register_engine = ENGINES.register  # class decorator: @register_engine("hf")


def build_engine(name: str, model, tokenizer, spec):
    """The engine ``name`` over ``model`` (the trainer's policy), its tokenizer and an
    ``EngineSpec`` (``trainers.rollout.base``)."""
    return ENGINES.lookup(name)(model, tokenizer, spec)
