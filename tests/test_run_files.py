"""A run folder's files stay consistent through kills: checkpoints are pruned by step number, a
torn metrics line does not stop a resume, and a step's metrics are written before its checkpoint."""

import json

import pytest
import torch

from tests.conftest import tiny_config
from trainers.loop.checkpoint import CHECKPOINT_FILE, config_hash, latest_checkpoint
from trainers.loop.checkpoint import publish as publish_checkpoint, stage as stage_checkpoint
from trainers.loop.grpo import train
from trainers.train import RunFiles


def test_pruning_keeps_the_checkpoint_just_written(tmp_path):
    """Older, higher-numbered checkpoints (another run's) used to sort after it and survive while
    it was deleted."""
    checkpoints = tmp_path / "checkpoints"
    for step in (40, 50):
        publish_checkpoint(stage_checkpoint(checkpoints / f"step_{step:06d}", {"step": step}), checkpoints / f"step_{step:06d}", 5)
    publish_checkpoint(stage_checkpoint(checkpoints / "step_000010", {"step": 10}), checkpoints / "step_000010", 2)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_000010", "step_000050"]
    assert latest_checkpoint(tmp_path).name == "step_000050"
    publish_checkpoint(stage_checkpoint(checkpoints / "step_000100", {"step": 100}), checkpoints / "step_000100", 1)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_000100"]
    assert latest_checkpoint(tmp_path).name == "step_000100"


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
    lines = [json.dumps({"step": s, "train/accuracy": 0.5}) for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "train/acc')
    files = RunFiles(tmp_path, total_steps=10, first_step=2)
    files.bar.close()
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_metrics_are_on_record_before_the_checkpoint_that_covers_them(tmp_path, cache_dir):
    """A kill between the two leaves metrics beyond the last checkpoint (dropped on resume), never a
    checkpoint beyond the metrics (a step lost for good)."""
    config = tiny_config(cache_dir, train={"steps": 2}, checkpoint={"every": 1}, eval={"every": 2})
    seen = []

    def report(step):
        published = tmp_path / "checkpoints" / f"step_{step.step:06d}"
        seen.append((step.step, published.exists(), step.checkpoint_dir is not None and step.checkpoint_dir.is_dir()))

    train(config, tmp_path, report=report, log=lambda _: None)
    assert seen == [(1, False, True), (2, False, True)]
    saved = torch.load(latest_checkpoint(tmp_path) / CHECKPOINT_FILE, weights_only=True)
    assert saved["step"] == 2 and saved["config_hash"] == config_hash(config)


def test_the_config_hash_ignores_only_what_a_resume_may_change(cache_dir):
    config = tiny_config(cache_dir)
    longer = tiny_config(cache_dir, train={"steps": 40}, checkpoint={"every": 3}, eval={"every": 7})
    assert config_hash(config) == config_hash(longer)
    elsewhere = tiny_config(cache_dir / "another-node")  # a trial restarted on another node: its own cache
    assert config_hash(config) == config_hash(elsewhere) and elsewhere.model.cache_dir != config.model.cache_dir
    assert config_hash(config) != config_hash(tiny_config(cache_dir, train={"lr": 3e-3}))
    assert config_hash(config) != config_hash(tiny_config(cache_dir, seed=1))
    # a population search may change its settings when a trial continues from another's checkpoint
    faster = tiny_config(cache_dir, train={"lr": 3e-3})
    assert config_hash(config, ("train.lr",)) == config_hash(faster, ("train.lr",))
    assert config_hash(config, ("train.lr",)) != config_hash(tiny_config(cache_dir, seed=1), ("train.lr",))


def test_a_resume_with_a_changed_learning_rate_steps_with_the_new_one(cache_dir, tmp_path):
    """The optimizer state comes from the checkpoint, its learning rate from this run's settings."""
    from trainers.actor import build_actor
    from trainers.loop.base_model import base_model_path, load_model

    config = tiny_config(cache_dir, train={"lr": 1e-3})
    model, _ = load_model(base_model_path(config, log=lambda _: None), config)
    saved = build_actor("single", config, model, print).state_dict()
    faster = tiny_config(cache_dir, train={"lr": 5e-3, "weight_decay": 0.1})
    actor = build_actor("single", faster, model, print)
    actor.load_state_dict(saved)
    assert [(g["lr"], g["weight_decay"]) for g in actor.optimizer.param_groups] == [(5e-3, 0.1)]


@pytest.mark.parametrize("marker", [None, "report"])
def test_clearing_a_folder_needs_its_own_marker(tmp_path, marker):
    from trainers.io.outputs import MARKER, clear_owned

    (tmp_path / "keep.txt").write_text("x")
    if marker:
        (tmp_path / MARKER).write_text(json.dumps({"kind": marker}))
    with pytest.raises(ValueError, match="refusing to clear"):
        clear_owned(tmp_path, "run")
    assert (tmp_path / "keep.txt").exists()
