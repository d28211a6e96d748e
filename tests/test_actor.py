"""Training backends: one PPO pass gives the same weights with one process, one DeepSpeed worker
and two (ZeRO 2 and 3, gloo), and full-state checkpoints move between backends and worker counts."""

import copy
import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import tiny_config
from trainers.actor import build_actor
from trainers.actor.update import PolicyBatch, plan_pass, micro_batches

needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="deepspeed is not installed (make setup logs why in .venv/optional.log)",
)


def random_batch(rows: int = 11, width: int = 20, vocab: int = 21, seed: int = 0) -> PolicyBatch:
    """Rows of different lengths (prompt 4 tokens, responses 3..15), random advantages."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (rows, width), generator=g)
    mask = torch.zeros(rows, width - 1, dtype=torch.bool)
    for row in range(rows):
        length = int(torch.randint(3, width - 4, (1,), generator=g))
        mask[row, 3 : 3 + length] = True
        ids[row, 4 + length :] = 0
    adv = torch.randn(rows, generator=g)[:, None].expand_as(mask) * mask
    return PolicyBatch(ids, mask, adv.float(), torch.zeros(rows, width - 1), width)


def config(cache_dir, **train):
    # two mini-batches of 6 and 5 rows, micro-batches of 2: uneven shares and padding passes
    base = {"mini_batch_size": 6, "micro_batch_size": 2, "lr": 1e-3, "kl_coef": 0.1, "entropy_coef": 0.01}
    return tiny_config(cache_dir, train={**base, **train})


def assert_same_weights(a: dict, b: dict, atol=1e-5):
    """Within 1% of one step (lr 1e-3): Adam divides each gradient by its own size, so a gradient
    that is float noise (the key bias's, zero in exact arithmetic) moves by noise / eps."""
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < atol, worst


def test_every_worker_runs_the_same_number_of_passes():
    """ZeRO-3 gathers parameters in every forward: workers pad to the same count of micro-batches."""
    from trainers.config import OptimConfig

    opt = OptimConfig(mini_batch_size=6, micro_batch_size=2, ppo_epochs=2)
    widths = torch.arange(11) + 3
    plans = [plan_pass(11, widths, opt, seed=3, rank=r, world=2) for r in range(2)]
    for mini_a, mini_b in zip(*plans):
        assert torch.equal(mini_a[0], mini_b[0]) and len(mini_a[1]) == len(mini_b[1])
        rows = torch.cat([idx for _, parts in (mini_a, mini_b) for idx, _ in parts])
        assert sorted(rows.tolist()) == sorted(mini_a[0].tolist())  # every row once, by one worker
    assert micro_batches(torch.arange(5), widths, 2, 1, 2)[0][1] == int(widths[[1, 3]].max())


def updates(cfg, model_dir, batches, state=None):
    """The full state after each of ``batches`` (batch seeds), from ``state`` or the base model."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    actor = build_actor(cfg.train.backend, cfg, model, log=lambda _: None)
    try:
        if state is not None:
            actor.load_state_dict(state)
        out = []
        for seed in batches:
            metrics = actor.update(random_batch(seed=seed), seed=seed)
            out.append((copy.deepcopy(actor.state_dict()), metrics))
        return out
    finally:
        actor.close()


def assert_same_state(a: dict, b: dict):
    assert_same_weights(a["model"], b["model"])
    for i, state in a["optimizer"]["state"].items():
        assert int(state["step"]) == int(b["optimizer"]["state"][i]["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(state[key], b["optimizer"]["state"][i][key], atol=1e-7)  # the gradients agree


@needs_deepspeed
def test_one_worker_and_two_take_the_same_steps_and_checkpoints_move_between_them(cache_dir, tiny_model_dir):
    """For ZeRO 2 and 3, two workers take the step one process takes; from the two workers'
    checkpoint, one process (the single backend) takes the step the two take next: the state is full."""
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    (moved, _), = updates(config(cache_dir), tiny_model_dir, [0])
    assert max(float((moved["model"][k] - start[k]).abs().max()) for k in start) > 5e-4  # a step moves the weights
    for stage, mini_batch in ((2, 6), (3, 16)):  # ZeRO-3: one optimizer step a pass (TrainConfig says why)
        (single_1, single_metrics), = updates(config(cache_dir, mini_batch_size=mini_batch), tiny_model_dir, [0])
        two = config(cache_dir, backend="deepspeed", workers=2, zero_stage=stage, mini_batch_size=mini_batch)
        (two_1, two_metrics), (two_2, _) = updates(two, tiny_model_dir, [0, 1])
        assert_same_state(single_1, two_1)
        for name, value in single_metrics.items():
            assert two_metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
        (by_single, _), = updates(config(cache_dir, mini_batch_size=mini_batch), tiny_model_dir, [1], state=two_1)
        assert_same_state(two_2, by_single)
        assert int(by_single["optimizer"]["state"][0]["step"]) == (4 if mini_batch == 6 else 2)  # steps: two passes


def test_the_single_backend_has_one_worker_and_zero3_one_step_a_batch(cache_dir):
    with pytest.raises(ValueError, match="single backend trains in one process"):
        config(cache_dir, workers=2)
    with pytest.raises(ValueError, match="unknown training backend 'fsdp'"):
        config(cache_dir, backend="fsdp")
    with pytest.raises(ValueError, match="train.zero_stage: ZeRO-3 runs one optimizer step per batch"):
        config(cache_dir, backend="deepspeed", workers=2, zero_stage=3)  # 16 rollouts, mini-batches of 6


def test_only_rows_first_met_after_an_optimizer_step_get_an_old_policy_pass():
    """The first mini-batch's rows take their old log-probabilities from their own forward pass."""
    from trainers.actor.update import later_rows, rows_of
    from trainers.config import OptimConfig

    widths = torch.arange(11) + 3
    for epochs, mini, expected in ((1, 6, 5), (2, 6, 5), (2, 11, 0), (1, 11, 0)):
        opt = OptimConfig(mini_batch_size=mini, micro_batch_size=2, ppo_epochs=epochs)
        plan = plan_pass(11, widths, opt, seed=3, rank=0, world=1)
        later, first = later_rows(plan), rows_of(plan[:1])
        assert later.numel() == expected and not set(later.tolist()) & set(first.tolist())
        assert set(later.tolist()) | set(first.tolist()) == set(range(11))
