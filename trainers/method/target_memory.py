"""Per-problem targets remembered across steps (``lead.lstar_memory``, beyond the paper).

A length reward that aims at a per-group length (LEAD's L*, ShorterBetter's SOL) records it
through ``RewardBatch.target``; with a ``Recall`` on the batch, that target is first blended with
what was remembered for the same problem, and the batch carries the updated memory out. Pure:
the memory going in is never changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TargetMemory:
    """Remembered targets: sorted int64 problem ``ids`` and their float64 ``lstar``."""

    ids: torch.Tensor
    lstar: torch.Tensor

    @classmethod
    def empty(cls) -> "TargetMemory":
        return cls(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float64))


@dataclass(frozen=True)
class Recall:
    """What blending needs: the memory, each group's problem id (``keys``) and the coefficient ``m``."""

    memory: TargetMemory
    keys: torch.Tensor
    coefficient: float

    def __call__(self, targets: torch.Tensor, solved: torch.Tensor) -> tuple[torch.Tensor, TargetMemory]:
        """``L* <- m L*_prev + (1 - m) L*`` when solved, ``L* <- L*_prev`` when unsolved now but
        solved before. Returns (targets, the new memory); a problem that fills several groups of the
        batch remembers its last group's target."""
        keys, memory = self.keys, self.coefficient
        mem_ids = self.memory.ids.to(keys.device)
        mem_vals = self.memory.lstar.to(device=targets.device, dtype=targets.dtype)
        pos = torch.searchsorted(mem_ids, keys).clamp(max=max(mem_ids.numel() - 1, 0))
        if mem_ids.numel():
            known = mem_ids[pos] == keys
            prev = mem_vals[pos]
        else:
            known = torch.zeros_like(solved)
            prev = torch.zeros_like(targets)
        blended = torch.where(known, memory * prev + (1 - memory) * targets, targets)
        targets = torch.where(solved, blended, torch.where(known, prev, targets))
        # new memory: old entries, overwritten or extended by this batch's solved groups
        remember = solved | known
        all_ids = torch.cat([mem_ids, keys[remember]])
        all_vals = torch.cat([mem_vals, targets[remember]])
        new_ids, inverse = torch.unique(all_ids, return_inverse=True)
        # this batch's entries come after the old ones: keep the last entry of each id
        order = torch.arange(all_ids.numel(), device=all_ids.device)
        latest = torch.full((new_ids.numel(),), -1, dtype=torch.int64, device=all_ids.device)
        latest = latest.scatter_reduce(0, inverse, order, reduce="amax")
        return targets, TargetMemory(new_ids, all_vals[latest])
