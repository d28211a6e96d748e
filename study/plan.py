"""From a StudySpec to trials: arms x weight grids x seeds, each a fully resolved TrainConfig.

Paths are made absolute here (trials change directory), and the base model path is filled in by
the caller once it exists, so every trial starts from the same, already built model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainers.config import TrainConfig, deep_merge
from trainers.io.remote import is_uri
from trainers.method.lead import weight_motion
from trainers.models.tiny import default_cache_dir

from study.spec import StudySpec


@dataclass(frozen=True)
class TrialPlan:
    name: str  # arm-variant-seed, unique in the study
    arm: str
    variant: str
    seed: int
    config: dict[str, Any]  # TrainConfig.model_dump(mode="json"), validated
    motion: str  # how its w_corr moves (trainers.contract.MOTIONS): a population member's is "searched"


def absolute_paths(config: dict[str, Any]) -> dict[str, Any]:
    """Trials change directory and may run on other nodes: fix the model path and cache dir now."""
    model = dict(config["model"])
    model["cache_dir"] = str(Path(model["cache_dir"] or default_cache_dir()).expanduser().resolve())
    if model["path"] and not is_uri(model["path"]):  # a URI is the same on every node
        model["path"] = str(Path(model["path"]).expanduser().resolve())
    return {**config, "model": model}


def plan_trials(spec: StudySpec, smoke: bool = False, fixed: dict[str, Any] | None = None) -> list[TrialPlan]:
    """One trial per (arm, weight variant, seed). ``fixed`` is merged last (e.g. the model path)."""
    last = spec.last_settings(smoke)
    population = spec.population_arm.name if spec.population_arm else None
    trials = []
    for arm in spec.arms:
        variants = arm.settings(spec.base, last)
        for variant, settings in variants:
            for seed in spec.arm_seeds(arm, smoke):
                own = {"seed": seed, **({"model": {"tiny": {"seed": seed}}} if spec.base_model_per_seed else {})}
                settings = deep_merge(deep_merge(settings, own), fixed or {})
                config = TrainConfig.model_validate(settings)
                motion = weight_motion(config.lead, searched=arm.name == population)
                name = arm.name if len(variants) == 1 else f"{arm.name}-{variant}"
                trials.append(TrialPlan(f"{name}-s{seed}", arm.name, variant, seed,
                                        absolute_paths(config.model_dump(mode="json")), motion))
    return trials
