"""The rollout interface: prompts in, sampled responses out (engines: ``hf``, ``vllm``).

An engine samples ``n`` responses for each prompt (token ids, no padding), stops a response at EOS
or at ``max_new_tokens`` and reports which were truncated, and the sampler's log-probability of
every token it drew (under the distribution it drew from: temperature and top-p applied). Rows are
prompt-major: the responses to prompt ``i`` are rows ``i * n .. i * n + n - 1``. ``seed`` makes a
call reproducible on its own, so a resumed run samples exactly what an uninterrupted one would
(bit for bit with ``hf``; vLLM promises the same samples for the same seed and weights, but its
kernels and batching make that weaker).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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
    logprobs: torch.Tensor  # (B, T) float32, the sampler's log-probability of each drawn token (0 after the end)

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())


@dataclass(frozen=True)
class EngineSpec:
    """What an engine may need besides the trainer's model: an engine with weights of its own
    (vLLM) loads them from ``model_path`` and then follows ``sync_weights``."""

    model_path: Path
    max_model_len: int  # longest prompt + largest budget
    dtype: str = "float32"  # float32 | bfloat16
    seed: int = 0
    gpu_memory_utilization: float = 0.4  # vLLM on a GPU: its share of memory (weights + KV cache)
    options: dict = field(default_factory=dict)  # rollout.engine_options, validated by the engine's Settings


class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams, seed: int) -> Rollouts: ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from ``model``'s current weights (a no-op when it shares them)."""
        ...

    def close(self) -> None:
        """Release what the engine holds (its own weights, KV cache, processes)."""
        ...
