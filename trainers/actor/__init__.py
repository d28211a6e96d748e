"""Training backends by name: ``train.backend`` in a config picks one; the loop gets its actor from
``build_actor``.

    actor = build_actor("single", config, model, log)   # model: the policy, loaded on the controller
    losses = actor.update(batch, step)                  # one PPO pass over a PolicyBatch: loss/* metrics
    engine.sync_weights(actor.model)                    # actor.model holds the updated policy
    actor.state_dict() / actor.load_state_dict(state)   # full (unsharded) model and optimizer state
    actor.close()

Checkpoints hold the full state, so a run saved with one backend or number of workers resumes with
another. A new backend is one class with those methods and one ``@register_backend("name")`` line
above it, in any module a config's ``plugins:`` imports; the built-in ones are imported only when named.
"""

from __future__ import annotations

from collections.abc import Callable

from trainers.registry import Registry

BACKENDS: Registry = Registry("training backend",
                              modules={"single": "trainers.actor.single", "deepspeed": "trainers.actor.deepspeed"})
register_backend = BACKENDS.register  # class decorator: @register_backend("single")


def build_actor(name: str, config, model, log: Callable[[str], None] = print):
    """The backend ``name`` training ``model`` (a ``TrainConfig``'s run)."""
    return BACKENDS.lookup(name)(config, model, log)
