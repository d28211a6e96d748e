"""Segment reductions: per-group statistics of per-rollout values, without a loop over groups.

A batch's group ids are arbitrary int64 labels in any order; ``Groups.of(group_ids)`` maps them to
contiguous indices ``[0, num_groups)`` once (``torch.unique(return_inverse=True)``), and every
reduction here takes that index. Everything runs on the device of its inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Groups:
    """The group structure of a batch: ``labels`` (sorted unique ids) and each rollout's ``index``."""

    labels: torch.Tensor  # (num_groups,) int64
    index: torch.Tensor  # (N,) int64 in [0, num_groups)

    @classmethod
    def of(cls, group_ids: torch.Tensor) -> "Groups":
        labels, index = torch.unique(group_ids.to(torch.int64), return_inverse=True)
        return cls(labels, index)

    @property
    def num_groups(self) -> int:
        return self.labels.numel()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Per-group sum of ``values``."""
        out = torch.zeros(self.num_groups, dtype=values.dtype, device=values.device)
        return out.index_add_(0, self.index, values)

    def size(self) -> torch.Tensor:
        """Rollouts per group (int64)."""
        return torch.bincount(self.index, minlength=self.num_groups)

    def mean_popvar(
        self, values: torch.Tensor, include: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-group count, mean and population variance over the rollouts in ``include`` (all if None).

        A group with nothing included has count 0, mean 0 and variance 0."""
        weight = torch.ones_like(values) if include is None else include.to(values.dtype)
        count = self.sum(weight)
        safe = count.clamp(min=1.0)
        mean = self.sum(values * weight) / safe
        dev = (values - mean[self.index]) * weight
        return count, mean, self.sum(dev * dev) / safe

    def amin(self, values: torch.Tensor, include: torch.Tensor | None = None) -> torch.Tensor:
        """Per-group minimum over included rollouts (``+inf`` where nothing is included)."""
        return self._extreme(values, include, "amin", math.inf)

    def amax(self, values: torch.Tensor, include: torch.Tensor | None = None) -> torch.Tensor:
        """Per-group maximum over included rollouts (``-inf`` where nothing is included)."""
        return self._extreme(values, include, "amax", -math.inf)

    def _extreme(self, values: torch.Tensor, include: torch.Tensor | None, reduce: str, empty: float) -> torch.Tensor:
        if include is not None:
            values = torch.where(include, values, torch.full_like(values, empty))
        out = torch.full((self.num_groups,), empty, dtype=values.dtype, device=values.device)
        return out.scatter_reduce(0, self.index, values, reduce=reduce, include_self=True)

    def median(self, values: torch.Tensor, include: torch.Tensor) -> torch.Tensor:
        """Median of ``values`` over included rollouts of each group (mean of the middle two when even).

        Sort-based: order by (group, value) with excluded rollouts last in their group, then read the
        middle of each group's included run. Groups with nothing included give an arbitrary value.
        """
        keyed = torch.where(include, values, torch.full_like(values, math.inf))
        by_value = torch.argsort(keyed, stable=True)
        by_group = torch.argsort(self.index[by_value], stable=True)
        sorted_values = keyed[by_value[by_group]]
        sizes = self.size()
        starts = torch.cumsum(sizes, 0) - sizes
        count = self.sum(include.to(torch.int64))
        last = sorted_values.numel() - 1
        lo = (starts + (count - 1).clamp(min=0) // 2).clamp(max=last)
        hi = (starts + count // 2).clamp(max=last)
        return (sorted_values[lo] + sorted_values[hi]) / 2
