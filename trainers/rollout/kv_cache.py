"""A transformers KV cache whose keys and values live in buffers allocated once per rollout.

transformers' ``DynamicLayer`` grows by ``torch.cat`` at every decoded token, so decoding ``T``
tokens copies the whole cache ``T`` times (quadratic: at 128 rows and 100 tokens, two thirds of a
decode step of the tiny model went to that copy). ``PreallocatedLayer`` writes each token into a
buffer sized for the longest sequence and hands attention a view of the filled part: the same
keys and values, in the same order, so attention computes the same numbers. Dropping rows
(``batch_select_indices``) compacts the filled part in place.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """One layer's cache: ``DynamicLayer``'s behaviour over buffers of ``capacity`` positions."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        rows, heads = key_states.shape[:2]
        self.key_buffer = key_states.new_empty((rows, heads, self.capacity, key_states.shape[-1]))
        self.value_buffer = value_states.new_empty((rows, heads, self.capacity, value_states.shape[-1]))

    def _expose(self) -> None:
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise ValueError(f"the KV cache holds {self.capacity} positions, {end} were asked for")
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Each row ``repeats`` times in a row (new buffers; only the filled positions are copied)."""
        if self.is_initialized:
            self.key_buffer, self.value_buffer = (self._repeated(b, repeats) for b in (self.key_buffer, self.value_buffer))
            self._expose()

    def _repeated(self, buffer: torch.Tensor, repeats: int) -> torch.Tensor:
        out = buffer.new_empty((buffer.shape[0] * repeats, *buffer.shape[1:]))
        out[:, :, : self.length] = buffer[:, :, : self.length].repeat_interleave(repeats, dim=0)
        return out

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep rows ``indices`` (ascending), moved to the front of the buffers: only the filled
        positions are copied."""
        if self.is_initialized:
            kept = indices.numel()
            for buffer in (self.key_buffer, self.value_buffer):
                buffer[:kept, :, : self.length] = buffer[:, :, : self.length].index_select(0, indices)
            self.key_buffer, self.value_buffer = self.key_buffer[:kept], self.value_buffer[:kept]
            self._expose()


def preallocated_cache(model: torch.nn.Module, capacity: int) -> Cache:
    """A cache for every layer of ``model`` holding up to ``capacity`` positions per row."""
    return Cache(layers=[PreallocatedLayer(capacity) for _ in range(model.config.num_hidden_layers)])
