"""Checkpoints: what a run needs to resume exactly, written so that a crash never leaves half of one.

A step's checkpoint is staged in a hidden sibling folder (``stage``), and renamed into
``checkpoints/step_NNNNNN`` (``publish``) only after the step's metrics are on record. It holds the
actor's full state, the LEAD state, the torch RNG and the step, and ``CHECKPOINT_INFO`` holds the
step and a hash of the settings it belongs to, read without loading the weights.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from trainers.config import TrainConfig

from trainers.method.lead import LeadState
from trainers.settings import deep_merge, dotted

CHECKPOINT_FILE = "trainer_state.pt"
CHECKPOINT_INFO = "checkpoint.json"  # {"step": N, "config_hash": ...}: read without loading the weights
# Settings a resumed run may always change: how long it runs and how often it evaluates and saves.
RESUMABLE_CHANGES = ("train.steps", "eval.every", "checkpoint")
# where the base model, the cache and the plugin files lie, not what they hold: a trial restarted on
# another node has its own copies (the weights are in the checkpoint; what a plugin registers is
# named in the settings)
LOCATIONS = ("model.path", "model.cache_dir", "plugins")


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step_{step:06d}"


def checkpoint_step(directory: Path) -> int:
    return int(directory.name.removeprefix("step_"))


def config_hash(config: TrainConfig, changeable: tuple[str, ...] = ()) -> str:
    """What a checkpoint belongs to: every setting but ``RESUMABLE_CHANGES``, ``LOCATIONS`` and
    ``changeable`` (dotted keys a population search may change when a trial continues from
    another's checkpoint)."""
    exclude = functools.reduce(deep_merge, (dotted(key, True) for key in (*RESUMABLE_CHANGES, *LOCATIONS, *changeable)),
                               {})
    payload = config.model_dump_json(exclude=exclude)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def stage(directory: Path, payload: dict) -> Path:
    """Write the checkpoint meant for ``directory`` into a hidden sibling folder and return it;
    ``publish`` moves it into place once the step's metrics are on record."""
    staged = directory.with_name(f".staged-{directory.name}-{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    torch.save(payload, staged / CHECKPOINT_FILE)
    (staged / CHECKPOINT_INFO).write_text(json.dumps({"step": payload["step"], "config_hash": payload.get("config_hash")}))
    return staged


def publish(staged: Path, directory: Path, keep_last: int) -> Path:
    """Rename the staged checkpoint to ``directory`` and prune all but the ``keep_last`` latest by
    step number (the one just written always stays)."""
    shutil.rmtree(directory, ignore_errors=True)
    os.rename(staged, directory)
    others = sorted((p for p in directory.parent.glob("step_*") if p.is_dir() and p != directory), key=checkpoint_step)
    for old in others[: max(0, len(others) - (keep_last - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return directory


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = [p.parent for p in (Path(output_dir) / "checkpoints").glob(f"step_*/{CHECKPOINT_FILE}")]
    return max(found, key=checkpoint_step) if found else None


class CheckpointMismatch(ValueError):
    """A checkpoint written by a run with other settings (one line)."""


def check_checkpoint(directory: Path, config: TrainConfig, changeable: tuple[str, ...] = ()) -> None:
    """Raise CheckpointMismatch unless the checkpoint in ``directory`` belongs to ``config`` up to
    the ``changeable`` settings (read from its small ``CHECKPOINT_INFO`` file, not from the weights)."""
    try:
        saved = json.loads((Path(directory) / CHECKPOINT_INFO).read_text()).get("config_hash")
    except (OSError, ValueError, AttributeError):
        saved = None
    if saved != config_hash(config, changeable):
        raise CheckpointMismatch(
            f"{directory} belongs to a run with other settings (config hash {saved}, this run's "
            f"{config_hash(config, changeable)}): resume with that run's config, or start afresh with --overwrite"
        )


def payload(actor, state: LeadState, step: int, config: TrainConfig, changeable: tuple[str, ...]) -> dict:
    """Everything a resume needs after ``step`` completed steps."""
    return {
        **actor.state_dict(),  # "model" and "optimizer", full (unsharded)
        "lead_state": state.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "step": step,
        "data_cursor": step,  # the next training batch is task.train_problems(step, ...)
        "config_hash": config_hash(config, changeable),
    }


def restore(directory: Path, config: TrainConfig, changeable: tuple[str, ...], actor, engine) -> tuple[LeadState, int]:
    """Load a checkpoint that belongs to ``config`` into the actor (the engine follows), restore
    the torch RNG; returns the LEAD state and the step to continue from."""
    check_checkpoint(directory, config, changeable)
    saved = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    actor.load_state_dict(saved)
    engine.sync_weights(actor.model)
    torch.set_rng_state(saved["torch_rng"])
    return LeadState.from_state_dict(saved["lead_state"]), saved["step"]
