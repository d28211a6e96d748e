"""Torch's intra-op thread count, where it changes numbers.

A float reduction split over more threads adds in another order, so the same run on one thread
and on two differs in the last bits, and sampling can then diverge. The base model is built on
``BUILD_THREADS`` threads whatever the machine has, so its weights are the same everywhere; a
study's trials run on the thread count their spec's resources give (``resources.cpus``), and the
driver evaluates the base model on that same count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

BUILD_THREADS = 1


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block on ``count`` torch threads, then restore the count before it."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
