"""The LEAD core: from a batch of rollouts to per-rollout advantages and a pair of reward weights.

Pure tensor math (no Ray, no MLflow, no model). One call per training step::

    out = lead_step(lengths, correctness, group_ids, config=LeadConfig(...), state=None)

Notation: rollout ``i`` has length ``l_i``, correctness score ``c_i`` in [0, 1] (correct when
``c_i > 0.5``) and group ``g(i)`` (its prompt). Every formula is stated in ``shared/spec/LEAD.md``
and repeated in the docstring of the function that computes it.

Everything is vectorized over rollouts and groups (``torch.unique(return_inverse=True)`` plus
segment reductions), runs on the device of its inputs, and synchronizes with the host once, at
the end, to hand back the float weights and metrics (input validation rides on that same sync).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "LeadConfig",
    "LeadState",
    "LeadOutput",
    "lead_step",
    "masked_whiten",
    "group_normalize",
    "target_lengths",
    "efficiency_reward",
    "psi_statistics",
]

GROUP_STD_EPS = 1e-6  # GRPO outcome-advantage epsilon: (r - mean) / (std + 1e-6)
SIGMA_EPS = 1e-8  # inside sqrt of the PSI spread
WHITEN_EPS = 1e-8  # inside sqrt of the token whitening variance


class LeadConfig(BaseModel):
    """Settings of the LEAD reward and weighting (defaults: the paper's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weighting: Literal["psi", "static", "schedule"] = "psi"
    # PSI
    alpha: float = Field(1.0, ge=0.0, description="exponent of the headroom potentials")
    beta: float = Field(0.95, ge=0.0, le=1.0, description="EMA coefficient of the weights")
    lambda_min: float = Field(0.3, ge=0.0, le=1.0, description="floor on the used w_corr")
    eps: float = Field(1e-8, gt=0.0)
    # static
    w_corr: float = Field(0.5, ge=0.0, le=1.0, description="static weight of correctness")
    # schedule: w_corr moves from start to end over schedule_steps steps, then stays
    w_corr_start: float = Field(1.0, ge=0.0, le=1.0)
    w_corr_end: float = Field(0.5, ge=0.0, le=1.0)
    schedule_steps: int = Field(100, ge=1)
    schedule_shape: Literal["linear", "cosine"] = "linear"
    # target length and efficiency reward
    aggregator: Literal["mean_correct", "min_correct", "median_correct", "mean_all"] = "mean_correct"
    lstar_mode: Literal["sym", "asym", "upper_only"] = "sym"
    floor: float = Field(1000.0, gt=0.0, description="lower clamp of L* (tokens)")
    bmax: float = Field(8000.0, gt=0.0, description="upper clamp of L*, and L* of unsolved prompts")
    short_guard: float = Field(0.0, ge=0.0, description="asym: correct rollouts shorter than this get 0")
    lstar_memory: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="beyond the paper: EMA coefficient blending L* from earlier visits of the same "
        "group id (problem id) into the current estimate; 0 disables the memory",
    )
    normalization: Literal["decoupled", "combined"] = "decoupled"

    @model_validator(mode="after")
    def _floor_below_bmax(self) -> "LeadConfig":
        if self.floor > self.bmax:
            raise ValueError(f"floor ({self.floor}) must not exceed bmax ({self.bmax})")
        return self


@dataclass
class LeadState:
    """Controller state carried from one step to the next.

    ``w_corr_ema`` / ``w_eff_ema`` are the unfloored EMA weights (the floor is applied on use
    only). ``memory_ids`` (sorted int64) / ``memory_lstar`` hold remembered targets when
    ``lstar_memory > 0``.
    """

    step: int = 0
    w_corr_ema: float = 0.5
    w_eff_ema: float = 0.5
    memory_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    memory_lstar: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "w_corr_ema": self.w_corr_ema,
            "w_eff_ema": self.w_eff_ema,
            "memory_ids": self.memory_ids.detach().cpu().clone(),
            "memory_lstar": self.memory_lstar.detach().cpu().clone(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "LeadState":
        return cls(
            step=int(state["step"]),
            w_corr_ema=float(state["w_corr_ema"]),
            w_eff_ema=float(state["w_eff_ema"]),
            memory_ids=torch.as_tensor(state["memory_ids"], dtype=torch.int64).clone(),
            memory_lstar=torch.as_tensor(state["memory_lstar"], dtype=torch.float64).clone(),
        )


@dataclass
class LeadOutput:
    """What one ``lead_step`` returns. Tensors have shape (N,) and live on the inputs' device."""

    targets: torch.Tensor  # L*_q of each rollout's prompt
    r_corr: torch.Tensor  # correctness reward (the scores)
    r_eff: torch.Tensor  # efficiency reward
    adv_corr: torch.Tensor  # group-normalized correctness reward
    adv_eff: torch.Tensor  # group-normalized efficiency reward
    advantages: torch.Tensor  # combined per-rollout advantage, before token whitening
    w_corr: float
    w_eff: float
    state: LeadState
    metrics: dict[str, float]


# --------------------------------------------------------------------------- segment helpers


def _segment_sum(values: torch.Tensor, index: torch.Tensor, num_groups: int) -> torch.Tensor:
    return torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, index, values)


def _segment_mean_popvar(
    values: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, num_groups: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group count, mean and population variance of ``values`` over rollouts with weight 1."""
    count = _segment_sum(weight, index, num_groups)
    safe = count.clamp(min=1.0)
    mean = _segment_sum(values * weight, index, num_groups) / safe
    dev = (values - mean[index]) * weight
    popvar = _segment_sum(dev * dev, index, num_groups) / safe
    return count, mean, popvar


def group_normalize(rewards: torch.Tensor, group_index: torch.Tensor, num_groups: int) -> torch.Tensor:
    """GRPO outcome advantage within each group.

    ``A_i = (r_i - mean_g(r)) / (std_g(r) + 1e-6)`` with the unbiased std; a group of one rollout
    uses mean 0 and std 1. ``group_index`` holds contiguous labels in ``[0, num_groups)``.
    """
    ones = torch.ones_like(rewards)
    count, mean, popvar = _segment_mean_popvar(rewards, group_index, ones, num_groups)
    single = count <= 1
    std = torch.sqrt(popvar * count / (count - 1).clamp(min=1.0))
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    return (rewards - mean[group_index]) / (std[group_index] + GROUP_STD_EPS)


def _segment_median(
    values: torch.Tensor, include: torch.Tensor, group_index: torch.Tensor, num_groups: int
) -> torch.Tensor:
    """Median of ``values`` over included rollouts of each group (mean of the middle two when even).

    Sort-based: order by (group, value) with excluded rollouts last in their group, then read the
    middle of each group's included run. Groups with nothing included give an arbitrary value.
    """
    keyed = torch.where(include, values, torch.full_like(values, math.inf))
    by_value = torch.argsort(keyed, stable=True)
    by_group = torch.argsort(group_index[by_value], stable=True)
    order = by_value[by_group]
    sorted_values = keyed[order]
    sizes = torch.bincount(group_index, minlength=num_groups)
    starts = torch.cumsum(sizes, 0) - sizes
    count = _segment_sum(include.to(torch.int64), group_index, num_groups)
    last = sorted_values.numel() - 1
    lo = (starts + (count - 1).clamp(min=0) // 2).clamp(max=last)
    hi = (starts + count // 2).clamp(max=last)
    return (sorted_values[lo] + sorted_values[hi]) / 2


# --------------------------------------------------------------------------- the formulas


def target_lengths(
    lengths: torch.Tensor,
    correct: torch.Tensor,
    group_index: torch.Tensor,
    num_groups: int,
    config: LeadConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prompt target length and whether the prompt was solved in this batch.

    ``L*_q = clamp(agg({l_i : g(i)=q, correct}), floor, bmax)``; ``L*_q = bmax`` when prompt ``q``
    has no correct rollout (for every aggregator). ``agg`` is the mean (``mean_correct``), min
    (``min_correct``) or median (``median_correct``) of the correct lengths, or the mean of all the
    prompt's lengths (``mean_all``). Returns ``(lstar, solved)``, both of shape (num_groups,).
    """
    correct_f = correct.to(lengths.dtype)
    num_correct = _segment_sum(correct_f, group_index, num_groups)
    solved = num_correct > 0
    if config.aggregator == "mean_correct":
        agg = _segment_sum(lengths * correct_f, group_index, num_groups) / num_correct.clamp(min=1.0)
    elif config.aggregator == "min_correct":
        masked = torch.where(correct, lengths, torch.full_like(lengths, math.inf))
        agg = torch.full((num_groups,), math.inf, dtype=lengths.dtype, device=lengths.device)
        agg = agg.scatter_reduce(0, group_index, masked, reduce="amin", include_self=True)
    elif config.aggregator == "median_correct":
        agg = _segment_median(lengths, correct, group_index, num_groups)
    else:  # mean_all
        agg = _segment_sum(lengths, group_index, num_groups) / torch.bincount(
            group_index, minlength=num_groups
        ).to(lengths.dtype)
    bmax = torch.full_like(agg, config.bmax)
    lstar = torch.where(solved, agg.clamp(min=config.floor, max=config.bmax), bmax)
    return lstar, solved


def efficiency_reward(
    lengths: torch.Tensor, targets: torch.Tensor, correct: torch.Tensor, config: LeadConfig
) -> torch.Tensor:
    """Efficiency reward of each rollout against its prompt's target ``L*``.

    - ``sym`` (paper): ``max(-1, 1 - |l - L*| / L*)``
    - ``upper_only``: ``max(-1, min(0, 1 - l / L*))``
    - ``asym``: correct: ``0`` if ``l < short_guard`` else ``max(0, 1 - l / L*)``;
      incorrect: ``clamp(1 - l / L*, -1, 0)``
    """
    ratio = 1 - lengths / targets
    if config.lstar_mode == "sym":
        return (1 - (lengths - targets).abs() / targets).clamp(min=-1.0)
    if config.lstar_mode == "upper_only":
        return ratio.clamp(min=-1.0, max=0.0)
    guarded = lengths < config.short_guard
    on_correct = torch.where(guarded, torch.zeros_like(ratio), ratio.clamp(min=0.0))
    return torch.where(correct, on_correct, ratio.clamp(min=-1.0, max=0.0))


def psi_statistics(
    r_corr: torch.Tensor,
    r_eff: torch.Tensor,
    correct: torch.Tensor,
    group_index: torch.Tensor,
    num_groups: int,
    config: LeadConfig,
) -> dict[str, torch.Tensor]:
    """PSI's spread-and-headroom statistics and target weights (0-d tensors).

    Correctness over all rollouts, efficiency over correct rollouts of groups with at least one
    (none: ``mu_e = sigma_e = 0``). With per-group mean ``m_q`` and population variance ``v_q``:
    ``mu = mean_q(m_q)``, ``sigma = sqrt(mean_q(v_q) + popvar_q(m_q) + 1e-8)``;
    ``CV_k = sigma_k / (|mu_k| + eps)``, ``CVn_k = CV_k / (CV_c + CV_e + eps)``;
    ``P_c = (1 - clamp(mu_c, 0, 1))^alpha``, ``P_e = (1 - (clamp(mu_e, -1, 1) + 1) / 2)^alpha``;
    ``D_k = CVn_k * P_k``, ``w*_k = D_k / (D_c + D_e + eps)``.
    """
    eps = config.eps

    def spread(values: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count, mean, popvar = _segment_mean_popvar(values, group_index, weight, num_groups)
        present = (count > 0).to(values.dtype)
        num_present = present.sum()
        safe_n = num_present.clamp(min=1.0)
        mu = (mean * present).sum() / safe_n
        between = (((mean - mu) * present) ** 2).sum() / safe_n
        within = (popvar * present).sum() / safe_n
        sigma = torch.sqrt(within + between + SIGMA_EPS)
        none = num_present == 0
        zero = torch.zeros_like(mu)
        return torch.where(none, zero, mu), torch.where(none, zero, sigma)

    mu_c, sigma_c = spread(r_corr, torch.ones_like(r_corr))
    mu_e, sigma_e = spread(r_eff, correct.to(r_eff.dtype))
    cv_c = sigma_c / (mu_c.abs() + eps)
    cv_e = sigma_e / (mu_e.abs() + eps)
    cv_norm_c = cv_c / (cv_c + cv_e + eps)
    cv_norm_e = cv_e / (cv_c + cv_e + eps)
    potential_c = (1 - mu_c.clamp(0.0, 1.0)) ** config.alpha
    potential_e = (1 - (mu_e.clamp(-1.0, 1.0) + 1) / 2) ** config.alpha
    d_c = cv_norm_c * potential_c
    d_e = cv_norm_e * potential_e
    return {
        "mu_corr": mu_c,
        "sigma_corr": sigma_c,
        "cv_corr": cv_c,
        "cv_norm_corr": cv_norm_c,
        "potential_corr": potential_c,
        "d_corr": d_c,
        "psi_target_w_corr": d_c / (d_c + d_e + eps),
        "mu_eff": mu_e,
        "sigma_eff": sigma_e,
        "cv_eff": cv_e,
        "cv_norm_eff": cv_norm_e,
        "potential_eff": potential_e,
        "d_eff": d_e,
        "psi_target_w_eff": d_e / (d_c + d_e + eps),
    }


def scheduled_w_corr(step: int, config: LeadConfig) -> float:
    """Hand-made curriculum: ``t = min(step / schedule_steps, 1)``;
    linear ``w = start + (end - start) t``; cosine ``w = end + (start - end) (1 + cos(pi t)) / 2``."""
    t = min(step / config.schedule_steps, 1.0)
    start, end = config.w_corr_start, config.w_corr_end
    if config.schedule_shape == "linear":
        return start + (end - start) * t
    return end + (start - end) * (1 + math.cos(math.pi * t)) / 2


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


# --------------------------------------------------------------------------- the step


def _remember_targets(
    lstar: torch.Tensor, solved: torch.Tensor, group_labels: torch.Tensor, state: LeadState, config: LeadConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blend targets remembered for the same group id: ``L* <- m L*_prev + (1 - m) L*`` when solved,
    ``L* <- L*_prev`` when unsolved now but solved before. Returns (lstar, new ids, new values)."""
    mem_ids = state.memory_ids.to(group_labels.device)
    mem_vals = state.memory_lstar.to(device=lstar.device, dtype=lstar.dtype)
    pos = torch.searchsorted(mem_ids, group_labels).clamp(max=max(mem_ids.numel() - 1, 0))
    if mem_ids.numel():
        known = mem_ids[pos] == group_labels
        prev = mem_vals[pos]
    else:
        known = torch.zeros_like(solved)
        prev = torch.zeros_like(lstar)
    m = config.lstar_memory
    blended = torch.where(known, m * prev + (1 - m) * lstar, lstar)
    lstar = torch.where(solved, blended, torch.where(known, prev, lstar))
    # new memory: old entries, overwritten or extended by this batch's solved groups
    remember = solved | known
    all_ids = torch.cat([mem_ids, group_labels[remember]])
    all_vals = torch.cat([mem_vals, lstar[remember]])
    new_ids, inverse = torch.unique(all_ids, return_inverse=True)
    # this batch's entries come after the old ones: keep the last entry of each id
    order = torch.arange(all_ids.numel(), device=all_ids.device)
    latest = torch.full((new_ids.numel(),), -1, dtype=torch.int64, device=all_ids.device)
    latest = latest.scatter_reduce(0, inverse, order, reduce="amax")
    new_vals = all_vals[latest]
    return lstar, new_ids, new_vals


def lead_step(
    lengths: torch.Tensor,
    correctness: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    config: LeadConfig,
    state: LeadState | None = None,
) -> LeadOutput:
    """One LEAD step: targets, efficiency reward, group-normalized advantages and weights.

    ``lengths`` (tokens), ``correctness`` (scores in [0, 1], correct when > 0.5) and ``group_ids``
    (int64 prompt labels, any values, any order) are 1-D tensors of equal length N.

    ``decoupled`` (normalize-then-combine): ``A = w_c * norm_g(r_corr) + w_e * norm_g(r_eff)``.
    ``combined`` (GRPO baseline): ``A = norm_g(w_c * r_corr + w_e * r_eff)``.
    Weights: ``psi`` EMA of PSI's target weights from (0.5, 0.5), ``w_c = max(ema_c, lambda_min)``,
    ``w_e = 1 - w_c``; ``static`` ``w_c = config.w_corr``; ``schedule`` ``scheduled_w_corr``.
    """
    state = state if state is not None else LeadState()
    lengths, correctness, group_ids = (torch.as_tensor(t) for t in (lengths, correctness, group_ids))
    for name, t in (("lengths", lengths), ("correctness", correctness), ("group_ids", group_ids)):
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    n = lengths.numel()
    if correctness.numel() != n or group_ids.numel() != n:
        raise ValueError(
            f"lengths, correctness and group_ids must have equal length, got {n}, "
            f"{correctness.numel()}, {group_ids.numel()}"
        )
    if n == 0:
        raise ValueError("empty batch: lengths, correctness and group_ids have no elements")
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")

    dtype = torch.float64
    lengths_f = lengths.to(dtype)
    r_corr = correctness.to(dtype)
    correct = r_corr > 0.5
    group_labels, group_index = torch.unique(group_ids.to(torch.int64), return_inverse=True)
    num_groups = group_labels.numel()

    lstar, solved = target_lengths(lengths_f, correct, group_index, num_groups, config)
    new_state = LeadState(step=state.step + 1, w_corr_ema=state.w_corr_ema, w_eff_ema=state.w_eff_ema)
    if config.lstar_memory > 0:
        lstar, new_state.memory_ids, new_state.memory_lstar = _remember_targets(
            lstar, solved, group_labels, state, config
        )
    else:
        new_state.memory_ids, new_state.memory_lstar = state.memory_ids, state.memory_lstar
    targets = lstar[group_index]
    r_eff = efficiency_reward(lengths_f, targets, correct, config)

    stats = psi_statistics(r_corr, r_eff, correct, group_index, num_groups, config)
    if config.weighting == "psi":
        target_c, target_e = stats["psi_target_w_corr"], stats["psi_target_w_eff"]
        ema_c = config.beta * state.w_corr_ema + (1 - config.beta) * target_c
        ema_e = config.beta * state.w_eff_ema + (1 - config.beta) * target_e
        w_c = ema_c.clamp(min=config.lambda_min)
    else:
        fixed = config.w_corr if config.weighting == "static" else scheduled_w_corr(state.step, config)
        target_c = torch.tensor(fixed, dtype=dtype, device=r_corr.device)
        target_e = 1 - target_c
        ema_c = ema_e = None
        w_c = target_c
    w_e = 1 - w_c

    adv_corr = group_normalize(r_corr, group_index, num_groups)
    adv_eff = group_normalize(r_eff, group_index, num_groups)
    if config.normalization == "decoupled":
        advantages = w_c * adv_corr + w_e * adv_eff
    else:
        advantages = group_normalize(w_c * r_corr + w_e * r_eff, group_index, num_groups)

    unsolved_rollouts = ~solved[group_index]
    num_unsolved = (~solved).sum().to(dtype)
    scalars = {
        **stats,
        "target_w_corr": target_c,
        "target_w_eff": target_e,
        "w_corr": w_c,
        "w_eff": w_e,
        "w_corr_ema": ema_c if ema_c is not None else torch.tensor(state.w_corr_ema, dtype=dtype),
        "w_eff_ema": ema_e if ema_e is not None else torch.tensor(state.w_eff_ema, dtype=dtype),
        "reward_correctness": r_corr.mean(),
        "reward_efficiency": r_eff.mean(),
        "lstar_mean": lstar.mean(),
        "lstar_mean_solvable": (lstar * solved).sum() / solved.sum(),
        "num_unsolved_prompts": num_unsolved,
        # the sym reward on unsolved prompts is l / bmax: it pays longer attempts (reference behaviour)
        "r_eff_mean_unsolved": (r_eff * unsolved_rollouts).sum() / unsolved_rollouts.sum(),
        # validation flags, fetched with the metrics in one host round trip
        "_bad_lengths": ((lengths_f < 0) | lengths_f.isnan()).any(),
        "_bad_scores": ((r_corr < 0) | (r_corr > 1) | r_corr.isnan()).any(),
    }
    values = torch.stack([v.to(device=r_corr.device, dtype=dtype) for v in scalars.values()]).tolist()
    metrics = dict(zip(scalars.keys(), values))
    if metrics.pop("_bad_lengths"):
        raise ValueError("lengths must be finite and non-negative (found a negative or NaN length)")
    if metrics.pop("_bad_scores"):
        raise ValueError("correctness scores must lie in [0, 1] (found one outside it or NaN)")
    metrics["num_prompts"] = float(num_groups)
    if ema_c is not None:
        new_state.w_corr_ema, new_state.w_eff_ema = metrics["w_corr_ema"], metrics["w_eff_ema"]
    return LeadOutput(
        targets=targets,
        r_corr=r_corr,
        r_eff=r_eff,
        adv_corr=adv_corr,
        adv_eff=adv_eff,
        advantages=advantages,
        w_corr=metrics["w_corr"],
        w_eff=metrics["w_eff"],
        state=new_state,
        metrics=metrics,
    )
