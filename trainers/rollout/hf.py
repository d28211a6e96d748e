"""A lean transformers sampling loop over the model's KV cache.

Prefill the distinct prompts once, copy the cache ``n`` times, then decode one token per forward
for the rows still running; rows that emit EOS leave the batch (their cache rows are dropped), so
short answers stop costing compute. Prompts are left-padded, with position ids that skip the
padding, so positions match training on unpadded sequences.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache

from trainers.rollout import register_engine
from trainers.precision import autocast
from trainers.rollout.base import EngineSpec, Rollouts, SamplingParams


def sample_tokens(
    logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Temperature and nucleus (top-p) sampling of one token per row (temperature 0: greedy), and
    each drawn token's log-probability under the distribution it was drawn from."""
    if sampling.temperature == 0:
        tokens = logits.argmax(-1)
        return tokens, torch.log_softmax(logits.float(), -1).gather(-1, tokens[:, None]).squeeze(-1)
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > sampling.top_p  # keeps the token crossing top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, (probs.gather(-1, tokens[:, None]).squeeze(-1) / probs.sum(-1)).log()


def cache_argument(model: torch.nn.Module) -> str:
    """The forward's name for the KV cache: transformers renamed ``past_key_values`` to ``cache``,
    and an older forward swallows an unknown ``cache=`` in ``**kwargs`` and silently decodes every
    token without its context, so ask the forward itself."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@register_engine("hf")
class HFRolloutEngine:
    """Samples from a transformers causal LM it shares with the trainer (no weight copies)."""

    def __init__(self, model: torch.nn.Module, tokenizer, spec: EngineSpec):
        self.model = model
        self.dtype = spec.dtype
        self.pad_token_id = tokenizer.pad_token_id
        self.eos_token_id = tokenizer.eos_token_id

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.model = model

    def close(self) -> None:
        pass

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams, seed: int) -> Rollouts:
        with torch.inference_mode(), autocast(self.dtype, next(self.model.parameters()).device):
            return self._generate(prompts, n, sampling, seed)

    def _generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams, seed: int) -> Rollouts:
        model, device = self.model, next(self.model.parameters()).device
        cache_kwarg = cache_argument(model)
        was_training = model.training
        model.eval()
        generator = torch.Generator(device=device).manual_seed(seed)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, device=device)
            mask[row, width - len(prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1, **{cache_kwarg: cache}
        ).logits[:, -1]
        cache.batch_repeat_interleave(n)
        logits, mask = logits.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
        next_position = positions[:, -1].repeat_interleave(n) + 1

        total = len(prompts) * n
        budget = sampling.max_new_tokens
        responses = torch.full((total, budget), self.pad_token_id, dtype=torch.long, device=device)
        logprobs = torch.zeros((total, budget), dtype=torch.float32, device=device)
        lengths = torch.zeros(total, dtype=torch.long, device=device)
        finished = torch.zeros(total, dtype=torch.bool, device=device)
        active = torch.arange(total, device=device)
        for t in range(budget):
            tokens, token_logprobs = sample_tokens(logits, sampling, generator)
            responses[active, t] = tokens
            logprobs[active, t] = token_logprobs
            lengths[active] = t + 1
            done = tokens == self.eos_token_id
            finished[active[done]] = True
            if t + 1 == budget or bool(done.all()):
                break
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                active, tokens, mask, next_position = active[keep], tokens[keep], mask[keep], next_position[keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            logits = model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=next_position[:, None],
                **{cache_kwarg: cache},
            ).logits[:, -1]
            next_position = next_position + 1
        model.train(was_training)
        width_used = int(lengths.max())
        return Rollouts(responses[:, :width_used], lengths, ~finished, logprobs[:, :width_used])
