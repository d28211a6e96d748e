"""Weightings: how the correctness and length rewards are weighted at each step (a registry;
``lead.weighting.kind`` picks one).

A weighting is registered as its settings model, which computes the step's weights::

    @register_weighting("static")
    class StaticWeighting(Weighting):
        kind: Literal["static"] = "static"
        motion: ClassVar[str] = FIXED          # how w_corr moves: fixed | scheduled | adaptive
        w_corr: float = 0.5

        def weights(self, signals: RewardSignals, step: int, state: dict) -> Weights:
            return fixed_weights(self.w_corr, signals)

A weighting owns its statistics and its state: ``initial_state()`` is what it carries into the
first step (PSI: its two EMAs; a user's weighting: whatever it needs; none by default), and
``weights`` returns the state to carry on (``Weights.state``). The state is saved in every
checkpoint and restored exactly, so a resumed run continues bit for bit. How the weighted rewards
become one advantage is not the weighting's business: ``lead.advantage`` (``trainers.method.advantages``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_serializer, model_validator

from trainers.contract import ADAPTIVE, FIXED, SCHEDULED
from trainers.method.segments import Groups
from trainers.registry import Registry, RegistryError, kind_model
from trainers.settings import Strict


@dataclass(frozen=True)
class RewardSignals:
    """What a weighting sees of one step: float64 rewards (N,), which rollouts are correct, the
    groups, the length reward's range, and the spread of each reward (``reward_spread``)."""

    r_corr: torch.Tensor
    r_eff: torch.Tensor
    correct: torch.Tensor
    groups: Groups
    reward_range: tuple[float, float]
    spread: dict[str, torch.Tensor]  # mu_corr, sigma_corr, mu_eff, sigma_eff (0-d)


@dataclass(frozen=True)
class Weights:
    """One step's weights: the used ``w_corr`` (``w_eff = 1 - w_corr``), the target pair, the
    weighting's state after this step (None: unchanged; 0-d tensors come back as floats) and its
    own statistics (0-d tensors, logged as ``lead/<name>``)."""

    w_corr: torch.Tensor
    target_w_corr: torch.Tensor
    target_w_eff: torch.Tensor
    state: dict[str, Any] | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


MOVED_KEYS = {"normalization": "lead.advantage.kind", "whiten": "lead.advantage.whiten"}  # issue 30


class Weighting(Strict):
    """What every weighting is: settings that turn a step's reward signals, its 0-based step
    number and the state the weighting carries into the step's weights."""

    motion: ClassVar[str]  # trainers.contract: FIXED, SCHEDULED or ADAPTIVE

    @model_validator(mode="before")
    @classmethod
    def _no_moved_keys(cls, data: Any) -> Any:
        moved = [key for key in MOVED_KEYS if isinstance(data, dict) and key in data]
        if moved:
            raise ValueError(f"{moved[0]}: moved to {MOVED_KEYS[moved[0]]} (the advantage estimator is its own setting)")
        return data

    def label(self) -> str:
        """A short name of these settings (a study's variant label)."""
        return self.kind

    @classmethod
    def for_run(cls, settings: dict[str, Any], steps: int) -> dict[str, Any]:
        """Settings that default to something of the run (its ``train.steps``), filled in before
        validation; none by default."""
        return settings

    def initial_state(self) -> dict[str, Any]:
        """The state carried into the first step: numbers or tensors, keyed by name (none by default)."""
        return {}

    def weights(self, signals: RewardSignals, step: int, state: dict[str, Any]) -> Weights:
        raise NotImplementedError


def _fits(name: str, entry: Any) -> None:
    """A weighting is a ``Weighting`` whose ``kind`` defaults to its name and whose ``motion`` is one
    a weighting can have by itself."""
    kind_model(Weighting)(name, entry)
    if getattr(entry, "motion", None) not in (FIXED, SCHEDULED, ADAPTIVE):
        raise RegistryError(f"{name!r}: set motion (a ClassVar) to one of {FIXED}, {SCHEDULED}, {ADAPTIVE}")


WEIGHTINGS: Registry[type[Weighting]] = Registry("weighting", check=_fits)
register_weighting = WEIGHTINGS.register  # class decorator on a Weighting: @register_weighting("psi")


def weighting_settings(data: Any) -> Weighting:
    """A weighting's settings from a mapping (``kind`` picks the registered model; default "psi")."""
    return WEIGHTINGS.settings_of(data, Weighting, "psi")


def fixed_weights(w_corr: float, signals: RewardSignals) -> Weights:
    """``w_c = w_corr``, ``w_e = 1 - w_corr``, the targets the same."""
    like = signals.r_corr
    target_c = torch.tensor(w_corr, dtype=like.dtype, device=like.device)
    return Weights(target_c, target_c, 1 - target_c)


SIGMA_EPS = 1e-8  # inside sqrt of a reward's spread


def reward_spread(r_corr: torch.Tensor, r_eff: torch.Tensor, correct: torch.Tensor, groups: Groups) -> dict[str, torch.Tensor]:
    """Mean and spread of each reward over the batch's groups (0-d tensors).

    Correctness over all rollouts, the length reward over correct rollouts of groups with at least
    one (none: ``mu_e = sigma_e = 0``). With per-group mean ``m_q`` and population variance
    ``v_q``: ``mu = mean_q(m_q)``, ``sigma = sqrt(mean_q(v_q) + popvar_q(m_q) + 1e-8)``.
    """

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
    return {"mu_corr": mu_c, "sigma_corr": sigma_c, "mu_eff": mu_e, "sigma_eff": sigma_e}


@register_weighting("psi")
class PsiWeighting(Weighting):
    """PSI (arXiv 2605.09806): the EMA of PSI's target weights from (0.5, 0.5), ``w_c = max(ema_c, lambda_min)``."""

    kind: Literal["psi"] = "psi"
    motion: ClassVar[str] = ADAPTIVE
    alpha: float = Field(1.0, ge=0.0, description="exponent of the headroom potentials")
    beta: float = Field(0.95, ge=0.0, le=1.0, description="EMA coefficient of the weights")
    lambda_min: float = Field(0.3, ge=0.0, le=1.0, description="floor on the used w_corr")
    eps: float = Field(1e-8, gt=0.0)

    def statistics(self, signals: RewardSignals) -> dict[str, torch.Tensor]:
        """PSI's headroom statistics and target weights (0-d tensors), from ``signals.spread``.

        ``CV_k = sigma_k / (|mu_k| + eps)``, ``CVn_k = CV_k / (CV_c + CV_e + eps)``;
        ``P_c = (1 - clamp(mu_c, 0, 1))^alpha``; with the length reward's range [low, high],
        ``P_e = (1 - (clamp(mu_e, low, high) - low) / (high - low))^alpha`` (LEAD's reward:
        ``(1 - (mu_e + 1) / 2)^alpha``); ``D_k = CVn_k * P_k``, ``w*_k = D_k / (D_c + D_e + eps)``.
        """
        eps, (low, high), spread = self.eps, signals.reward_range, signals.spread
        mu_c, mu_e = spread["mu_corr"], spread["mu_eff"]
        cv_c = spread["sigma_corr"] / (mu_c.abs() + eps)
        cv_e = spread["sigma_eff"] / (mu_e.abs() + eps)
        cv_norm_c = cv_c / (cv_c + cv_e + eps)
        cv_norm_e = cv_e / (cv_c + cv_e + eps)
        potential_c = (1 - mu_c.clamp(0.0, 1.0)) ** self.alpha
        potential_e = (1 - (mu_e.clamp(low, high) - low) / (high - low)) ** self.alpha
        d_c = cv_norm_c * potential_c
        d_e = cv_norm_e * potential_e
        return {
            "cv_corr": cv_c, "cv_norm_corr": cv_norm_c, "potential_corr": potential_c, "d_corr": d_c,
            "psi_target_w_corr": d_c / (d_c + d_e + eps),
            "cv_eff": cv_e, "cv_norm_eff": cv_norm_e, "potential_eff": potential_e, "d_eff": d_e,
            "psi_target_w_eff": d_e / (d_c + d_e + eps),
        }

    def initial_state(self) -> dict[str, Any]:
        """The unfloored EMA weights, from (0.5, 0.5) (the floor applies on use only)."""
        return {"w_corr_ema": 0.5, "w_eff_ema": 0.5}

    def weights(self, signals: RewardSignals, step: int, state: dict[str, Any]) -> Weights:
        stats = self.statistics(signals)
        target_c, target_e = stats["psi_target_w_corr"], stats["psi_target_w_eff"]
        ema_c = self.beta * state["w_corr_ema"] + (1 - self.beta) * target_c
        ema_e = self.beta * state["w_eff_ema"] + (1 - self.beta) * target_e
        emas = {"w_corr_ema": ema_c, "w_eff_ema": ema_e}
        return Weights(ema_c.clamp(min=self.lambda_min), target_c, target_e, emas, {**stats, **emas})


@register_weighting("static")
class StaticWeighting(Weighting):
    """Fixed weights ``w_c = w_corr``, ``w_e = 1 - w_corr``, no floor."""

    kind: Literal["static"] = "static"
    motion: ClassVar[str] = FIXED
    w_corr: float = Field(0.5, ge=0.0, le=1.0, description="static weight of correctness")

    def label(self) -> str:
        return f"wc{self.w_corr:g}"

    def weights(self, signals: RewardSignals, step: int, state: dict[str, Any]) -> Weights:
        return fixed_weights(self.w_corr, signals)


SchedulePoints = list[tuple[int, float]]


@register_weighting("schedule")
class ScheduleWeighting(Weighting):
    """A hand-made curriculum of ``w_corr`` by training step (0-based). With ``points`` (``[[step,
    w_corr], ...]`` from step 0): each value holds from its step until the next point. Otherwise
    ``t = min(step / schedule_steps, 1)``; linear ``w = start + (end - start) t``; cosine
    ``w = end + (start - end) (1 + cos(pi t)) / 2``."""

    kind: Literal["schedule"] = "schedule"
    motion: ClassVar[str] = SCHEDULED
    w_corr_start: float = Field(1.0, ge=0.0, le=1.0)
    w_corr_end: float = Field(0.5, ge=0.0, le=1.0)
    schedule_steps: int | None = Field(None, ge=1, description="None: the run's train.steps")
    schedule_shape: Literal["linear", "cosine"] = "linear"
    points: SchedulePoints | None = Field(
        None, description="piecewise-constant w_corr: [[step, w_corr], ...] from step 0 (replaces start, end, steps, shape)"
    )

    @field_validator("points")
    @classmethod
    def _points_from_step_zero(cls, points: SchedulePoints | None) -> SchedulePoints | None:
        if points is not None:
            steps = [step for step, _ in points]
            if not steps or steps[0] != 0 or any(b <= a for a, b in zip(steps, steps[1:])):
                raise ValueError(f"points start at step 0 and their steps increase, got steps {steps}")
            if any(not 0.0 <= w <= 1.0 for _, w in points):
                raise ValueError(f"every point's w_corr lies in [0, 1], got {[w for _, w in points]}")
        return points

    CURVE: ClassVar[tuple[str, ...]] = ("w_corr_start", "w_corr_end", "schedule_steps", "schedule_shape")

    @model_validator(mode="after")
    def _points_or_curve(self) -> "ScheduleWeighting":
        curve = set(self.CURVE) & self.model_fields_set
        if self.points is not None and curve:
            raise ValueError(f"points: give either points or {', '.join(sorted(curve))}, not both")
        return self

    @model_serializer(mode="wrap")
    def _points_or_curve_only(self, handler) -> dict[str, Any]:
        """A dump holds what the schedule uses: its points, or its curve (so a curve written
        before points existed keeps its config hash)."""
        data = handler(self)
        for key in self.CURVE if self.points is not None else ("points",):
            data.pop(key, None)
        return data

    @classmethod
    def for_run(cls, settings: dict[str, Any], steps: int) -> dict[str, Any]:
        """A curve spans the run unless told otherwise."""
        if settings.get("schedule_steps") is None and settings.get("points") is None:
            return {**settings, "schedule_steps": steps}
        return settings

    def w_corr_at(self, step: int) -> float:
        if self.points is not None:
            return [w for start, w in self.points if start <= step][-1]
        if self.schedule_steps is None:
            raise ValueError("schedule_steps: not set (a TrainConfig sets it to train.steps)")
        t = min(step / self.schedule_steps, 1.0)
        start, end = self.w_corr_start, self.w_corr_end
        if self.schedule_shape == "linear":
            return start + (end - start) * t
        return end + (start - end) * (1 + math.cos(math.pi * t)) / 2

    def label(self) -> str:
        if self.points is not None:
            return f"points{len(self.points)}"
        return f"{self.schedule_shape}{self.w_corr_start:g}-{self.w_corr_end:g}"

    def weights(self, signals: RewardSignals, step: int, state: dict[str, Any]) -> Weights:
        return fixed_weights(self.w_corr_at(step), signals)
