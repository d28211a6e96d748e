"""Advantage estimators: how the correctness and length rewards, weighted, become one advantage
per rollout (a registry; ``lead.advantage.kind`` names one), and the token whitening applied after
it (``lead.advantage.whiten``).

    @register_advantage("rloo")
    def rloo(batch: WeightedRewards) -> torch.Tensor: ...

Built in: ``decoupled`` (LEAD's normalize-then-combine), ``combined`` (GRPO's combine-then-normalize),
``centered`` (Dr. GRPO; DLER with whitening), ``rloo`` (the leave-one-out baseline).

Every estimator takes the step's ``WeightedRewards`` (float64 tensors of shape (N,), each reward
also group-normalized, the two 0-d weights and the ``Groups`` of the batch) and returns the
advantages (N,). It is independent of the weighting: any weighting's weights go into any estimator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pydantic import Field

from trainers.method.segments import Groups
from trainers.registry import Registry
from trainers.settings import Strict

GROUP_STD_EPS = 1e-6  # GRPO outcome-advantage epsilon: (r - mean) / (std + 1e-6)
WHITEN_EPS = 1e-8  # inside sqrt of the token whitening variance


@dataclass(frozen=True)
class WeightedRewards:
    r_corr: torch.Tensor  # correctness reward
    r_eff: torch.Tensor  # length reward
    adv_corr: torch.Tensor  # group_normalize(r_corr)
    adv_eff: torch.Tensor  # group_normalize(r_eff)
    w_corr: torch.Tensor  # 0-d
    w_eff: torch.Tensor  # 0-d
    groups: Groups


AdvantageEstimator = Callable[[WeightedRewards], torch.Tensor]
ADVANTAGES: Registry[AdvantageEstimator] = Registry("advantage estimator")
register_advantage = ADVANTAGES.register


class AdvantageSettings(Strict):
    """``lead.advantage``: which estimator, and whether token advantages are whitened over the batch."""

    kind: ADVANTAGES.Name = Field(
        "decoupled", description="a name in trainers.method.advantages.ADVANTAGES: decoupled (normalize-then-combine, "
        "LEAD) | combined (combine-then-normalize, GRPO) | centered (Dr. GRPO, DLER) | rloo (leave-one-out baseline)")
    whiten: bool = Field(True, description="whiten token advantages over the batch (the release's GRPO does not)")


def group_normalize(rewards: torch.Tensor, groups: Groups) -> torch.Tensor:
    """GRPO outcome advantage within each group.

    ``A_i = (r_i - mean_g(r)) / (std_g(r) + 1e-6)`` with the unbiased std; a group of one rollout
    uses mean 0 and std 1.
    """
    count, mean, popvar = groups.mean_popvar(rewards)
    single = count <= 1
    std = torch.sqrt(popvar * count / (count - 1).clamp(min=1.0))
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    return (rewards - mean[groups.index]) / (std[groups.index] + GROUP_STD_EPS)


@register_advantage("decoupled")
def decoupled(batch: WeightedRewards) -> torch.Tensor:
    """Normalize-then-combine (LEAD, arXiv 2605.09806): ``A = w_c norm_g(r_corr) + w_e norm_g(r_len)``."""
    return batch.w_corr * batch.adv_corr + batch.w_eff * batch.adv_eff


@register_advantage("combined")
def combined(batch: WeightedRewards) -> torch.Tensor:
    """Combine-then-normalize (the GRPO baseline): ``A = norm_g(w_c r_corr + w_e r_len)``."""
    return group_normalize(batch.w_corr * batch.r_corr + batch.w_eff * batch.r_eff, batch.groups)


@register_advantage("centered")
def centered(batch: WeightedRewards) -> torch.Tensor:
    """Combine, then subtract the group mean, no std: ``A_i = R_i - mean_g(R)`` with
    ``R = w_c r_corr + w_e r_len`` (a group of one: mean 0). Without token whitening this is Dr.
    GRPO's advantage (arXiv 2503.20783); with it, DLER's batch-wise normalization (arXiv 2510.15110;
    verl's REINFORCE++-baseline: the token-weighted whitening over the batch is ``masked_whiten``)."""
    combined_reward = batch.w_corr * batch.r_corr + batch.w_eff * batch.r_eff
    count, mean, _ = batch.groups.mean_popvar(combined_reward)
    mean = torch.where(count <= 1, torch.zeros_like(mean), mean)
    return combined_reward - mean[batch.groups.index]


@register_advantage("rloo")
def rloo(batch: WeightedRewards) -> torch.Tensor:
    """REINFORCE leave-one-out (RLOO, arXiv 2402.14740; verl's ``rloo``): each rollout's combined
    reward ``R = w_c r_corr + w_e r_len`` minus the mean of the other rollouts of its group,
    ``A_i = R_i - mean_{j != i} R_j = n / (n - 1) (R_i - mean_g(R))``; a group of one keeps ``R_i``."""
    combined_reward = batch.w_corr * batch.r_corr + batch.w_eff * batch.r_eff
    count, mean, _ = batch.groups.mean_popvar(combined_reward)
    count, mean = count[batch.groups.index], mean[batch.groups.index]
    return torch.where(count > 1, (combined_reward - mean) * count / (count - 1).clamp(min=1.0), combined_reward)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Whiten token values over the masked tokens of the whole batch (verl's ``masked_whiten``).

    ``(v - mean) / sqrt(var + 1e-8)``, mean and unbiased variance over tokens where ``mask`` is
    set, so a long response counts once per token. Positions outside the mask come back as 0.
    """
    mask_f = mask.to(values.dtype)
    num_tokens = mask_f.sum()
    if not bool(num_tokens > 1):
        raise ValueError("masked_whiten needs at least two masked tokens")
    mean = (values * mask_f).sum() / num_tokens
    centered = (values - mean) * mask_f
    var = (centered * centered).sum() / (num_tokens - 1)
    return centered * torch.rsqrt(var + WHITEN_EPS)
