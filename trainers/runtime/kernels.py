"""The CPU kernel level every process computes at: pinned, so one spec gives the same numbers on
any x86-64 machine.

torch picks its vectorized CPU kernels by the instruction set it finds, and so do MKL (its BLAS)
and oneDNN: the same build, the same seed and the same thread count give other last bits on an
AVX-512 machine than on an AVX2-only one, sampling diverges, and a study trains from another base
model (measured: three machines, three base models from one spec). ``pin()`` holds what the
trainer reaches at AVX2, which every supported x86-64 machine has:

- torch's own kernels: ``ATEN_CPU_CAPABILITY=avx2``;
- MKL, which runs every float32 matrix product: ``MKL_CBWR=AVX2,STRICT`` (its conditional
  numerical reproducibility mode; strict makes gemm independent of memory alignment).

oneDNN is left alone: the trainer never reaches it in float32 (``ONEDNN_VERBOSE=1``: no primitive
in a whole run), and capping it (``ONEDNN_MAX_CPU_ISA=AVX2``) made the second vLLM CPU engine of a
process sample with log-probabilities 0.63 away from the model's (``tests/test_vllm.py`` after a
study's base evaluation), so bf16 on a CPU, which does reach it, is not covered.

Each library reads its variable once, when it first computes, so the pin runs when ``trainers`` is
imported (``trainers/__init__.py``), before any module of ours imports torch; child processes (Ray
workers, DeepSpeed workers) inherit it, and Ray workers on other nodes get it from the runtime
environment (``child_environment()``). ``level()`` checks, in the process itself, that torch runs
at the pinned level, and is what runs record (``version.cpu-kernels``) and what every cache key
holds (``trainers.io.fingerprint``), so a run made without the pin never shares a cache entry with one
made with it.

``LEAD_STUDY_CPU_LEVEL=native`` turns the pin off: each library picks the fastest kernels the
machine has, and runs record ``<level> (not pinned)``. The pin covers CPU kernels only: CUDA
kernels (cuBLAS, cuDNN, FlashAttention, vLLM's) pick their own algorithms by GPU model and are not
bit-reproducible across GPU kinds whatever this says. Off x86-64 (arm64) there is nothing to pin.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

SETTING = "LEAD_STUDY_CPU_LEVEL"
PINNED, NATIVE = "avx2", "native"
PINNED_ENVIRONMENT = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT"}
NEEDED_FLAGS = frozenset({"avx2", "fma"})  # torch's AVX2 kernels use FMA too
TORCH_NAME = "AVX2"  # torch.backends.cpu.get_cpu_capability() at the pinned level


class KernelLevelError(RuntimeError):
    """The pinned level cannot hold in this process (one line: what, and the setting that helps)."""


def mode() -> str:
    """``avx2`` (the default) or ``native``, from ``LEAD_STUDY_CPU_LEVEL``."""
    chosen = os.environ.get(SETTING, PINNED).strip().lower() or PINNED
    if chosen not in (PINNED, NATIVE):
        raise KernelLevelError(f"{SETTING}={chosen!r}: expected {PINNED!r} (the default) or {NATIVE!r}")
    return chosen


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags the kernel reports for this CPU (empty where /proc/cpuinfo is absent);
    read once per process (``level()`` runs in every cache key)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def applies() -> bool:
    """Whether this process pins: the setting says so, and the machine is x86-64."""
    return mode() == PINNED and is_x86()


def pin() -> None:
    """Set the pinned level's variables, before any library reads them; an unset or wrong
    setting, or a CPU without AVX2, is left for ``level()`` to report (pinning AVX2 on a CPU
    without it would crash the process on its first kernel)."""
    try:
        if not applies() or not NEEDED_FLAGS <= cpu_flags():
            return
    except KernelLevelError:
        return
    os.environ.update(PINNED_ENVIRONMENT)


def child_environment() -> dict[str, str]:
    """The variables a child process on any node needs to compute at this process's level."""
    env = {SETTING: mode()}
    return {**env, **PINNED_ENVIRONMENT} if applies() else env


def level() -> str:
    """The level this process computes at, as runs and cache keys record it: ``AVX2 (pinned)``,
    or ``<torch's level> (not pinned)``. Raises ``KernelLevelError`` where the pin cannot hold."""
    import torch

    found = torch.backends.cpu.get_cpu_capability()
    if not applies():
        return f"{found} (not pinned)"
    missing = NEEDED_FLAGS - cpu_flags()
    if missing:
        raise KernelLevelError(f"{SETTING}: the CPU kernel level {PINNED} is pinned, but this CPU lacks "
                               f"{', '.join(sorted(missing))}; set {SETTING}={NATIVE} to run at its own level "
                               "(its numbers will differ from pinned machines')")
    wrong = {key: os.environ.get(key) for key, value in PINNED_ENVIRONMENT.items() if os.environ.get(key) != value}
    if found != TORCH_NAME or wrong:
        raise KernelLevelError(f"{SETTING}: torch computes at {found}, not the pinned {TORCH_NAME} ({wrong or 'set too late'}): "
                               "import trainers before torch, or start the process with trainers.runtime.kernels.child_environment()")
    return f"{TORCH_NAME} (pinned)"


def problems() -> list[str]:
    """``level()``'s complaint as a CLI's error lines (none when the level holds)."""
    try:
        level()
    except KernelLevelError as exc:
        return [str(exc)]
    return []
