"""What every node of a Ray cluster must have before a study's trials start there: the modules
its trials import. Checked by importing them on each alive node, in a task pinned to it, with the
study's own runtime environment; a node that lacks one is one line naming the node and the
module, before any trial starts."""

from __future__ import annotations

import importlib
from typing import Any

from trainers.settings import lookup

# what every trial imports (their distribution names differ: math-verify, pyyaml)
ALWAYS = ("torch", "transformers", "tokenizers", "pyarrow", "pydantic", "yaml", "math_verify", "pebble", "study.trial")
# what a trial imports only for some settings: (dotted setting, value) -> module
BY_SETTING = {("rollout.engine", "vllm"): "vllm", ("train.backend", "deepspeed"): "deepspeed"}


def needed_modules(configs: list[dict[str, Any]]) -> list[str]:
    """The modules the trials with these configs (full ``TrainConfig`` dumps) import."""
    extra = {module for (key, wanted), module in BY_SETTING.items() if any(lookup(c, key) == wanted for c in configs)}
    return [*ALWAYS, *sorted(extra)]


def missing_modules(modules: list[str]) -> list[str]:
    """Those of ``modules`` this process cannot import, each as ``name (the error's first line)``."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # an ImportError, or a module that fails while importing
            missing.append(f"{name} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
    return missing


def check_nodes(modules: list[str]) -> list[str]:
    """One line per alive node of the connected cluster that cannot import one of ``modules``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(missing_modules)
    lines = []
    for node in (n for n in ray.nodes() if n["Alive"]):
        where = f"node {node['NodeManagerAddress']} ({node['NodeID'][:12]})"
        task = probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
        try:
            missing = ray.get(task.remote(modules))
        except ray.exceptions.TaskUnschedulableError:
            continue  # the node left the cluster since it was listed
        except Exception as exc:  # the probe itself could not run there (this project's code did not load)
            missing = [f"the probe ({str(exc).strip().splitlines()[-1]})"]
        if missing:
            lines.append(f"{where} cannot import {'; '.join(missing)}")
    return lines
