"""The LEAD core: from a batch of rollouts to per-rollout advantages and a pair of reward weights.

Pure tensor math (no Ray, no MLflow, no model). One call per training step::

    out = lead_step(lengths, correctness, group_ids, config=LeadConfig(...), state=None)

Notation: rollout ``i`` has length ``l_i``, correctness score ``c_i`` in [0, 1] (correct when
``c_i > 0.5``) and group ``g(i)`` (its prompt row). Every formula is stated in
``shared/spec/LEAD.md`` and repeated in the docstring of the function that computes it.

The length reward is any entry of ``trainers.rewards.LENGTH_REWARDS`` (LEAD's own by default);
the weighting is one member of a tagged union (``PsiWeighting | StaticWeighting |
ScheduleWeighting``), each carrying how the two rewards are normalized and combined.

Everything is vectorized over rollouts and groups (``torch.unique(return_inverse=True)`` plus
segment reductions), runs on the device of its inputs, and synchronizes with the host once, at
the end, to hand back the float weights and metrics (input validation rides on that same sync).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field, PrivateAttr, ValidationError, model_validator

from trainers.contract import ADAPTIVE, FIXED, SCHEDULED, SEARCHED
from trainers.rewards import LENGTH_REWARDS, Aggregator, LstarMode, RewardBatch, check_batch
from trainers.segments import Groups
from trainers.strict import Strict

__all__ = [
    "LeadConfig",
    "LeadState",
    "LeadOutput",
    "PsiWeighting",
    "StaticWeighting",
    "ScheduleWeighting",
    "lead_step",
    "masked_whiten",
    "group_normalize",
    "psi_statistics",
]

GROUP_STD_EPS = 1e-6  # GRPO outcome-advantage epsilon: (r - mean) / (std + 1e-6)
SIGMA_EPS = 1e-8  # inside sqrt of the PSI spread
WHITEN_EPS = 1e-8  # inside sqrt of the token whitening variance


@dataclass(frozen=True)
class Weights:
    """One step's weights: the used pair, the target, and the EMA state to carry (None: unchanged)."""

    w_corr: torch.Tensor
    target_w_corr: torch.Tensor
    target_w_eff: torch.Tensor
    ema: tuple[torch.Tensor, torch.Tensor] | None = None


class _Combination(Strict):
    """How the two rewards become one advantage, shared by every weighting.

    ``decoupled`` (normalize-then-combine, LEAD): ``A = w_c norm_g(r_corr) + w_e norm_g(r_len)``;
    ``combined`` (combine-then-normalize, the GRPO baseline): ``A = norm_g(w_c r_corr + w_e r_len)``.
    ``whiten``: whiten the token advantages over the batch's response tokens (LEAD does; the
    release's GRPO estimator does not)."""

    normalization: Literal["decoupled", "combined"] = "decoupled"
    whiten: bool = True


class PsiWeighting(_Combination):
    """PSI: the EMA of PSI's target weights from (0.5, 0.5), ``w_c = max(ema_c, lambda_min)``."""

    kind: Literal["psi"] = "psi"
    motion: ClassVar[str] = ADAPTIVE
    alpha: float = Field(1.0, ge=0.0, description="exponent of the headroom potentials")
    beta: float = Field(0.95, ge=0.0, le=1.0, description="EMA coefficient of the weights")
    lambda_min: float = Field(0.3, ge=0.0, le=1.0, description="floor on the used w_corr")
    eps: float = Field(1e-8, gt=0.0)

    def weights(self, stats: dict[str, torch.Tensor], state: "LeadState") -> Weights:
        target_c, target_e = stats["psi_target_w_corr"], stats["psi_target_w_eff"]
        ema_c = self.beta * state.w_corr_ema + (1 - self.beta) * target_c
        ema_e = self.beta * state.w_eff_ema + (1 - self.beta) * target_e
        return Weights(ema_c.clamp(min=self.lambda_min), target_c, target_e, (ema_c, ema_e))


class StaticWeighting(_Combination):
    """Fixed weights ``w_c = w_corr``, ``w_e = 1 - w_corr``, no floor."""

    kind: Literal["static"] = "static"
    motion: ClassVar[str] = FIXED
    w_corr: float = Field(0.5, ge=0.0, le=1.0, description="static weight of correctness")

    def weights(self, stats: dict[str, torch.Tensor], state: "LeadState") -> Weights:
        return _fixed(self.w_corr, stats)


class ScheduleWeighting(_Combination):
    """A hand-made curriculum: ``t = min(step / schedule_steps, 1)``;
    linear ``w = start + (end - start) t``; cosine ``w = end + (start - end) (1 + cos(pi t)) / 2``."""

    kind: Literal["schedule"] = "schedule"
    motion: ClassVar[str] = SCHEDULED
    w_corr_start: float = Field(1.0, ge=0.0, le=1.0)
    w_corr_end: float = Field(0.5, ge=0.0, le=1.0)
    schedule_steps: int = Field(100, ge=1)
    schedule_shape: Literal["linear", "cosine"] = "linear"

    def w_corr_at(self, step: int) -> float:
        t = min(step / self.schedule_steps, 1.0)
        start, end = self.w_corr_start, self.w_corr_end
        if self.schedule_shape == "linear":
            return start + (end - start) * t
        return end + (start - end) * (1 + math.cos(math.pi * t)) / 2

    def weights(self, stats: dict[str, torch.Tensor], state: "LeadState") -> Weights:
        return _fixed(self.w_corr_at(state.step), stats)


def _fixed(w_corr: float, stats: dict[str, torch.Tensor]) -> Weights:
    like = stats["mu_corr"]
    target_c = torch.tensor(w_corr, dtype=like.dtype, device=like.device)
    return Weights(target_c, target_c, 1 - target_c)


Weighting = Annotated[PsiWeighting | StaticWeighting | ScheduleWeighting, Field(discriminator="kind")]
WEIGHTING_KINDS = ("psi", "static", "schedule")


def weight_motion(lead: "LeadConfig", searched: bool = False) -> str:
    """How a run's ``w_corr`` moves (``trainers.contract.MOTIONS``): ``searched`` for a population
    member (PBT / PB2 move it), else its weighting's own motion (fixed, scheduled or adaptive)."""
    return SEARCHED if searched else type(lead.weighting).motion
_LEGACY_WEIGHTING_KEYS = {  # flat keys of configs written before the weighting union, by kind
    "psi": ("alpha", "beta", "lambda_min", "eps"),
    "static": ("w_corr",),
    "schedule": ("w_corr_start", "w_corr_end", "schedule_steps", "schedule_shape"),
}


class LeadConfig(Strict):
    """Settings of the length reward, the target length and the weighting (defaults: the paper's)."""

    length_reward: str = Field("lead", description="a name in trainers.rewards.LENGTH_REWARDS")
    length_params: dict[str, Any] = Field(
        default_factory=dict, description="the reward's own settings (those named like a lead field come from it)"
    )
    weighting: Weighting = PsiWeighting()
    # target length and LEAD's efficiency reward
    aggregator: Aggregator = "mean_correct"
    lstar_mode: LstarMode = "sym"
    floor: float = Field(1000.0, gt=0.0, description="lower clamp of L* (tokens)")
    bmax: float = Field(8000.0, gt=0.0, description="upper clamp of L*, and L* of unsolved prompts")
    short_guard: float = Field(0.0, ge=0.0, description="asym: correct rollouts shorter than this get 0")
    lstar_memory: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="beyond the paper: EMA coefficient blending a reward's per-group target from earlier "
        "visits of the same problem id into the current estimate; 0 disables the memory",
    )
    _reward_params: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _legacy_flat_weighting(cls, data: Any) -> Any:
        """Configs written before the weighting union (``weighting: psi``, ``w_corr: 0.5``,
        ``normalization: combined`` at this level) still load: the keys of their kind move into
        ``weighting``, the others are dropped."""
        if not isinstance(data, dict):
            return data
        flat = {"normalization", *(key for keys in _LEGACY_WEIGHTING_KEYS.values() for key in keys)}
        if not isinstance(data.get("weighting"), str) and ("weighting" in data or not flat & data.keys()):
            return data
        data = dict(data)
        kind = data.pop("weighting", "psi")
        weighting = {"kind": kind}
        if "normalization" in data:
            weighting["normalization"] = data.pop("normalization")
        for flat_kind, keys in _LEGACY_WEIGHTING_KEYS.items():
            for key in keys:
                if key in data:
                    value = data.pop(key)
                    if flat_kind == kind:
                        weighting[key] = value
        return {**data, "weighting": weighting}

    @model_validator(mode="after")
    def _consistent(self) -> "LeadConfig":
        if self.floor > self.bmax:
            raise ValueError(f"floor ({self.floor}) must not exceed bmax ({self.bmax})")
        if self.length_reward not in LENGTH_REWARDS:
            raise ValueError(f"length_reward: {LENGTH_REWARDS.unknown(self.length_reward)}")
        reward = LENGTH_REWARDS[self.length_reward]
        shared = [key for key in self.length_params if key in type(self).model_fields]
        if shared:
            raise ValueError(f"length_params.{shared[0]}: set it as lead.{shared[0]}")
        own = {k: getattr(self, k) for k in reward.params.model_fields if k in type(self).model_fields}
        try:
            params = reward.params.model_validate({**own, **self.length_params})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
            raise ValueError(f"length_params.{where}: {message} (length reward {self.length_reward})") from None
        self._reward_params = params.model_dump()
        return self

    @property
    def reward_params(self) -> dict[str, Any]:
        """Every parameter of the chosen length reward, resolved and validated."""
        return dict(self._reward_params)


@dataclass
class LeadState:
    """Controller state carried from one step to the next.

    ``w_corr_ema`` / ``w_eff_ema`` are the unfloored EMA weights (the floor is applied on use
    only). ``memory_ids`` (sorted int64 problem ids) / ``memory_lstar`` hold remembered targets
    when ``lstar_memory > 0``.
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

    targets: torch.Tensor | None  # the reward's per-prompt target of each rollout (L*), None if it has none
    r_corr: torch.Tensor  # correctness reward (the scores)
    r_eff: torch.Tensor  # the length reward (LEAD's efficiency reward by default)
    adv_corr: torch.Tensor  # group-normalized correctness reward
    adv_eff: torch.Tensor  # group-normalized length reward
    advantages: torch.Tensor  # combined per-rollout advantage, before token whitening
    w_corr: float
    w_eff: float
    state: LeadState
    metrics: dict[str, float]


# --------------------------------------------------------------------------- the formulas


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


def psi_statistics(
    r_corr: torch.Tensor,
    r_eff: torch.Tensor,
    correct: torch.Tensor,
    groups: Groups,
    reward_range: tuple[float, float] = (-1.0, 1.0),
    psi: PsiWeighting = PsiWeighting(),
) -> dict[str, torch.Tensor]:
    """PSI's spread-and-headroom statistics and target weights (0-d tensors).

    Correctness over all rollouts, efficiency over correct rollouts of groups with at least one
    (none: ``mu_e = sigma_e = 0``). With per-group mean ``m_q`` and population variance ``v_q``:
    ``mu = mean_q(m_q)``, ``sigma = sqrt(mean_q(v_q) + popvar_q(m_q) + 1e-8)``;
    ``CV_k = sigma_k / (|mu_k| + eps)``, ``CVn_k = CV_k / (CV_c + CV_e + eps)``;
    ``P_c = (1 - clamp(mu_c, 0, 1))^alpha``; with the length reward's range [low, high],
    ``P_e = (1 - (clamp(mu_e, low, high) - low) / (high - low))^alpha`` (LEAD's reward:
    ``(1 - (mu_e + 1) / 2)^alpha``); ``D_k = CVn_k * P_k``, ``w*_k = D_k / (D_c + D_e + eps)``.
    """
    eps = psi.eps
    low, high = reward_range

    def spread(values: torch.Tensor, include: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        count, mean, popvar = groups.mean_popvar(values, include)
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

    mu_c, sigma_c = spread(r_corr, None)
    mu_e, sigma_e = spread(r_eff, correct)
    cv_c = sigma_c / (mu_c.abs() + eps)
    cv_e = sigma_e / (mu_e.abs() + eps)
    cv_norm_c = cv_c / (cv_c + cv_e + eps)
    cv_norm_e = cv_e / (cv_c + cv_e + eps)
    potential_c = (1 - mu_c.clamp(0.0, 1.0)) ** psi.alpha
    potential_e = (1 - (mu_e.clamp(low, high) - low) / (high - low)) ** psi.alpha
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
    targets: torch.Tensor, solved: torch.Tensor, problem_ids: torch.Tensor, state: LeadState, memory: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blend per-group targets remembered for the same problem id: ``L* <- m L*_prev + (1 - m) L*``
    when solved, ``L* <- L*_prev`` when unsolved now but solved before. Returns (targets, new ids,
    new values); a problem that fills several groups of the batch remembers its last group's target."""
    mem_ids = state.memory_ids.to(problem_ids.device)
    mem_vals = state.memory_lstar.to(device=targets.device, dtype=targets.dtype)
    pos = torch.searchsorted(mem_ids, problem_ids).clamp(max=max(mem_ids.numel() - 1, 0))
    if mem_ids.numel():
        known = mem_ids[pos] == problem_ids
        prev = mem_vals[pos]
    else:
        known = torch.zeros_like(solved)
        prev = torch.zeros_like(targets)
    blended = torch.where(known, memory * prev + (1 - memory) * targets, targets)
    targets = torch.where(solved, blended, torch.where(known, prev, targets))
    # new memory: old entries, overwritten or extended by this batch's solved groups
    remember = solved | known
    all_ids = torch.cat([mem_ids, problem_ids[remember]])
    all_vals = torch.cat([mem_vals, targets[remember]])
    new_ids, inverse = torch.unique(all_ids, return_inverse=True)
    # this batch's entries come after the old ones: keep the last entry of each id
    order = torch.arange(all_ids.numel(), device=all_ids.device)
    latest = torch.full((new_ids.numel(),), -1, dtype=torch.int64, device=all_ids.device)
    latest = latest.scatter_reduce(0, inverse, order, reduce="amax")
    return targets, new_ids, all_vals[latest]


def lead_step(
    lengths: torch.Tensor,
    correctness: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    config: LeadConfig,
    state: LeadState | None = None,
    problem_ids: torch.Tensor | None = None,
) -> LeadOutput:
    """One LEAD step: length reward, group-normalized advantages and weights.

    ``lengths`` (tokens), ``correctness`` (scores in [0, 1], correct when > 0.5) and ``group_ids``
    (int64 labels, any values, any order; one group per prompt row of the batch) are 1-D tensors of
    equal length N. ``problem_ids`` (default: ``group_ids``) keys the target memory, so a problem
    drawn twice in a batch forms two groups but shares one remembered target.

    ``r_len = LENGTH_REWARDS[config.length_reward](..., **config.reward_params)``;
    ``decoupled``: ``A = w_c * norm_g(r_corr) + w_e * norm_g(r_len)``;
    ``combined``: ``A = norm_g(w_c * r_corr + w_e * r_len)``. The weights come from
    ``config.weighting`` (PSI's statistics use the reward's range for the efficiency potential).
    """
    state = state if state is not None else LeadState()
    lengths, correctness, group_ids = check_batch(lengths, correctness, group_ids)
    dtype = torch.float64
    r_corr = correctness.to(dtype)
    batch = RewardBatch(lengths.to(dtype), r_corr > 0.5, Groups.of(group_ids))
    groups, correct = batch.groups, batch.correct
    new_state = LeadState(step=state.step + 1, w_corr_ema=state.w_corr_ema, w_eff_ema=state.w_eff_ema)
    new_state.memory_ids, new_state.memory_lstar = state.memory_ids, state.memory_lstar
    if config.lstar_memory > 0:
        keys = group_ids if problem_ids is None else torch.as_tensor(problem_ids, device=group_ids.device)
        per_group_keys = torch.zeros(groups.num_groups, dtype=torch.int64, device=keys.device)
        per_group_keys = per_group_keys.scatter(0, groups.index, keys.to(torch.int64))

        def blend(per_group: torch.Tensor, solved: torch.Tensor) -> torch.Tensor:
            blended, new_state.memory_ids, new_state.memory_lstar = _remember_targets(
                per_group, solved, per_group_keys, state, config.lstar_memory
            )
            return blended

        batch.blend = blend
    reward = LENGTH_REWARDS[config.length_reward]
    r_eff = reward.compute(batch, **config.reward_params)

    weighting = config.weighting
    psi = weighting if isinstance(weighting, PsiWeighting) else PsiWeighting()
    stats = psi_statistics(r_corr, r_eff, correct, groups, (reward.low, reward.high), psi)
    chosen = weighting.weights(stats, state)
    w_c = chosen.w_corr
    w_e = 1 - w_c

    adv_corr = group_normalize(r_corr, groups)
    adv_eff = group_normalize(r_eff, groups)
    if weighting.normalization == "decoupled":
        advantages = w_c * adv_corr + w_e * adv_eff
    else:
        advantages = group_normalize(w_c * r_corr + w_e * r_eff, groups)

    solved = batch.solved
    unsolved_rollouts = ~solved[groups.index]
    nan = torch.tensor(math.nan, dtype=dtype, device=r_corr.device)
    lstar = batch.targets
    ema_c, ema_e = chosen.ema or (torch.tensor(state.w_corr_ema, dtype=dtype), torch.tensor(state.w_eff_ema, dtype=dtype))
    scalars = {
        **stats,
        "target_w_corr": chosen.target_w_corr,
        "target_w_eff": chosen.target_w_eff,
        "w_corr": w_c,
        "w_eff": w_e,
        "w_corr_ema": ema_c,
        "w_eff_ema": ema_e,
        "reward_correctness": r_corr.mean(),
        "reward_efficiency": r_eff.mean(),
        "lstar_mean": lstar.mean() if lstar is not None else nan,
        "lstar_mean_solvable": (lstar * solved).sum() / solved.sum() if lstar is not None else nan,
        "num_unsolved_prompts": (~solved).sum().to(dtype),
        # LEAD's sym reward on unsolved prompts is l / bmax: it pays longer attempts (reference behaviour)
        "r_eff_mean_unsolved": (r_eff * unsolved_rollouts).sum() / unsolved_rollouts.sum(),
        # validation flags, fetched with the metrics in one host round trip
        "_bad_lengths": ((batch.lengths < 0) | batch.lengths.isnan()).any(),
        "_bad_scores": ((r_corr < 0) | (r_corr > 1) | r_corr.isnan()).any(),
    }
    values = torch.stack([v.to(device=r_corr.device, dtype=dtype) for v in scalars.values()]).tolist()
    metrics = dict(zip(scalars.keys(), values))
    if metrics.pop("_bad_lengths"):
        raise ValueError("lengths must be finite and non-negative (found a negative or NaN length)")
    if metrics.pop("_bad_scores"):
        raise ValueError("correctness scores must lie in [0, 1] (found one outside it or NaN)")
    metrics["num_prompts"] = float(groups.num_groups)
    if chosen.ema is not None:
        new_state.w_corr_ema, new_state.w_eff_ema = metrics["w_corr_ema"], metrics["w_eff_ema"]
    return LeadOutput(
        targets=lstar[groups.index] if lstar is not None else None,
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
