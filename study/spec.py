"""StudySpec: one YAML file that describes a whole study, validated before anything starts.

    name: psi_vs_static
    base: {train: {steps: 60}}            # trainer settings shared by every trial (TrainConfig keys)
    seeds: [0, 1]
    arms:
      - {name: psi, weighting: {kind: psi, lambda_min: 0.3}}
      - {name: static, weighting: {kind: static, ratios: [0, 0.25, 0.5, 1, 2, 4]}}
      - {name: grpo, weighting: {kind: combined, w_corr: [0.5]}}
      - {name: curriculum, weighting: {kind: schedule, w_corr_start: 1.0, w_corr_end: 0.4}}
      - {name: min-target, weighting: {kind: psi}, overrides: {lead: {aggregator: min_correct}}}
      - {name: kimi, reward: {kind: kimi}, weighting: {kind: static, w_corr: [0.5]}}
      - {name: psi-kimi, reward: {kind: kimi}, weighting: {kind: psi}}
    search: {mode: grid}                  # or optuna (one arm, continuous space), optional ASHA, or pbt / pb2:
    # search: {mode: pbt, population: {arm: static, perturbation_interval: 5,
    #                                  mutations: {lead.weighting.w_corr: {uniform: [0.1, 1.0]}}}}
    resources: {cpus: 1, gpus: 0}         # or bundles: [{CPU: 1, GPU: 1}, {CPU: 1}]

Unknown keys are errors; every error names its key path (``arms[1].weighting.w_corr: ...``).
"""

from __future__ import annotations

import difflib
import functools
import itertools
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from trainers import contract as M
from trainers.config import SMOKE_SETTINGS, TrainConfig, fit_group_filter
from trainers.method.advantages import AdvantageSettings
from trainers.method.lead import LeadConfig
from trainers.method.rewards import LENGTH_REWARDS
from trainers.method.weightings import Weighting, weighting_settings
from trainers.settings import ConfigError, Strict, deep_merge, dotted, format_errors, load_validated

from study.designs import Design, Fixed, design_settings
from study.search_modes import Grid, SearchMode, search_settings


# letters, digits, "_", "." and "-", not starting with "." (so never "." or "..": names become folders)
NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$"


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


W_CORR = M.W_CORR_SETTING
GRID_LABELS = {W_CORR: "wc"}  # how a grid value of a setting is labelled (default: the setting's last part)


def _grid_label(key: str, value: Any) -> str:
    prefix = GRID_LABELS.get(key, key.rsplit(".", 1)[-1])
    return f"{prefix}{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else f"{prefix}{value}"


def compile_shorthands(arm: dict[str, Any]) -> dict[str, Any]:
    """The spec's shorthands for weightings, compiled to the trainer's own settings and a grid:
    ``kind: combined`` is ``kind: static`` with ``advantage: {kind: combined}`` (the GRPO baseline);
    a list of ``w_corr`` is a grid over ``lead.weighting.w_corr`` (labels ``wc<w>``); ``ratios``
    (the paper's ``w_eff / w_corr``, one or a list) is a grid of ``w_corr = 1 / (1 + r)`` (labels
    ``ratio<r>``)."""
    weighting = arm.get("weighting")
    if not isinstance(weighting, dict):
        return arm
    weighting, grid, labels = dict(weighting), dict(arm.get("grid") or {}), arm.get("labels")
    advantage = arm.get("advantage")
    if weighting.get("kind") == "combined":
        if isinstance(advantage, dict) and advantage.get("kind", "combined") != "combined":
            raise ValueError("advantage.kind: weighting kind combined is combine-then-normalize; use weighting kind static")
        weighting["kind"] = "static"
        advantage = {**(advantage if isinstance(advantage, dict) else {}), "kind": "combined"}
    if "ratios" in weighting:
        if "w_corr" in weighting:
            raise ValueError("weighting: give exactly one of w_corr (weights) or ratios (w_eff / w_corr)")
        ratios = _as_list(weighting.pop("ratios"))
        if not all(isinstance(r, (int, float)) and not isinstance(r, bool) and r >= 0 for r in ratios):
            raise ValueError(f"weighting.ratios: each ratio is a number >= 0, got {ratios}")
        grid[W_CORR] = [1.0 / (1.0 + r) for r in ratios]
        labels = labels or [f"ratio{r:g}" for r in ratios]
    elif isinstance(weighting.get("w_corr"), list):
        grid[W_CORR] = weighting.pop("w_corr")
    return {**arm, "weighting": weighting, "grid": grid, **({"labels": labels} if labels else {}),
            **({"advantage": advantage} if advantage is not None else {})}


class ArmReward(BaseModel):
    """A length reward from ``trainers.method.rewards.LENGTH_REWARDS`` and its settings:
    ``{kind: kimi}``, ``{kind: overlong, max_len: 160, cache_len: 40}``, ``{kind: lead, aggregator: min_correct}``.
    Settings named like a ``lead`` field (``bmax``, ``aggregator``, ...) set that field."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str

    @model_validator(mode="after")
    def _known(self):
        if self.kind not in LENGTH_REWARDS:
            raise ValueError(f"kind: {LENGTH_REWARDS.unknown(self.kind)}")
        reward = LENGTH_REWARDS[self.kind]
        takes = reward.params.model_fields
        for key in self.model_extra:
            if key not in takes:
                raise ValueError(f"{key}: unknown key (length reward {self.kind} takes: {', '.join(takes) or 'nothing'})")
        for key, info in takes.items():
            if info.is_required() and key not in self.model_extra and key not in LeadConfig.model_fields:
                raise ValueError(f"{key}: required by length reward {self.kind}")
        return self

    def lead_settings(self) -> dict[str, Any]:
        """The ``lead`` settings this reward stands for."""
        shared = {k: v for k, v in self.model_extra.items() if k in LeadConfig.model_fields}
        own = {k: v for k, v in self.model_extra.items() if k not in LeadConfig.model_fields}
        return {"length_reward": self.kind, "length_params": own, **shared}


class Arm(Strict):
    """One arm: the trainer's own weighting and length reward (``trainers.method.weightings``,
    ``trainers.method.rewards``), a grid over any dotted trainer settings, seeds and overrides."""

    name: str = Field(pattern=NAME_PATTERN)
    seeds: list[int] | None = Field(None, min_length=1, description="this arm's seeds (default: the study's)")
    reward: ArmReward = Field(default_factory=lambda: ArmReward(kind="lead"), description="default: LEAD's")
    weighting: SerializeAsAny[Weighting] = Field(description="the trainer's weighting settings (kind: a name in "
                                                 "trainers.method.weightings.WEIGHTINGS), or a shorthand (compile_shorthands)")
    advantage: AdvantageSettings | None = Field(None, description="the trainer's lead.advantage (kind: a name in "
                                                "trainers.method.advantages.ADVANTAGES; whiten); default: the study's")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted trainer settings and their values: "
                                       "one trial per combination")
    labels: list[str] | None = Field(None, description="the grid's variant names (default: each setting's name and value)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="TrainConfig settings for this arm only")

    _shorthands = model_validator(mode="before")(lambda data: compile_shorthands(data) if isinstance(data, dict) else data)
    _weighting_by_kind = field_validator("weighting", mode="wrap")(lambda value, handler: weighting_settings(value))

    @field_validator("grid")
    @classmethod
    def _values_given(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        empty = [key for key, values in grid.items() if not values]
        if empty:
            raise ValueError(f"{empty[0]}: give at least one value")
        return grid

    @model_validator(mode="after")
    def _distinct_variants(self) -> "Arm":
        combinations = len(list(itertools.product(*self.grid.values()))) if self.grid else 0
        if self.labels is not None and len(self.labels) != combinations:
            raise ValueError(f"labels: {len(self.labels)} names for {combinations} grid variants")
        labels = [label for label, _ in self.variants()]
        if len(set(labels)) != len(labels):
            raise ValueError(f"grid: variants must be distinct, got {labels}")
        return self

    def variants(self) -> list[tuple[str, dict[str, Any]]]:
        """(label, dotted settings) per grid combination; one unnamed variant (the weighting's own
        label) without a grid."""
        if not self.grid:
            return [(self.weighting.label(), {})]
        combos = [dict(zip(self.grid, values)) for values in itertools.product(*self.grid.values())]
        labels = self.labels or ["-".join(_grid_label(k, v) for k, v in combo.items()) for combo in combos]
        return list(zip(labels, combos))

    def settings(self, shared: dict[str, Any], last: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
        """(variant, trainer settings) for each grid variant: the shared settings, then the arm's
        length reward, then its weighting (replacing any other) and advantage estimator, then the variant's grid values,
        then its overrides, then ``last`` (a smoke test's settings, which win over the arm's, with the
        group filter fitted to them: ``fit_group_filter``)."""
        settings = deep_merge(shared, {"lead": self.reward.lead_settings()})
        settings = {**settings, "lead": {**settings["lead"], "weighting": self.weighting.model_dump()}}
        if self.advantage is not None:
            settings["lead"]["advantage"] = self.advantage.model_dump()
        out = []
        for variant, values in self.variants():
            merged = functools.reduce(deep_merge, (dotted(key, value) for key, value in values.items()), settings)
            arm_settings = deep_merge(merged, self.overrides)
            out.append((variant, fit_group_filter(deep_merge(arm_settings, last)) if last else arm_settings))
        return out


class Resources(Strict):
    cpus: float = Field(1.0, gt=0.0)
    gpus: float = Field(0.0, ge=0.0, description="fractions share one GPU among trials")
    bundles: list[dict[str, float]] | None = Field(
        None, description="explicit placement-group bundles, e.g. [{CPU: 8, GPU: 4}]; the trial's process "
        "(and the training workers it starts) gets the first bundle, tasks it launches itself the others"
    )

    @property
    def trial_threads(self) -> int:
        """The torch threads a trial runs on (and the driver evaluates the base model on): its CPUs,
        at least one, so a study's numbers do not depend on the machine's core count."""
        return max(1, int(self.cpus))

    @property
    def trial_gpus(self) -> float:
        """The GPUs the trial's own process sees: training workers take one each."""
        return self.bundles[0].get("GPU", 0.0) if self.bundles else self.gpus

    def describe(self) -> str:
        bundles = self.bundles or [{"CPU": self.cpus, "GPU": self.gpus}]
        return " + ".join("{" + ", ".join(f"{k}: {v:g}" for k, v in b.items() if v) + "}" for b in bundles)


class StudySpec(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    plugins: list[str] = Field(default_factory=list, description="your own rewards, weightings, tasks, ...: .py files "
                               "(relative to the spec) or module names, imported first, here and in every trial")
    base: dict[str, Any] = Field(default_factory=dict, description="TrainConfig settings shared by every trial")
    smoke: dict[str, Any] = Field(
        default_factory=dict, description="extra settings applied by --smoke-test, over every arm's own"
    )
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    smoke_seeds: list[int] | None = Field(
        None, min_length=1, description="the seeds --smoke-test runs, of each arm's own (default: all of them)"
    )
    arms: list[Arm] = Field(min_length=1)
    base_model_per_seed: bool = Field(
        False, description="each seed builds its own tiny base model (model.tiny.seed = the trial's seed): a unit is a "
        "(base model, RL seed) pair, so verdicts cover base models as well as RL seeds"
    )
    focus: str | None = Field(None, description="the arm under test: the report and its verdicts set every other arm "
                              "against it (default: the arm named psi; required when there are several arms and none is)")
    search: SerializeAsAny[SearchMode] = Field(Grid(), description="mode: a name in study.search_modes.SEARCH_MODES, "
                                               "with that mode's own settings")
    design: SerializeAsAny[Design] = Field(Fixed(), description="how many seeds each comparison gets: fixed (every "
                                           "listed seed) or sequential (study.designs)")
    resources: Resources = Resources()
    max_concurrent_trials: int | None = Field(None, ge=1)
    smoke_resources: Resources | None = Field(
        None, description="under --smoke-test: the resources per trial instead (and no max_concurrent_trials), "
        "so a GPU study's smoke test runs on a CPU machine",
    )
    max_failures: int = Field(2, ge=0, description="retries of a crashed trial, from its last checkpoint")
    ship_model: bool = Field(
        True, description="with --output-dir in object storage, upload the base model for trials on other nodes; "
        "false: model.path is at the same path on every node (a shared mount), used as it is"
    )

    _search_by_mode = field_validator("search", mode="wrap")(lambda value, handler: search_settings(value))
    _design_by_kind = field_validator("design", mode="wrap")(lambda value, handler: design_settings(value))

    @model_validator(mode="before")
    @classmethod
    def _plugins_to_every_trial(cls, data: Any) -> Any:
        """Hand the plugins (imported before validation: ``load_spec``) to every trial through
        ``base``, so each trial's process imports them before it builds its config (``TrainConfig.of``)."""
        if isinstance(data, dict) and data.get("plugins"):
            base = data.get("base", {})
            if isinstance(base, dict):  # (a malformed base gets its own error)
                data = {**data, "base": {**base, "plugins": data["plugins"]}}
        return data

    def for_smoke(self) -> "StudySpec":
        """This spec as --smoke-test runs it: ``smoke_resources`` (if given) replace the resources."""
        if self.smoke_resources is None:
            return self
        return self.model_copy(update={"resources": self.smoke_resources, "max_concurrent_trials": None})

    def arm_seeds(self, arm: "Arm", smoke: bool) -> list[int]:
        """The seeds ``arm`` runs: its own or the study's; under --smoke-test those in
        ``smoke_seeds`` (the first one when none is)."""
        seeds = arm.seeds or self.seeds
        if smoke and self.smoke_seeds:
            return [seed for seed in seeds if seed in self.smoke_seeds] or seeds[:1]
        return seeds

    def last_settings(self, smoke: bool) -> dict[str, Any]:
        """What is merged over every trial's settings last: under --smoke-test, the smoke shrink
        (``SMOKE_SETTINGS``) and then the spec's ``smoke`` settings; otherwise nothing."""
        return deep_merge(SMOKE_SETTINGS, self.smoke) if smoke else {}

    @model_validator(mode="after")
    def _consistent(self):
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arms: names must be unique, got {names}")
        seed_lists = [("seeds", self.seeds)] + [(f"arms[{i}].seeds", a.seeds) for i, a in enumerate(self.arms) if a.seeds]
        for where, seeds in seed_lists:
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"{where}: must be distinct, got {seeds} (a repeated seed is the same trial twice)")
        if self.focus is not None and self.focus not in names:
            raise ValueError(f"focus: no arm named '{self.focus}' (arms: {', '.join(names)})")
        if self.focus is None and len(names) > 1 and M.DEFAULT_FOCUS not in names:
            raise ValueError(f"focus: name the arm under test (the study has {len(names)} arms and none is called "
                             f"'{M.DEFAULT_FOCUS}'): one of {', '.join(names)}")
        if self.base_model_per_seed and self.base.get("model", {}).get("path") is not None:
            raise ValueError("base_model_per_seed: a base model is drawn per seed by building the tiny model with that "
                             f"seed; base.model.path ({self.base['model']['path']}) names one model")
        self.search.check(self)
        self.design.check(self)
        return self

    @property
    def focus_arm(self) -> str:
        """The arm under test: ``focus``, or the arm named psi, or the only arm."""
        names = [arm.name for arm in self.arms]
        return self.focus or (M.DEFAULT_FOCUS if M.DEFAULT_FOCUS in names else names[0])


def _check_train_settings(spec: StudySpec, path: Path) -> None:
    """Every arm's trainer settings, normal and smoke, must form valid TrainConfigs (errors name the
    arm); every value the search space can draw must be a valid setting; the metric must be one
    the trainer reports. All problems are raised together, one line each."""
    lines, seen = [], set()

    def add(line: str, prefix: str = "") -> None:
        """Add each problem once: one in ``base`` is not repeated for every arm and the smoke settings."""
        if line not in seen:
            seen.add(line)
            lines.append(f"{path}: {prefix}{line}")

    def check(settings: dict, prefix: str, resources: Resources | None = None, arm: str = "", smoke: bool = False) -> None:
        try:
            config = TrainConfig.of(settings)
        except ValidationError as exc:
            for line in format_errors(exc):
                add(line, prefix)
            return
        gpus, workers = (resources.trial_gpus if resources else 0), config.train.workers
        if gpus and workers > max(1.0, gpus):  # one process may share a GPU (a fraction); workers may not
            add(f"train.workers: {workers} workers take one GPU each, a trial gets {gpus:g} "
                f"(resources: {resources.describe()})", prefix)
        if config.rollout.engine == "vllm" and gpus != int(gpus):  # its start-up memory check, profiling and sleep
            add(f"rollout.engine: vllm needs whole GPUs (it assumes it is alone on its memory), a trial gets "
                f"{gpus:g} (resources: {resources.describe()})", prefix)
        for line in spec.search.config_problems(spec, arm, config, smoke):
            add(line)

    for where, smoke in (("base", False), ("smoke", True)):
        last = spec.last_settings(smoke)
        check(deep_merge(spec.base, last), f"{where}.")
        for i, arm in enumerate(spec.arms):
            for _, settings in arm.settings(spec.base, last):
                check(settings, f"arms[{i}].", spec.for_smoke().resources if smoke else spec.resources, arm.name, smoke)
    for prefix, settings in spec.search.drawn(spec):
        check(settings, prefix)
    if spec.search.metric not in M.REPORTED:
        close = difflib.get_close_matches(spec.search.metric, M.REPORTED, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else " (a name the trainer reports, e.g. eval/aes)"
        add(f"search.metric: '{spec.search.metric}' is not a reported metric{hint}")
    if lines:
        raise ConfigError(lines)


def load_spec(path: str | Path, overrides: list[str] = ()) -> StudySpec:
    """Read a study spec, apply ``KEY=VALUE`` overrides (``base.train.steps=10``, ``seeds=[0,1]``) and
    validate it; any problem raises ConfigError with one line."""
    spec = load_validated(path, StudySpec, overrides)
    _check_train_settings(spec, Path(path))
    return spec
