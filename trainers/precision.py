"""Compute precision: weights stay float32 (the optimizer's master copy), and ``bfloat16`` runs the
forward passes under autocast on a GPU. Pure-bf16 weights would lose small updates: at the paper's
learning rate (2e-6) an Adam step changes a weight by about 1e-4 of itself, below bf16's
resolution (2^-8), so most updates would round away."""

from __future__ import annotations

import contextlib

import torch


def autocast(dtype: str, device: torch.device):
    """bf16 autocast for ``dtype == "bfloat16"`` on a CUDA device; otherwise full float32."""
    if dtype == "bfloat16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
