"""Training backends by name: ``train.backend`` in a config picks one; the loop gets its actor from
``build_actor``.

    actor = build_actor("single", config, model, log)   # model: the policy, loaded on the controller
    losses = actor.update(batch, step)                  # one PPO pass over a PolicyBatch: loss/* metrics
    engine.sync_weights(actor.model)                    # actor.model holds the updated policy
    actor.state_dict() / actor.load_state_dict(state)   # full (unsharded) model and optimizer state
    actor.close()

Checkpoints hold the full state, so a run saved with one backend or number of workers resumes with
another. A new backend is one class with those methods and one ``@register_backend("name")`` line
above it; its module is listed in ``BACKEND_MODULES`` so that naming it imports it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

BACKENDS: dict[str, Callable] = {}
BACKEND_MODULES = {"single": "trainers.actor.single", "deepspeed": "trainers.actor.deepspeed"}


def register_backend(name: str) -> Callable:
    """Class decorator: ``@register_backend("single")`` makes ``build_actor("single", ...)`` construct it."""

    def add(cls: Callable) -> Callable:
        BACKENDS[name] = cls
        return cls

    return add


def build_actor(name: str, config, model, log: Callable[[str], None] = print):
    """The backend ``name`` training ``model`` (a ``TrainConfig``'s run)."""
    if name not in BACKENDS:
        if name not in BACKEND_MODULES:
            raise ValueError(f"unknown training backend '{name}' (known: {', '.join(sorted(BACKEND_MODULES))})")
        importlib.import_module(BACKEND_MODULES[name])
    return BACKENDS[name](config, model, log)
