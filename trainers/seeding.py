"""Seed mixing: every seed the project draws is a pure function of a run's seed and an index, so
a resumed run, another machine and another process draw the same numbers."""


def mix_seed(seed: int, index: int) -> int:
    """A distinct, reproducible seed per (seed, index): ``seed * 1_000_003 + index``."""
    return seed * 1_000_003 + index


def step_seed(seed: int, step: int, stream: int) -> int:
    """A distinct, reproducible seed per (run seed, step, use): ``mix_seed(seed, step) * 8 + stream``
    (streams: 0 rollouts, 1 the policy update, 7 evaluation)."""
    return mix_seed(seed, step) * 8 + stream
