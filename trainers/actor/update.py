"""One PPO pass over a batch: the policy loss and its plan, shared by every training backend.

    loss per token  = policy loss + kl_coef * KL - entropy_coef * H
                      (``train.policy_loss``, ``trainers.actor.losses``: PPO's clip by default)
    mini-batch loss = sum over the mini-batch's response tokens / denominator
                      (``train.loss_aggregation``: the mini-batch's response tokens by default)

The denominator is the whole mini-batch's, whatever the number of workers: a worker's micro-batch
contributes ``sum / denominator * world`` and the backend averages gradients over the ``world``
workers, so one worker and N workers take the same step. Every worker computes the same plan
(``plan_pass``) from the step's seed, takes its share of each mini-batch (rows ``rank::world``
after a length sort) and pads with empty micro-batches so that all run the same number of forward
passes (ZeRO-3 gathers parameters collectively in each one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch.utils.checkpoint import checkpoint

from trainers import contract as M
from trainers.actor.aggregation import LOSS_AGGREGATIONS
from trainers.actor.losses import POLICY_LOSSES

LOGPROB_CHUNK_TOKENS = 1024  # tokens per full-vocabulary float32 log_softmax
GAPS = "gap_values"  # in a worker's sums: its sampled tokens' gaps (a tensor, not a sum)


@dataclass
class PolicyBatch:
    """A step's sequences, on the CPU or the controller's device. Shapes (B, W) and (B, W - 1)."""

    input_ids: torch.Tensor  # right-padded prompt + response
    mask: torch.Tensor  # bool: entry j is response token j + 1
    token_adv: torch.Tensor  # float: each response token's advantage
    sampler_logp: torch.Tensor  # float: the rollout engine's log-probability of each response token
    budget: int  # the step's generation budget (max_new_tokens)

    def to(self, device) -> "PolicyBatch":
        tensors = (self.input_ids, self.mask, self.token_adv, self.sampler_logp)
        return PolicyBatch(*(t.to(device) for t in tensors), self.budget)


def _logp_and_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float):
    logits = (hidden @ weight.t()).float()
    if temperature > 0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def token_logprobs(model, input_ids: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token and the entropy of each next-token distribution, both
    (B, W - 1): entry ``j`` is about token ``j + 1``. ``input_ids`` are right-padded (causal
    attention never sees the padding after a token, so no mask is needed).

    The vocabulary projection runs ``LOGPROB_CHUNK_TOKENS`` tokens at a time, each chunk
    recomputed in the backward pass rather than stored: at most one chunk's float32 logits live at
    once (1024 x 151,936 x 4 bytes = 0.62 GB for a Qwen2 vocabulary), not the micro-batch's."""
    hidden = model.base_model(input_ids=input_ids).last_hidden_state[:, :-1]
    weight = model.get_output_embeddings().weight
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = input_ids[:, 1:].reshape(-1)
    logps, entropies = [], []
    for start in range(0, targets.numel(), LOGPROB_CHUNK_TOKENS):
        part = slice(start, start + LOGPROB_CHUNK_TOKENS)
        args = (flat_hidden[part], weight, targets[part], temperature)
        if torch.is_grad_enabled():
            logp, entropy = checkpoint(_logp_and_entropy, *args, use_reentrant=False)
        else:
            logp, entropy = _logp_and_entropy(*args)
        logps.append(logp)
        entropies.append(entropy)
    shape = input_ids[:, 1:].shape
    return torch.cat(logps).view(shape), torch.cat(entropies).view(shape)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token KL estimate to the reference: ``mse`` = 0.5 (logp - ref)^2;
    ``low_var_kl`` = exp(ref - logp) - (ref - logp) - 1, clamped to [-10, 10] (k3 estimator)."""
    if kind == "mse":
        return 0.5 * (logp - ref_logp) ** 2
    log_ratio = ref_logp - logp
    return (log_ratio.exp() - log_ratio - 1).clamp(-10.0, 10.0)


class Trainee(Protocol):
    """What ``policy_update`` drives on one worker."""

    module: torch.nn.Module  # the policy (a DeepSpeed engine's module under ZeRO)
    has_reference: bool  # a frozen reference model (kl_coef > 0)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...  # token_logprobs

    def reference_forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def backward(self, loss: torch.Tensor) -> None: ...  # accumulates gradients until ``step``

    def step(self) -> float: ...  # clip, optimizer step, zero the gradients; returns the gradient norm


MicroBatch = tuple[torch.Tensor, int]  # row indices (length-sorted) and the width they need; no rows: padding


def micro_batches(rows: torch.Tensor, row_width: torch.Tensor, size: int, rank: int, world: int) -> list[MicroBatch]:
    """This worker's micro-batches of ``rows``: length-sorted, rows ``rank::world``, ``size`` a pass."""
    rows = rows[torch.argsort(row_width[rows], stable=True)][rank::world]
    return [(rows[s : s + size], int(row_width[rows[s : s + size]].max())) for s in range(0, rows.numel(), size)]


def padded(parts: list[MicroBatch], count: int, like: torch.Tensor) -> list[MicroBatch]:
    """``parts`` followed by empty micro-batches up to ``count``."""
    return parts + [(like[:0], 0)] * (count - len(parts))


def plan_pass(total: int, row_width: torch.Tensor, opt, seed: int, rank: int, world: int):
    """Every epoch's mini-batches for this worker, as lists of micro-batches all workers share the
    count of, and each mini-batch's rows (for its token count)."""
    generator = torch.Generator().manual_seed(seed)
    plan = []
    for _ in range(opt.ppo_epochs):
        order = torch.randperm(total, generator=generator)
        for start in range(0, total, opt.mini_batch_size):
            mini = order[start : start + opt.mini_batch_size]
            count = max(math.ceil(len(range(r, mini.numel(), world)) / opt.micro_batch_size) for r in range(world))
            plan.append((mini, padded(micro_batches(mini, row_width, opt.micro_batch_size, rank, world), count, mini)))
    return plan


def rows_of(plan) -> torch.Tensor:
    """The rows a worker's plan (or part of it) trains on."""
    parts = [idx for _, micro in plan for idx, _ in micro]
    return torch.cat(parts).unique() if parts else torch.zeros(0, dtype=torch.long)


def later_rows(plan) -> torch.Tensor:
    """The rows a worker's plan trains on only after its first mini-batch (an optimizer step)."""
    later, first = rows_of(plan[1:]), rows_of(plan[:1])
    return later[~torch.isin(later, first)]


def policy_update(trainee: Trainee, batch: PolicyBatch, config, step_seed: int, rank: int = 0, world: int = 1) -> dict:
    """One PPO pass (``ppo_epochs``) over ``batch`` in shuffled mini-batches of micro-batches; this
    worker's share. Returns sums for ``combine_sums``: loss terms per mini-batch (token means over
    the whole mini-batch), the gradient norms, the number of optimizer steps, and the absolute gap
    between the trainer's and the sampler's log-probabilities on the sampled tokens (first epoch).

    The policy that sampled the batch is the one the first mini-batch is trained from: its rows'
    old log-probabilities are that mini-batch's own forward pass, detached; only the rows first
    met after an optimizer step get a forward pass of their own beforehand."""
    opt = config.train
    input_ids, mask, device = batch.input_ids, batch.mask, batch.input_ids.device
    total, width = input_ids.shape
    row_width = (mask.long().cumsum(1).argmax(1) + 2).cpu()  # tokens up to and including the last response token
    plans = [plan_pass(total, row_width, opt, step_seed, r, world) for r in range(world)]
    plan = plans[rank]
    shares = [rows_of(p) for p in plans]  # the rows each worker trains on
    late = [later_rows(p) for p in plans]  # ... and those it first meets after an optimizer step

    def forward_no_grad(forward, rows: list[torch.Tensor]) -> torch.Tensor:
        """Log-probs of this worker's ``rows``, in as many passes as any worker's (``rows`` by worker)."""
        out = torch.zeros(total, width - 1, device=device)
        passes = max(math.ceil(r.numel() / opt.micro_batch_size) for r in rows)
        parts = micro_batches(rows[rank], row_width, opt.micro_batch_size, 0, 1)
        with torch.no_grad():
            for idx, w in padded(parts, passes, rows[rank]):
                if not idx.numel():
                    forward(input_ids[:1, :2])
                    continue
                idx = idx.to(device)
                out[idx, : w - 1] = forward(input_ids[idx, :w])[0].float()
        return out

    ref_logp = forward_no_grad(trainee.reference_forward, shares) if trainee.has_reference else None
    old_logp = forward_no_grad(trainee.forward, late) if len(plan) > 1 else None

    sums = {"policy": 0.0, "kl": 0.0, "entropy": 0.0, "outside": 0.0, "clipped": 0.0, "grad_norm": 0.0,
            "updates": 0.0, "gap": 0.0, "gap_tokens": 0.0}
    gaps = []  # every sampled token's gap, first epoch: its percentiles (combine_sums)
    trainee.module.train()
    for number, (mini, parts) in enumerate(plan):
        first_epoch = number < math.ceil(total / opt.mini_batch_size)
        mb_tokens = mask[mini.to(device)].sum().clamp(min=1)
        denominator = LOSS_AGGREGATIONS[opt.loss_aggregation](int(mb_tokens), mini.numel(), batch.budget)
        for idx, w in parts:
            if not idx.numel():  # padding: a forward and a backward that add nothing
                logp, _ = trainee.forward(input_ids[:1, :2])
                trainee.backward(logp.sum() * 0.0)
                continue
            idx = idx.to(device)
            m = mask[idx, : w - 1].float()
            logp, entropy = (t.float() for t in trainee.forward(input_ids[idx, :w]))
            if number == 0:  # the sampling policy's own forward: the old log-probs of these rows
                old = logp.detach()
                if old_logp is not None:
                    old_logp[idx, : w - 1] = old
            else:
                old = old_logp[idx, : w - 1]
            adv = batch.token_adv[idx, : w - 1]
            pg, outside, clipped = POLICY_LOSSES[opt.policy_loss](logp, old, adv, m, opt)
            kl = kl_penalty(logp, ref_logp[idx, : w - 1], opt.kl_type) if ref_logp is not None else torch.zeros_like(pg)
            loss_tokens = pg + opt.kl_coef * kl - opt.entropy_coef * entropy
            trainee.backward((loss_tokens * m).sum() / denominator * world)
            with torch.no_grad():
                sums["policy"] += float((pg * m).sum() / mb_tokens)
                sums["kl"] += float((kl * m).sum() / mb_tokens)
                sums["entropy"] += float((entropy * m).sum() / mb_tokens)
                sums["outside"] += float((outside.float() * m).sum() / mb_tokens)
                sums["clipped"] += float((clipped.float() * m).sum() / mb_tokens)
                if first_epoch:
                    token_gaps = (old - batch.sampler_logp[idx, : w - 1]).abs()[m.bool()].float()
                    sums["gap"] += float(token_gaps.sum())
                    sums["gap_tokens"] += float(m.sum())
                    gaps.append(token_gaps.cpu())
        sums["grad_norm"] += trainee.step()
        sums["updates"] += 1
    return {**sums, GAPS: torch.cat(gaps) if gaps else torch.zeros(0)}


def combine_sums(sums: list[dict]) -> dict[str, float]:
    """The step's ``loss/*`` metrics and ``perf/sampler_logp_gap`` (mean, 99th percentile and
    largest over the step's sampled tokens) from every worker's sums."""
    total = {key: sum(s[key] for s in sums) for key in sums[0] if key != GAPS}
    gaps = torch.cat([s[GAPS] for s in sums]).sort().values
    updates = sums[0]["updates"]
    return {
        M.LOSS_POLICY: total["policy"] / updates,
        M.LOSS_KL: total["kl"] / updates,
        M.LOSS_ENTROPY: total["entropy"] / updates,
        M.LOSS_RATIO_OUTSIDE_CLIP: total["outside"] / updates,
        M.LOSS_PG_CLIPFRAC: total["clipped"] / updates,
        M.LOSS_GRAD_NORM: sums[0]["grad_norm"] / updates,  # the global norm: the same on every worker
        M.PERF_SAMPLER_LOGP_GAP: total["gap"] / max(total["gap_tokens"], 1.0),
        M.PERF_SAMPLER_LOGP_GAP_P99: float(gaps[int(0.99 * (len(gaps) - 1))]) if len(gaps) else 0.0,
        M.PERF_SAMPLER_LOGP_GAP_MAX: float(gaps[-1]) if len(gaps) else 0.0,
    }
