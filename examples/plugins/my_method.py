"""An example plugin: a length reward and a weighting of your own, outside the package.

Name this file in a spec (``plugins: [plugins/my_method.py]``, relative to the spec) or a trainer
config, and both become selectable there: ``reward: {kind: budget_linear, budget: 120}`` and
``weighting: {kind: accuracy_gate, threshold: 0.6}``. ``examples/plugin_study.yaml`` runs them
against PSI: ``python -m study.run examples/plugin_study.yaml --smoke-test``.
"""

from typing import Annotated, ClassVar, Literal

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

    def weights(self, signals: RewardSignals, state) -> Weights:
        accuracy = signals.spread["mu_corr"]
        w_corr = torch.where(accuracy < self.threshold, torch.tensor(self.high, dtype=accuracy.dtype),
                             torch.tensor(self.low, dtype=accuracy.dtype))
        return Weights(w_corr, w_corr, 1 - w_corr, metrics={"gate_open": (accuracy >= self.threshold).to(accuracy.dtype)})
