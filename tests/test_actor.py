"""Training backends: one PPO pass gives the same weights with one process, one DeepSpeed worker
and two (ZeRO 2 and 3, gloo), and full-state checkpoints move between backends and worker counts."""

import copy
import importlib.util
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import tiny_config
from trainers.actor import build_actor
from trainers.actor.update import PolicyBatch, plan_pass, micro_batches

needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="deepspeed is not installed (make setup installs it from the lock: lock/cpu.txt, lock/cpu-build.txt)",
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
@pytest.mark.slow  # DeepSpeed process groups
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


@needs_deepspeed
@pytest.mark.slow  # DeepSpeed process groups
def test_bf16_workers_start_from_the_saved_float32_masters_not_a_rounded_copy(cache_dir, tiny_model_dir):
    """``deepspeed.initialize`` casts to bf16 and ZeRO builds the float32 masters from that copy:
    a (re)start from a checkpoint would round every saved weight to bf16. The state read back right
    after a start holds the saved float32 weights exactly (ZeRO-2, float32 gradient accumulation)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    weights = {k: v + 1e-4 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1))
               for k, v in model.state_dict().items()}  # low bits that bf16 cannot hold
    assert any(not torch.equal(v, v.bfloat16().float()) for v in weights.values())
    bf16 = config(cache_dir, backend="deepspeed", workers=1, zero_stage=2)
    bf16 = bf16.model_validate({**bf16.model_dump(), "model": {**bf16.model.model_dump(), "dtype": "bfloat16"}})
    actor = build_actor("deepspeed", bf16, model, log=lambda _: None)
    try:
        actor.load_state_dict({"model": weights, "optimizer": None})
        saved = actor.state_dict()
        metrics = actor.update(random_batch(), seed=0)  # and it trains, accumulating and reducing in float32
        stepped = actor.state_dict()["model"]
    finally:
        actor.close()
    assert all(torch.equal(saved["model"][k], v) for k, v in weights.items())
    assert all(math.isfinite(value) for value in metrics.values()) and all(torch.isfinite(v).all() for v in stepped.values())
    assert max(float((stepped[k] - v).abs().max()) for k, v in weights.items()) > 5e-4  # lr 1e-3: a step moves them


@needs_deepspeed
@pytest.mark.slow  # DeepSpeed process groups
def test_training_workers_die_with_a_killed_trial_process(cache_dir, tiny_model_dir, tmp_path):
    """SIGKILL the process that started two DeepSpeed workers (as Ray kills a stuck trial) while
    they are busy (stopped, so they cannot see their pipes close): the workers go too, instead of
    keeping their GPUs from the retry."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    script = tmp_path / "trial.py"
    script.write_text(f"""
import json, time
from transformers import AutoModelForCausalLM
from tests.conftest import tiny_config
from trainers.actor import build_actor

if __name__ == "__main__":  # the workers are spawned: they import this file again
    config = tiny_config({str(cache_dir)!r}, train={{"backend": "deepspeed", "workers": 2, "zero_stage": 2}})
    actor = build_actor("deepspeed", config, AutoModelForCausalLM.from_pretrained({str(tiny_model_dir)!r}))
    actor._start(None)
    print("WORKERS", json.dumps([process.pid for process, _ in actor.workers]), flush=True)
    time.sleep(600)
""")
    root = Path(__file__).resolve().parents[1]
    trial = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=root,
                             env={**os.environ, "PYTHONPATH": str(root)})
    line = trial.stdout.readline()
    while line and not line.startswith("WORKERS "):  # the backend's own log lines first
        line = trial.stdout.readline()
    workers = [psutil.Process(pid) for pid in json.loads(line.removeprefix("WORKERS "))]
    assert len(workers) == 2 and all(w.is_running() for w in workers)
    alive = lambda: [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]  # noqa: E731
    try:
        for worker in workers:  # busy, as in a collective: they will not notice their pipe closing
            worker.suspend()
        trial.send_signal(signal.SIGKILL)
        trial.wait()
        deadline = time.time() + 60
        while alive() and time.time() < deadline:
            time.sleep(0.2)
        assert not alive()
    finally:
        for worker in alive():
            worker.kill()
