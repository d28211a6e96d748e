"""The LEAD core: from a batch of rollouts to per-rollout advantages and a pair of reward weights.

Pure tensor math (no Ray, no MLflow, no model). One call per training step::

    out = lead_step(lengths, correctness, group_ids, config=LeadConfig(...), state=None)

Notation: rollout ``i`` has length ``l_i``, correctness score ``c_i`` in [0, 1] (correct when
``c_i > 0.5``) and group ``g(i)`` (its prompt row). Every formula is stated in the docstring of
the function that computes it (LEAD: arXiv 2605.09806).

``lead_step`` runs five stages, each a function here: the length reward (any entry of
``trainers.method.rewards.LENGTH_REWARDS``, LEAD's own by default, with the L* memory going in and out),
the rewards' statistics (``trainers.method.weightings.reward_spread``), the weights (the configured
entry of ``trainers.method.weightings.WEIGHTINGS``, which owns its own statistics and state), the
advantages (the configured entry of ``trainers.method.advantages.ADVANTAGES``) and the metrics.

Everything is vectorized over rollouts and groups (``torch.unique(return_inverse=True)`` plus
segment reductions), runs on the device of its inputs, and synchronizes with the host once, at
the end, to hand back the float weights and metrics (input validation rides on that same sync).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import Field, PrivateAttr, SerializeAsAny, ValidationError, field_validator, model_validator

from trainers.contract import SEARCHED
from trainers.method.advantages import ADVANTAGES, AdvantageSettings, WeightedRewards, group_normalize, masked_whiten
from trainers.method.rewards import LENGTH_REWARDS, Aggregator, LstarMode, RewardBatch, check_batch
from trainers.method.segments import Groups
from trainers.method.target_memory import Recall, TargetMemory
from trainers.registry import first_error
from trainers.settings import Strict
from trainers.method.weightings import (
    PsiWeighting, RewardSignals, ScheduleWeighting, StaticWeighting, Weighting, Weights, reward_spread,
    weighting_settings,
)

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
    "weight_motion",
]


class LeadConfig(Strict):
    """Settings of the length reward, the target length, the weighting and the advantage estimator
    (defaults: the paper's, but the L* floor, 8 tokens for the synthetic task (the paper's R1 runs:
    1000), and ``bmax``, which a run config sets to its largest response budget)."""

    length_reward: str = Field("lead", description="a name in trainers.method.rewards.LENGTH_REWARDS")
    length_params: dict[str, Any] = Field(
        default_factory=dict, description="the reward's own settings (those named like a lead field come from it)"
    )
    weighting: SerializeAsAny[Weighting] = Field(PsiWeighting(), description="kind: a name in trainers.method.weightings.WEIGHTINGS")
    advantage: AdvantageSettings = Field(AdvantageSettings(), description="kind: a name in trainers.method.advantages.ADVANTAGES")
    # target length and LEAD's efficiency reward
    aggregator: Aggregator = "mean_correct"
    lstar_mode: LstarMode = "sym"
    floor: float = Field(8.0, gt=0.0, description="lower clamp of L* (tokens; the paper's R1 runs: 1000)")
    bmax: float | None = Field(None, gt=0.0, description="upper clamp of L*, and L* of unsolved prompts (tokens); "
                               "None: the run's largest response budget (a TrainConfig fills it in)")
    short_guard: float = Field(0.0, ge=0.0, description="asym: correct rollouts shorter than this get 0")
    lstar_memory: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="beyond the paper: EMA coefficient blending a reward's per-group target from earlier "
        "visits of the same problem id into the current estimate; 0 disables the memory",
    )
    _reward_params: dict[str, Any] = PrivateAttr(default_factory=dict)

    _weighting_by_kind = field_validator("weighting", mode="wrap")(lambda value, handler: weighting_settings(value))

    @model_validator(mode="after")
    def _consistent(self) -> "LeadConfig":
        if self.bmax is None:
            raise ValueError("bmax: not set (a run config sets it to its largest response budget; alone, give it)")
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
            raise ValueError(f"{first_error(exc, 'length_params')} (length reward {self.length_reward})") from None
        self._reward_params = params.model_dump()
        return self

    @property
    def reward_params(self) -> dict[str, Any]:
        """Every parameter of the chosen length reward, resolved and validated."""
        return dict(self._reward_params)


@dataclass
class LeadState:
    """What a run carries from one step to the next: the step, the weighting's own state (None:
    its ``initial_state()``; PSI: its unfloored EMA weights) and, when ``lstar_memory > 0``, the
    remembered targets (``memory_ids``, sorted int64 problem ids, and ``memory_lstar``).
    """

    step: int = 0
    weighting: dict[str, Any] | None = None
    memory_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    memory_lstar: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "weighting": {key: _detached(value) for key, value in (self.weighting or {}).items()},
            "memory_ids": _detached(self.memory_ids),
            "memory_lstar": _detached(self.memory_lstar),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "LeadState":
        return cls(
            step=int(state["step"]),
            weighting={key: _detached(value) for key, value in state["weighting"].items()},
            memory_ids=torch.as_tensor(state["memory_ids"], dtype=torch.int64).clone(),
            memory_lstar=torch.as_tensor(state["memory_lstar"], dtype=torch.float64).clone(),
        )


def _detached(value: Any) -> Any:
    """A state value as a checkpoint holds it: a tensor detached, on the CPU, copied; else as it is."""
    return value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value


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


def weight_motion(lead: "LeadConfig", searched: bool = False) -> str:
    """How a run's ``w_corr`` moves (``trainers.contract.MOTIONS``): ``searched`` for a population
    member (PBT / PB2 move it), else its weighting's own motion (fixed, scheduled or adaptive)."""
    return SEARCHED if searched else type(lead.weighting).motion


# --------------------------------------------------------------------------- the stages


def length_reward(
    config: LeadConfig, batch: RewardBatch, memory: TargetMemory, problem_ids: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, TargetMemory]:
    """Stage 1: ``r_len = LENGTH_REWARDS[config.length_reward](batch, **config.reward_params)``.

    Returns the reward, the per-group target it aimed at (None if it aims at none) and the target
    memory after this batch. With ``lstar_memory > 0`` a target is blended with earlier visits of
    the same problem (``problem_ids``, one per rollout; default: the group ids)."""
    if config.lstar_memory > 0:
        groups, keys = batch.groups, batch.groups.labels
        if problem_ids is not None:
            per_rollout = torch.as_tensor(problem_ids, device=groups.index.device).to(torch.int64)
            keys = torch.zeros_like(keys).scatter(0, groups.index, per_rollout)
        batch.recall = Recall(memory, keys, config.lstar_memory)
    r_eff = LENGTH_REWARDS[config.length_reward].compute(batch, **config.reward_params)
    return r_eff, batch.targets, batch.memory if batch.memory is not None else memory


def combine(config: LeadConfig, signals: RewardSignals, chosen: Weights) -> tuple[WeightedRewards, torch.Tensor]:
    """Stage 4: group-normalize both rewards, then make the advantages with the chosen weights
    (``w_e = 1 - w_c``) and ``ADVANTAGES[config.advantage.kind]``."""
    weighted = WeightedRewards(
        signals.r_corr, signals.r_eff, group_normalize(signals.r_corr, signals.groups),
        group_normalize(signals.r_eff, signals.groups), chosen.w_corr, 1 - chosen.w_corr, signals.groups,
    )
    return weighted, ADVANTAGES[config.advantage.kind](weighted)


STATE_PREFIX = "_state/"  # a weighting's 0-d state tensors ride the metrics' host round trip under this prefix


def step_metrics(
    signals: RewardSignals, chosen: Weights, lengths: torch.Tensor, solved: torch.Tensor, lstar: torch.Tensor | None,
) -> tuple[dict[str, float], dict[str, Any] | None]:
    """Stage 5: every 0-d statistic of the step as floats, and the weighting's new state (its 0-d
    tensors as floats), in one host round trip (which also carries the input checks: negative or
    NaN lengths, scores outside [0, 1])."""
    r_corr, r_eff, groups = signals.r_corr, signals.r_eff, signals.groups
    dtype = r_corr.dtype
    unsolved_rollouts = ~solved[groups.index]
    nan = torch.tensor(math.nan, dtype=dtype, device=r_corr.device)
    synced = {key: value for key, value in (chosen.state or {}).items() if isinstance(value, torch.Tensor) and value.ndim == 0}
    scalars = {
        **signals.spread,
        **chosen.metrics,
        "target_w_corr": chosen.target_w_corr,
        "target_w_eff": chosen.target_w_eff,
        "w_corr": chosen.w_corr,
        "w_eff": 1 - chosen.w_corr,
        "reward_correctness": r_corr.mean(),
        "reward_efficiency": r_eff.mean(),
        "lstar_mean": lstar.mean() if lstar is not None else nan,
        "lstar_mean_solvable": (lstar * solved).sum() / solved.sum() if lstar is not None else nan,
        "num_unsolved_prompts": (~solved).sum().to(dtype),
        # LEAD's sym reward on unsolved prompts is l / bmax: it pays longer attempts (reference behaviour)
        "r_eff_mean_unsolved": (r_eff * unsolved_rollouts).sum() / unsolved_rollouts.sum(),
        # validation flags, fetched with the metrics in one host round trip
        "_bad_lengths": ((lengths < 0) | lengths.isnan()).any(),
        "_bad_scores": ((r_corr < 0) | (r_corr > 1) | r_corr.isnan()).any(),
        **{STATE_PREFIX + key: value for key, value in synced.items()},
    }
    values = torch.stack([v.to(device=r_corr.device, dtype=dtype) for v in scalars.values()]).tolist()
    metrics = dict(zip(scalars.keys(), values))
    if metrics.pop("_bad_lengths"):
        raise ValueError("lengths must be finite and non-negative (found a negative or NaN length)")
    if metrics.pop("_bad_scores"):
        raise ValueError("correctness scores must lie in [0, 1] (found one outside it or NaN)")
    metrics["num_prompts"] = float(groups.num_groups)
    state = None if chosen.state is None else {**chosen.state, **{key: metrics.pop(STATE_PREFIX + key) for key in synced}}
    return metrics, state


def lead_step(
    lengths: torch.Tensor,
    correctness: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    config: LeadConfig,
    state: LeadState | None = None,
    problem_ids: torch.Tensor | None = None,
) -> LeadOutput:
    """One LEAD step: length reward, statistics, weights, advantages, metrics.

    ``lengths`` (tokens), ``correctness`` (scores in [0, 1], correct when > 0.5) and ``group_ids``
    (int64 labels, any values, any order; one group per prompt row of the batch) are 1-D tensors of
    equal length N. ``problem_ids`` (default: ``group_ids``) keys the target memory, so a problem
    drawn twice in a batch forms two groups but shares one remembered target.

    The weights come from ``config.weighting`` (PSI's statistics use the reward's range for the
    efficiency potential), the advantages from ``config.advantage`` (``decoupled``:
    ``A = w_c * norm_g(r_corr) + w_e * norm_g(r_len)``; ``combined``: ``A = norm_g(w_c * r_corr + w_e * r_len)``).
    """
    state = state if state is not None else LeadState()
    lengths, correctness, group_ids = check_batch(lengths, correctness, group_ids)
    r_corr = correctness.to(torch.float64)
    batch = RewardBatch(lengths.to(torch.float64), r_corr > 0.5, Groups.of(group_ids))
    r_eff, lstar, memory = length_reward(config, batch, TargetMemory(state.memory_ids, state.memory_lstar), problem_ids)
    reward = LENGTH_REWARDS[config.length_reward]
    spread = reward_spread(r_corr, r_eff, batch.correct, batch.groups)  # stage 2
    signals = RewardSignals(r_corr, r_eff, batch.correct, batch.groups, (reward.low, reward.high), spread)
    carried = state.weighting if state.weighting is not None else config.weighting.initial_state()
    chosen = config.weighting.weights(signals, state.step, carried)  # stage 3
    weighted, advantages = combine(config, signals, chosen)
    metrics, weighting_state = step_metrics(signals, chosen, batch.lengths, batch.solved, lstar)
    new_state = LeadState(step=state.step + 1, weighting=carried if weighting_state is None else weighting_state,
                          memory_ids=memory.ids, memory_lstar=memory.lstar)
    return LeadOutput(
        targets=lstar[batch.groups.index] if lstar is not None else None,
        r_corr=r_corr,
        r_eff=r_eff,
        adv_corr=weighted.adv_corr,
        adv_eff=weighted.adv_eff,
        advantages=advantages,
        w_corr=metrics["w_corr"],
        w_eff=metrics["w_eff"],
        state=new_state,
        metrics=metrics,
    )
