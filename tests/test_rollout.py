"""The lean KV-cache sampler against transformers' own generate, and its bookkeeping."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainers.rollout import build_engine
from trainers.rollout.base import EngineSpec, SamplingParams

PROMPTS = ["Q:3+5=", "Q:1+2+3+4+5=", "Q:9+9+9="]


def load(path):
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path), path


def test_greedy_matches_transformers_generate_with_left_padding(tiny_model_dir):
    model, tokenizer, path = load(tiny_model_dir)
    engine = build_engine("hf", model, tokenizer, EngineSpec(path, 512))
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    out = engine.generate(prompts, 1, SamplingParams(temperature=0, max_new_tokens=40), seed=0)
    for row, prompt in enumerate(prompts):
        expected = model.generate(
            torch.tensor([prompt]), max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )[0, len(prompt) :].tolist()
        length = int(out.lengths[row])
        assert out.response_ids[row, :length].tolist() == expected[:length]
        assert bool(out.truncated[row]) == (tokenizer.eos_token_id not in expected)


def test_sampling_is_prompt_major_reproducible_and_respects_the_budget(tiny_model_dir):
    model, tokenizer, path = load(tiny_model_dir)
    engine = build_engine("hf", model, tokenizer, EngineSpec(path, 512))
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    sampling = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=12)
    a = engine.generate(prompts, 4, sampling, seed=5)
    b = engine.generate(prompts, 4, sampling, seed=5)
    c = engine.generate(prompts, 4, sampling, seed=6)
    assert a.response_ids.shape[0] == 12 and torch.equal(a.response_ids, b.response_ids)
    assert not torch.equal(a.response_ids, c.response_ids)
    assert int(a.lengths.max()) <= 12
    eos = tokenizer.eos_token_id
    for row in range(12):
        length = int(a.lengths[row])
        tokens = a.response_ids[row].tolist()
        ended = tokens[length - 1] == eos
        assert bool(a.truncated[row]) == (not ended)
        assert not ended or length <= 12
        assert all(t == tokenizer.pad_token_id for t in tokens[length:])
        assert eos not in tokens[: length - 1]
    assert a.truncated.any()  # a 12-token budget cuts some of these off


def test_top_p_keeps_only_the_nucleus():
    from trainers.rollout.hf import sample_tokens

    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]])).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    drawn, logp = sample_tokens(logits, SamplingParams(temperature=1.0, top_p=0.7), g)
    assert set(drawn.tolist()) == {0, 1}  # 0.6 alone is below 0.7, so 0.3 joins; 0.1 never
    share = (drawn == 0).float().mean().item()
    assert abs(share - 2 / 3) < 0.05
    # each draw's log-probability is under the renormalized nucleus it was drawn from
    expected = torch.where(drawn == 0, torch.tensor(0.6 / 0.9), torch.tensor(0.3 / 0.9)).log()
    assert torch.allclose(logp, expected, atol=1e-6)


def test_the_cache_goes_under_the_name_the_forward_takes(tiny_model_dir):
    """transformers renamed ``past_key_values`` to ``cache``; an older forward swallows ``cache=`` in
    ``**kwargs`` and decodes without context (seen with transformers 5.17 on the H100), so the
    engine reads the name off the forward's signature."""
    from trainers.rollout.hf import cache_argument

    model, _, _ = load(tiny_model_dir)
    import inspect

    assert cache_argument(model) in inspect.signature(model.forward).parameters

    class OlderForward(torch.nn.Module):
        def forward(self, input_ids=None, attention_mask=None, past_key_values=None, **kwargs):
            return input_ids

    assert cache_argument(OlderForward()) == "past_key_values"


def test_engines_come_from_one_registry():
    from trainers.config import RolloutConfig

    with pytest.raises(ValueError, match="unknown rollout engine 'sglang' \\(known: hf, vllm\\)"):
        build_engine("sglang", None, None, None)
    with pytest.raises(ValueError, match="rollout engine"):
        RolloutConfig(engine="sglang")


def test_the_preallocated_cache_holds_what_the_dynamic_one_holds():
    """Same keys and values (bit for bit) through prefill, repeats, decoding and dropped rows."""
    from transformers.cache_utils import DynamicLayer

    from trainers.rollout.kv_cache import PreallocatedLayer

    g = torch.Generator().manual_seed(0)
    ours, theirs = PreallocatedLayer(capacity=9), DynamicLayer()
    states = lambda rows, length: [torch.randn(rows, 2, length, 4, generator=g) for _ in range(2)]  # noqa: E731
    steps = [("update", states(3, 4)), ("repeat", 2), ("update", states(6, 1)), ("select", torch.tensor([0, 2, 5])),
             ("update", states(3, 1)), ("select", torch.tensor([1])), ("update", states(1, 1))]
    for op, arg in steps:
        for layer in (ours, theirs):
            {"update": lambda a: layer.update(*a), "repeat": layer.batch_repeat_interleave,
             "select": layer.batch_select_indices}[op](arg)
        assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)
        assert ours.get_seq_length() == theirs.get_seq_length()
    with pytest.raises(ValueError, match="holds 9 positions"):
        ours.update(*states(1, 3))


def test_rows_that_ride_along_after_finishing_change_no_draw(tiny_model_dir, monkeypatch):
    """Finished rows leave the batch together, not one by one: the draws are the same."""
    from trainers.rollout.hf import Batch

    model, tokenizer, path = load(tiny_model_dir)
    engine = build_engine("hf", model, tokenizer, EngineSpec(path, 512))
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=30)
    lazy = engine.generate(prompts, 8, sampling, seed=3)
    monkeypatch.setattr(Batch, "COMPACT_SHARE", 0.0)  # every finished row leaves at once
    eager = engine.generate(prompts, 8, sampling, seed=3)
    assert len(set(lazy.lengths.tolist())) > 3  # rows finish at different steps
    assert torch.equal(lazy.response_ids, eager.response_ids) and torch.equal(lazy.lengths, eager.lengths)
    assert torch.allclose(lazy.logprobs, eager.logprobs, atol=1e-5)
