"""What one process needs to compute the same numbers everywhere: its torch thread count, its
compute precision, the seeds it draws, and a free port for a local server.

- **Threads.** A float reduction split over more threads adds in another order, so the same run on
  one thread and on two differs in the last bits, and sampling can then diverge. The base model is
  built on ``BUILD_THREADS`` threads whatever the machine has, so its weights are the same
  everywhere; a study's trials run on the thread count their spec's resources give
  (``resources.cpus``), and the driver evaluates the base model on that same count.
- **Precision.** Weights stay float32 (the optimizer's master copy), and ``bfloat16`` runs the
  forward passes under autocast on a GPU. Pure-bf16 weights would lose small updates: at the
  paper's learning rate (2e-6) an Adam step changes a weight by about 1e-4 of itself, below bf16's
  resolution (2^-8), so most updates would round away.
- **Seeds.** Every seed the project draws is a pure function of a run's seed and an index, so a
  resumed run, another machine and another process draw the same numbers.
"""

from __future__ import annotations

import contextlib
import socket
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


def autocast(dtype: str, device: torch.device):
    """bf16 autocast for ``dtype == "bfloat16"`` on a CUDA device; otherwise full float32."""
    if dtype == "bfloat16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def mix_seed(seed: int, index: int) -> int:
    """A distinct, reproducible seed per (seed, index): ``seed * 1_000_003 + index``."""
    return seed * 1_000_003 + index


def step_seed(seed: int, step: int, stream: int) -> int:
    """A distinct, reproducible seed per (run seed, step, use): ``mix_seed(seed, step) * 8 + stream``
    (streams: 0 rollouts, 1 the policy update, 7 evaluation)."""
    return mix_seed(seed, step) * 8 + stream


def free_port() -> int:
    """A free TCP port on loopback (DeepSpeed's process group, a local ``mlflow server``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
