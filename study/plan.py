"""From a StudySpec to trials: arms x weight grids x seeds, each a fully resolved TrainConfig.

Paths are made absolute here (trials change directory), and the base model path is filled in by
the caller once it exists, so every trial starts from the same, already built model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainers import contract as M
from trainers.config import TrainConfig
from trainers.io.remote import is_uri
from trainers.method.lead import weight_motion
from trainers.models.tiny import default_cache_dir
from trainers.settings import deep_merge

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
    trials = []
    for arm in spec.arms:
        variants = arm.settings(spec.base, last)
        for variant, settings in variants:
            for seed in spec.arm_seeds(arm, smoke):
                own = {"seed": seed, **({"model": {"tiny": {"seed": seed}}} if spec.base_model_per_seed else {})}
                settings = deep_merge(deep_merge(settings, own), fixed or {})
                config = TrainConfig.of(settings)
                motion = weight_motion(config.lead, searched=arm.name == spec.search.moved_arm)
                name = arm.name if len(variants) == 1 else f"{arm.name}-{variant}"
                trials.append(TrialPlan(f"{name}-s{seed}", arm.name, variant, seed,
                                        absolute_paths(config.model_dump(mode="json")), motion))
    return trials


SHOWN_APART = (  # in a column of their own (the method tags, engine, backend), or per trial by design (paths)
    "seed", "model.path", "model.cache_dir", "rollout.engine", "train.backend", "train.workers", "lead.weighting.kind",
    "lead.advantage.kind", "lead.advantage.whiten", "rollout.group_filter.kind", "train.loss_aggregation",
    "train.policy_loss",
)
METHOD_COLUMNS = (M.TAG_WEIGHTING, M.TAG_ADVANTAGE, M.TAG_WHITEN, M.TAG_GROUP_FILTER, M.TAG_LOSS_AGGREGATION,
                  M.TAG_POLICY_LOSS)


def differing_settings(flat: list[dict[str, str]]) -> list[str]:
    """The dotted settings whose values are not the same in every trial's ``params`` (in config order)."""
    keys = list(dict.fromkeys(key for row in flat for key in row))
    return [key for key in keys if key not in SHOWN_APART and len({row.get(key) for row in flat}) > 1]


def trial_table(plans: list[TrialPlan]) -> list[str]:
    """The trials as a text table: name, seed, how its weight moves, its engine and backend, its
    method tags, and every setting that differs between trials (columns named by the setting's last
    parts); settings the trials share are not repeated."""
    flats = [M.params(plan.config) for plan in plans]
    differing = differing_settings(flats)
    header = ["trial", "seed", "motion", "engine", "backend", *METHOD_COLUMNS, *[".".join(k.split(".")[-2:]) for k in differing]]
    rows = []
    for plan, flat in zip(plans, flats):
        method, train = M.method_tags(plan.config, plan.motion), plan.config["train"]
        rows.append([plan.name, str(plan.seed), plan.motion, plan.config["rollout"]["engine"],
                     f"{train['backend']} x{train['workers']}", *(method[c] for c in METHOD_COLUMNS),
                     *(_short(flat.get(k, "")) for k in differing)])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]


def _short(value: str, limit: int = 24) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."
