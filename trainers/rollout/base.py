"""The rollout interface: prompts in, sampled responses out. Engines: transformers now, vLLM later.

An engine samples ``n`` responses for each prompt (token ids, no padding), stops a response at EOS
or at ``max_new_tokens`` and reports which were truncated. Rows are prompt-major: the responses
to prompt ``i`` are rows ``i * n .. i * n + n - 1``. ``seed`` makes a call reproducible on its own,
so a resumed run samples exactly what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 160


@dataclass
class Rollouts:
    response_ids: torch.Tensor  # (B, T) int64, right-padded with the pad id; EOS kept when produced
    lengths: torch.Tensor  # (B,) int64, generated tokens including EOS
    truncated: torch.Tensor  # (B,) bool, stopped by max_new_tokens before EOS

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())


class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams, seed: int) -> Rollouts: ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from ``model``'s current weights (a no-op when it shares them)."""
        ...
