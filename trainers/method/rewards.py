"""Length rewards, as a registry of plain callables with a range.

    from trainers.method.rewards import LENGTH_REWARDS
    fn = LENGTH_REWARDS["kimi"]
    r_len = fn(lengths, correctness, group_ids, **params)   # float64 tensor, shape N, same device
    fn.low, fn.high                                           # the reward's range

Inputs as for ``lead_step``: 1-D tensors of equal length N; a rollout is correct when its
correctness score is above 0.5; group ids are arbitrary integer labels in any order. Every reward
is vectorized over rollouts and groups (segment reductions in ``trainers.method.segments``).

Adding a reward is one function here (or in your own module) and one decorator line::

    @register_length_reward("my_reward", low=-1.0, high=0.0)
    def my_reward(batch: RewardBatch, *, scale: Annotated[float, Field(gt=0)] = 1.0) -> torch.Tensor:
        ...

Its keyword parameters (with their annotations and defaults) become the settings a config
validates under ``lead.length_params``; a parameter named like a ``LeadConfig`` field (``bmax``,
``floor``, ...) takes that field's value instead. A reward that aims at a per-group length
(LEAD's L*, ShorterBetter's SOL) passes it through ``batch.target(...)``, so the trainer can log
it and blend it with earlier visits of the same problem (``lead.lstar_memory``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Callable, Literal

import torch
from pydantic import BaseModel, Field

from trainers.method.segments import Groups
from trainers.method.target_memory import Recall, TargetMemory
from trainers.registry import Registry, settings_model

Aggregator = Literal["mean_correct", "min_correct", "median_correct", "mean_all"]
LstarMode = Literal["sym", "asym", "upper_only"]
Positive = Annotated[float, Field(gt=0.0)]


def check_batch(lengths, correctness, group_ids) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three inputs as tensors, checked for shape and type (ValueError naming the problem)."""
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
    return lengths, correctness, group_ids


@dataclass
class RewardBatch:
    """What a length reward sees: float64 ``lengths``, boolean ``correct``, the ``groups``.

    With ``recall`` (the trainer's L* memory), a per-group target is blended with earlier visits
    before use. Once the reward called ``target``: ``targets`` holds the per-group target it aimed
    at, and ``memory`` the updated memory (``trainers.method.target_memory``)."""

    lengths: torch.Tensor
    correct: torch.Tensor
    groups: Groups
    recall: Recall | None = None
    targets: torch.Tensor | None = field(default=None)
    memory: TargetMemory | None = field(default=None)

    @classmethod
    def of(cls, lengths, correctness, group_ids) -> "RewardBatch":
        lengths, correctness, group_ids = check_batch(lengths, correctness, group_ids)
        return cls(lengths.to(torch.float64), correctness.to(torch.float64) > 0.5, Groups.of(group_ids))

    @cached_property
    def solved(self) -> torch.Tensor:
        """Per group: has at least one correct rollout (computed once per batch)."""
        return self.groups.sum(self.correct.to(torch.int64)) > 0

    def target(self, per_group: torch.Tensor) -> torch.Tensor:
        """Record ``per_group`` (blended through ``recall``, if any) as this batch's targets;
        returns it per rollout."""
        if self.recall is None:
            self.targets = per_group
        else:
            self.targets, self.memory = self.recall(per_group, self.solved)
        return self.targets[self.groups.index]


@dataclass(frozen=True)
class LengthReward:
    """A registered length reward: call it like the function, read its range from ``low`` / ``high``."""

    name: str
    compute: Callable[..., torch.Tensor]  # compute(batch: RewardBatch, **params)
    low: float
    high: float
    params: type[BaseModel]  # the keyword parameters, as a strict pydantic model

    def __call__(self, lengths, correctness, group_ids, **params) -> torch.Tensor:
        return self.compute(RewardBatch.of(lengths, correctness, group_ids), **params)

    @property
    def __doc__(self) -> str | None:  # help(LENGTH_REWARDS[name]) shows the formula
        return self.compute.__doc__


LENGTH_REWARDS: Registry[LengthReward] = Registry("length reward")


def register_length_reward(name: str, *, low: float, high: float):
    """Decorator: register ``fn(batch, **params) -> tensor`` under ``name`` with range [low, high];
    its keyword parameters are its settings (``trainers.registry.settings_model``)."""
    if not low < high:
        raise ValueError(f"length reward {name}: low ({low}) must be below high ({high})")

    def register(fn: Callable[..., torch.Tensor]) -> LengthReward:
        return LENGTH_REWARDS.add(name, LengthReward(name, fn, float(low), float(high), settings_model(name, fn)))

    return register


# --------------------------------------------------------------------------- LEAD's target and reward


def _mean_correct(lengths: torch.Tensor, correct: torch.Tensor, groups: Groups) -> torch.Tensor:
    return groups.mean_popvar(lengths, correct)[1]


def _min_correct(lengths: torch.Tensor, correct: torch.Tensor, groups: Groups) -> torch.Tensor:
    return groups.amin(lengths, correct)


def _median_correct(lengths: torch.Tensor, correct: torch.Tensor, groups: Groups) -> torch.Tensor:
    return groups.median(lengths, correct)


def _mean_all(lengths: torch.Tensor, correct: torch.Tensor, groups: Groups) -> torch.Tensor:
    return groups.mean_popvar(lengths)[1]


# aggregator -> (per-group aggregate, whether it reads correct rollouts only)
AGGREGATORS: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor, Groups], torch.Tensor], bool]] = {
    "mean_correct": (_mean_correct, True),
    "min_correct": (_min_correct, True),
    "median_correct": (_median_correct, True),
    "mean_all": (_mean_all, False),
}


def target_lengths(
    lengths: torch.Tensor, correct: torch.Tensor, groups: Groups, aggregator: str, floor: float, bmax: float
) -> torch.Tensor:
    """LEAD's per-prompt target length ``L*_q``, shape (num_groups,).

    ``L*_q = clamp(agg(q), floor, bmax)``. ``agg`` is the mean (``mean_correct``), min
    (``min_correct``) or median (``median_correct``) of the prompt's correct lengths, and for those
    an unsolved prompt gets ``L*_q = bmax``; ``mean_all`` is the mean of all the prompt's lengths,
    correct or not, so an unsolved prompt gets ``clamp(mean of all its lengths, floor, bmax)`` (the
    authors' release).
    """
    aggregate, over_correct = AGGREGATORS[aggregator]
    lstar = aggregate(lengths, correct, groups).clamp(min=floor, max=bmax)
    if not over_correct:
        return lstar
    solved = groups.sum(correct.to(torch.int64)) > 0
    return torch.where(solved, lstar, torch.full_like(lstar, bmax))


def efficiency_reward(
    lengths: torch.Tensor, targets: torch.Tensor, correct: torch.Tensor, lstar_mode: str, short_guard: float
) -> torch.Tensor:
    """LEAD's efficiency reward of each rollout against its prompt's target ``L*``.

    - ``sym`` (paper): ``max(-1, 1 - |l - L*| / L*)``
    - ``upper_only``: ``max(-1, min(0, 1 - l / L*))``
    - ``asym``: correct: ``0`` if ``l < short_guard`` else ``max(0, 1 - l / L*)``;
      incorrect: ``clamp(1 - l / L*, -1, 0)`` (the release uses ``short_guard = 500``)
    """
    ratio = 1 - lengths / targets
    if lstar_mode == "sym":
        return (1 - (lengths - targets).abs() / targets).clamp(min=-1.0)
    if lstar_mode == "upper_only":
        return ratio.clamp(min=-1.0, max=0.0)
    guarded = lengths < short_guard
    on_correct = torch.where(guarded, torch.zeros_like(ratio), ratio.clamp(min=0.0))
    return torch.where(correct, on_correct, ratio.clamp(min=-1.0, max=0.0))


@register_length_reward("lead", low=-1.0, high=1.0)
def lead(
    batch: RewardBatch,
    *,
    aggregator: Aggregator = "mean_correct",
    lstar_mode: LstarMode = "sym",
    floor: Positive = 1000.0,
    bmax: Positive = 8000.0,
    short_guard: Annotated[float, Field(ge=0.0)] = 0.0,
) -> torch.Tensor:
    """LEAD (arXiv 2605.09806): ``r_eff`` around the per-prompt target ``L*`` (``target_lengths``,
    ``efficiency_reward``); range [-1, 1]."""
    lstar = batch.target(target_lengths(batch.lengths, batch.correct, batch.groups, aggregator, floor, bmax))
    return efficiency_reward(batch.lengths, lstar, batch.correct, lstar_mode, short_guard)


# --------------------------------------------------------------------------- the published baselines


@register_length_reward("shorter_better", low=-1.0, high=0.0)
def shorter_better(batch: RewardBatch, *, bmax: Positive) -> torch.Tensor:
    """ShorterBetter (arXiv 2504.21370): ``r_i = max(-1, -|l_i - SOL_g| / bmax)``.

    ``SOL_g`` is the shortest correct length in group g, or the mean of all its lengths when none
    is correct. The clamp at -1 only acts when ``bmax`` is below the response budget."""
    groups, lengths = batch.groups, batch.lengths
    sol = torch.where(batch.solved, groups.amin(lengths, batch.correct), groups.mean_popvar(lengths)[1])
    return (-(lengths - batch.target(sol)).abs() / bmax).clamp(min=-1.0)


@register_length_reward("kimi", low=-0.5, high=0.5)
def kimi(batch: RewardBatch) -> torch.Tensor:
    """Kimi k1.5 (arXiv 2501.12599): ``lam_i = 0.5 - (l_i - min_g) / (max_g - min_g)`` over all of
    group g's lengths (``lam_i = 0`` when ``max_g = min_g``); correct: ``lam_i``, incorrect:
    ``min(0, lam_i)``."""
    groups, lengths, index = batch.groups, batch.lengths, batch.groups.index
    shortest, longest = groups.amin(lengths)[index], groups.amax(lengths)[index]
    span = longest - shortest
    lam = torch.where(span > 0, 0.5 - (lengths - shortest) / span.clamp(min=torch.finfo(span.dtype).tiny), 0.0)
    return torch.where(batch.correct, lam, lam.clamp(max=0.0))


@register_length_reward("arora_zanette", low=-1.0, high=0.0)
def arora_zanette(batch: RewardBatch) -> torch.Tensor:
    """Arora & Zanette (arXiv 2502.04463): correct: ``-sigmoid(z_i)``, ``z_i = (l_i - mean_g) / std_g``
    over group g's correct lengths (population std; ``z = 0`` when it is 0); incorrect: 0."""
    _, mean, popvar = batch.groups.mean_popvar(batch.lengths, batch.correct)
    index = batch.groups.index
    std = popvar.sqrt()[index]
    z = torch.where(std > 0, (batch.lengths - mean[index]) / std.clamp(min=torch.finfo(std.dtype).tiny), 0.0)
    return torch.where(batch.correct, -torch.sigmoid(z), 0.0)


@register_length_reward("overlong", low=-1.0, high=0.0)
def overlong(batch: RewardBatch, *, max_len: Positive, cache_len: Positive) -> torch.Tensor:
    """DAPO's soft overlong punishment (arXiv 2503.14476): ``0`` if ``l <= max_len - cache_len``;
    ``((max_len - cache_len) - l) / cache_len`` if ``l <= max_len``; ``-1`` beyond."""
    lengths = batch.lengths
    start = max_len - cache_len
    ramp = ((start - lengths) / cache_len).clamp(min=-1.0, max=0.0)
    return torch.where(lengths <= max_len, ramp, -1.0)


@register_length_reward("threshold", low=0.0, high=1.0)
def threshold(batch: RewardBatch, *, threshold: Positive) -> torch.Tensor:
    """The authors' GRPO sweep (``deepscale.py``): ``1[l_i <= threshold]``.

    The release measures length as characters / 4 of prompt plus response; this one counts
    response tokens."""
    return (batch.lengths <= threshold).to(batch.lengths.dtype)
