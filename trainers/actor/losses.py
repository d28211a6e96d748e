"""Policy losses: each response token's loss from the policy's new and old log-probabilities and its
advantage (a registry; ``train.policy_loss`` names one).

    @register_policy_loss("my_loss")
    def my_loss(logp, old_logp, adv, mask, train) -> PolicyLoss: ...

``logp``, ``old_logp``, ``adv`` and ``mask`` are (rows, tokens); ``train`` is the run's
``OptimConfig`` (the clip settings). An entry returns the per-token loss and two per-token
indicators the ``loss/*`` metrics average: ``outside`` (the ratio lies outside the clip band,
``loss/ratio_outside_clip``) and ``clipped`` (the clipped term is the larger loss: verl's
``pg_clipfrac``, ``loss/pg_clipfrac``). The loss aggregation (``trainers.actor.aggregation``) then
turns the per-token losses into the mini-batch's loss. An entry that honours the dual clip
(``train.clip_ratio_c``) says so with ``dual_clip = True``; a config that sets it for another is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from trainers.registry import Registry

LOG_RATIO_LIMIT = 20.0  # log(ratio) is clamped to +-this (verl's ``compute_policy_loss_vanilla``)
SEQUENCE_LOG_RATIO_LIMIT = 10.0  # GSPO's token log-ratio is clamped above at this (verl's ``compute_policy_loss_gspo``)


class PolicyLoss(NamedTuple):
    loss: torch.Tensor  # (rows, tokens): each token's loss
    outside: torch.Tensor  # bool: the ratio lies outside the clip band
    clipped: torch.Tensor  # bool: the clipped term is the larger loss (verl's pg_clipfrac)


PolicyLossFn = Callable[..., PolicyLoss]
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")
register_policy_loss = POLICY_LOSSES.register


def clipped_objective(
    ratio: torch.Tensor, adv: torch.Tensor, clip_low: float, clip_high: float | None, clip_c: float | None = None
) -> PolicyLoss:
    """PPO's clipped loss per token, ``max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))`` (``clip_high``
    None: ``clip_low``, a symmetric clip). Dual clip (``clip_c``, arXiv 1912.09729; verl, DLER arXiv
    2510.15110): where ``A < 0`` the loss is also bounded by ``-A clip_c``, so a very large ratio on
    a bad token cannot blow the step up."""
    bounded = ratio.clamp(1 - clip_low, 1 + (clip_low if clip_high is None else clip_high))
    plain, clipped = -adv * ratio, -adv * bounded
    loss = torch.maximum(plain, clipped)
    if clip_c is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * clip_c), loss)
    return PolicyLoss(loss, ratio != bounded, clipped > plain)


@register_policy_loss("ppo_clip")
def ppo_clip(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, train) -> PolicyLoss:
    """PPO's clipped surrogate (arXiv 1707.06347) on the token ratio ``r = exp(clamp(logp - old, +-20))``,
    with clip-higher (``train.clip_ratio_high``, DAPO) and the dual clip (``train.clip_ratio_c``);
    verl's ``vanilla`` policy loss, clamp included: no ratio can make a token's loss 1e12."""
    ratio = torch.exp((logp - old_logp).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))
    return clipped_objective(ratio, adv, train.clip_ratio, train.clip_ratio_high, train.clip_ratio_c)


ppo_clip.dual_clip = True


@register_policy_loss("gspo")
def gspo(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, train) -> PolicyLoss:
    """GSPO (arXiv 2507.18071): the sequence's ratio ``s_i = exp(mean_t (logp - old))`` over its
    response tokens, clipped as PPO clips a token's. Per token it is ``sg[s_i] pi / sg[pi]`` (the
    value ``s_i``, the gradient of the token's own log-probability), its log clamped above at 10,
    as verl's ``gspo`` computes it. verl aggregates it as ``seq-mean-token-mean``; here
    ``train.loss_aggregation`` does (``token_mean`` weighs a long sequence's tokens as a short one's)."""
    weights = mask.float()
    sequence_log_ratio = ((logp - old_logp) * weights).sum(-1) / weights.sum(-1).clamp(min=1)
    token_log_ratio = logp - logp.detach() + sequence_log_ratio.detach()[:, None]
    ratio = torch.exp(token_log_ratio.clamp(max=SEQUENCE_LOG_RATIO_LIMIT))
    return clipped_objective(ratio, adv, train.clip_ratio, train.clip_ratio_high)
