"""An example plugin: a length reward and two weightings of your own, outside the package.

Name this file in a spec (``plugins: [plugins/my_method.py]``, relative to the spec) or a trainer
config, and all three become selectable there: ``reward: {kind: budget_linear, budget: 120}``,
``weighting: {kind: accuracy_gate, threshold: 0.6}`` (no memory) and
``weighting: {kind: accuracy_controller, target: 0.8}`` (state of its own, kept in checkpoints). ``examples/plugin_study.yaml`` runs them
against PSI: ``python -m study.run examples/plugin_study.yaml --smoke-test``.
"""

from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field

from trainers.contract import ADAPTIVE
from trainers.method.rewards import RewardBatch, register_length_reward
from trainers.method.weightings import RewardSignals, Weighting, Weights, register_weighting


@register_length_reward("budget_linear", low=-1.0, high=0.0)
def budget_linear(batch: RewardBatch, *, budget: Annotated[float, Field(gt=0)] = 100.0) -> torch.Tensor:
    """``-min(1, l / budget)``: every token costs the same, up to the budget."""
    return -(batch.lengths / budget).clamp(max=1.0)


@register_weighting("accuracy_gate")
class AccuracyGate(Weighting):
    """Correctness first: ``w_corr = high`` while the batch's mean correctness is below
    ``threshold``, ``low`` once it reaches it (an adaptive weight with no memory)."""

    kind: Literal["accuracy_gate"] = "accuracy_gate"
    motion: ClassVar[str] = ADAPTIVE
    threshold: float = Field(0.6, ge=0.0, le=1.0)
    high: float = Field(0.9, ge=0.0, le=1.0)
    low: float = Field(0.4, ge=0.0, le=1.0)

    def weights(self, signals: RewardSignals, step: int, state: dict[str, Any]) -> Weights:
        accuracy = signals.spread["mu_corr"]
        w_corr = torch.where(accuracy < self.threshold, torch.tensor(self.high, dtype=accuracy.dtype),
                             torch.tensor(self.low, dtype=accuracy.dtype))
        return Weights(w_corr, w_corr, 1 - w_corr, metrics={"gate_open": (accuracy >= self.threshold).to(accuracy.dtype)})


@register_weighting("accuracy_controller")
class AccuracyController(Weighting):
    """An integral controller that moves ``w_corr`` toward a target accuracy: each step
    ``w_corr <- clamp(w_corr + gain (target - batch accuracy), low, high)``, from ``start``. Its
    ``w_corr`` is state of its own: a checkpoint keeps it, so a resumed run continues exactly."""

    kind: Literal["accuracy_controller"] = "accuracy_controller"
    motion: ClassVar[str] = ADAPTIVE
    target: float = Field(0.8, ge=0.0, le=1.0, description="the batch accuracy to hold")
    gain: float = Field(0.5, gt=0.0)
    start: float = Field(0.5, ge=0.0, le=1.0)
    low: float = Field(0.2, ge=0.0, le=1.0)
    high: float = Field(0.95, ge=0.0, le=1.0)

    def initial_state(self) -> dict[str, Any]:
        return {"w_corr": self.start}

    def weights(self, signals: RewardSignals, step: int, state: dict[str, Any]) -> Weights:
        error = self.target - signals.spread["mu_corr"]
        w_corr = (state["w_corr"] + self.gain * error).clamp(self.low, self.high)
        return Weights(w_corr, w_corr, 1 - w_corr, state={"w_corr": w_corr}, metrics={"accuracy_error": error})
