"""A lean transformers sampling loop over the model's KV cache.

Prefill the distinct prompts once, copy the cache ``n`` times, then decode one token per forward
for the rows still running; rows that emit EOS leave the batch together once an eighth of it has
finished (their cache rows are dropped), so short answers stop costing compute. Prompts are left-padded, with position ids that skip the
padding, so positions match training on unpadded sequences.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch

from trainers.rollout import register_engine
from trainers.rollout.base import EngineSpec, Rollouts, SamplingParams
from trainers.rollout.kv_cache import preallocated_cache
from trainers.runtime.process import autocast


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
    return _cache_argument(type(model))


@functools.cache
def _cache_argument(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


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
        was_training = model.training
        model.eval()
        generator = torch.Generator(device=device).manual_seed(seed)
        budget = sampling.max_new_tokens
        batch = Batch.prefill(model, prompts, n, budget, self.pad_token_id)
        total = len(prompts) * n
        responses = torch.full((total, budget), self.pad_token_id, dtype=torch.long, device=device)
        logprobs = torch.zeros((total, budget), dtype=torch.float32, device=device)
        lengths = torch.zeros(total, dtype=torch.long, device=device)
        finished = torch.zeros(total, dtype=torch.bool, device=device)
        for t in range(budget):
            live = batch.running.nonzero().squeeze(1)
            tokens, token_logprobs = sample_tokens(batch.logits[live], sampling, generator)
            rows = batch.rows[live]
            responses[rows, t] = tokens
            logprobs[rows, t] = token_logprobs
            lengths[rows] = t + 1
            done = tokens == self.eos_token_id
            finished[rows[done]] = True
            batch.running[live[done]] = False
            if t + 1 == budget or not bool(batch.running.any()):
                break
            batch.decode(model, tokens[~done], self.pad_token_id)
        model.train(was_training)
        width_used = int(lengths.max())
        return Rollouts(responses[:, :width_used], lengths, ~finished, logprobs[:, :width_used])


@dataclass
class Batch:
    """The rows being decoded: their KV cache, attention mask, next positions and last logits.

    A row that finished stays in the batch (decoding padding nobody reads) until a
    ``COMPACT_SHARE`` of the batch has finished; then the finished rows leave it together. Only
    running rows are sampled, in row order, so which rows ride along changes no draw."""

    cache: object
    mask: torch.Tensor  # (rows, prompt width + budget): 1 on prompt and generated tokens
    width: int  # filled columns of ``mask``
    next_position: torch.Tensor  # (rows,)
    logits: torch.Tensor  # (rows, vocab): the next token's
    rows: torch.Tensor  # (rows,): each batch row's output row
    running: torch.Tensor  # (rows,) bool

    COMPACT_SHARE = 0.125

    @classmethod
    def prefill(cls, model, prompts: list[list[int]], n: int, budget: int, pad_token_id: int) -> "Batch":
        """Prefill the distinct prompts (left-padded, positions skipping the padding), then copy
        each row's cache ``n`` times."""
        device = next(model.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(prompts), width + budget), dtype=torch.long, device=device)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, device=device)
            mask[row, width - len(prompt) :] = 1
        positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
        cache = preallocated_cache(model, width + budget)
        logits = model(input_ids=ids, attention_mask=mask[:, :width], position_ids=positions, logits_to_keep=1,
                       **{cache_argument(model): cache}).logits[:, -1]
        cache.batch_repeat_interleave(n)
        total = len(prompts) * n
        return cls(cache, mask.repeat_interleave(n, 0), width, positions[:, -1].repeat_interleave(n) + 1,
                   logits.repeat_interleave(n, 0), torch.arange(total, device=device),
                   torch.ones(total, dtype=torch.bool, device=device))

    def decode(self, model, tokens: torch.Tensor, pad_token_id: int) -> None:
        """Feed the running rows' ``tokens`` (finished rows get padding) and keep the next logits."""
        if (~self.running).sum() >= max(1.0, self.COMPACT_SHARE * self.running.numel()):
            keep = self.running.nonzero().squeeze(1)
            self.cache.batch_select_indices(keep)
            self.mask, self.next_position, self.rows = self.mask[keep], self.next_position[keep], self.rows[keep]
            self.running = self.running[keep]
        step = torch.full_like(self.rows, pad_token_id)
        step[self.running] = tokens
        self.width += 1
        self.logits = model(
            input_ids=step[:, None], attention_mask=self.mask[:, : self.width], position_ids=self.next_position[:, None],
            **{cache_argument(model): self.cache},
        ).logits[:, -1]
        self.next_position = self.next_position + 1
