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
    search: {mode: grid}                  # or optuna (one arm, continuous space), optional ASHA
    resources: {cpus: 1, gpus: 0}         # or bundles: [{CPU: 1, GPU: 1}, {CPU: 1}]

Unknown keys are errors; every error names its key path (``arms[1].weighting.w_corr: ...``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainers.config import ConfigError, TrainConfig, deep_merge, format_error, load_validated


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _as_list(value: Any) -> Any:
    return value if value is None or isinstance(value, list) else [value]


class PsiWeighting(_Strict):
    """PSI: weights re-computed every step; unset hyperparameters keep LEAD's defaults."""

    kind: Literal["psi"]
    alpha: float | None = Field(None, ge=0.0)
    beta: float | None = Field(None, ge=0.0, le=1.0)
    lambda_min: float | None = Field(None, ge=0.0, le=1.0)

    def variants(self) -> list[tuple[str, dict]]:
        lead = {"weighting": "psi", "normalization": "decoupled"}
        lead.update({k: v for k, v in self.model_dump(exclude={"kind"}).items() if v is not None})
        return [("psi", lead)]


class _StaticGrid(_Strict):
    """A grid of fixed weights, as ``w_corr`` values or as the paper's ratios ``w_eff / w_corr``."""

    w_corr: list[Annotated[float, Field(ge=0.0, le=1.0)]] | None = None
    ratios: list[Annotated[float, Field(ge=0.0)]] | None = None

    _to_list = field_validator("w_corr", "ratios", mode="before")(_as_list)

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.w_corr is None) == (self.ratios is None):
            raise ValueError("give exactly one of w_corr (weights) or ratios (w_eff / w_corr)")
        return self

    def grid(self) -> list[tuple[str, float]]:
        """(label, w_corr) pairs; a ratio r gives w_corr = 1 / (1 + r)."""
        if self.ratios is not None:
            return [(f"ratio{r:g}", 1.0 / (1.0 + r)) for r in self.ratios]
        return [(f"wc{w:g}", w) for w in self.w_corr]


class StaticWeighting(_StaticGrid):
    kind: Literal["static"]

    def variants(self) -> list[tuple[str, dict]]:
        return [(label, {"weighting": "static", "w_corr": w, "normalization": "decoupled"}) for label, w in self.grid()]


class CombinedWeighting(_StaticGrid):
    """The paper's GRPO baseline: combine the rewards with static weights, then normalize once."""

    kind: Literal["combined"]

    def variants(self) -> list[tuple[str, dict]]:
        return [(label, {"weighting": "static", "w_corr": w, "normalization": "combined"}) for label, w in self.grid()]


class ScheduleWeighting(_Strict):
    """A hand-made curriculum from ``w_corr_start`` to ``w_corr_end`` over ``schedule_steps``."""

    kind: Literal["schedule"]
    w_corr_start: float = Field(ge=0.0, le=1.0)
    w_corr_end: float = Field(ge=0.0, le=1.0)
    schedule_steps: int | None = Field(None, ge=1, description="None: the run's number of steps")
    schedule_shape: Literal["linear", "cosine"] = "linear"

    def variants(self) -> list[tuple[str, dict]]:
        lead = {"weighting": "schedule", "normalization": "decoupled", **self.model_dump(exclude={"kind"})}
        return [(f"{self.schedule_shape}{self.w_corr_start:g}-{self.w_corr_end:g}", lead)]


Weighting = Annotated[
    PsiWeighting | StaticWeighting | CombinedWeighting | ScheduleWeighting, Field(discriminator="kind")
]


class Arm(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    weighting: Weighting
    overrides: dict[str, Any] = Field(default_factory=dict, description="TrainConfig settings for this arm only")


class Uniform(_Strict):
    uniform: tuple[float, float]


class LogUniform(_Strict):
    loguniform: tuple[float, float]


class Choice(_Strict):
    choice: list[Any]


class Asha(_Strict):
    grace_period: int = Field(1, ge=1, description="steps before a trial can be stopped")
    reduction_factor: float = Field(2.0, gt=1.0)


class Search(_Strict):
    mode: Literal["grid", "optuna"] = "grid"
    metric: str = "eval/aes"
    direction: Literal["max", "min"] = "max"
    num_samples: int = Field(8, ge=1, description="optuna: number of trials")
    space: dict[str, Uniform | LogUniform | Choice] = Field(
        default_factory=dict, description="optuna: dotted TrainConfig keys, e.g. lead.lambda_min"
    )
    asha: Asha | None = None


class Resources(_Strict):
    cpus: float = Field(1.0, gt=0.0)
    gpus: float = Field(0.0, ge=0.0, description="fractions share one GPU among trials")
    bundles: list[dict[str, float]] | None = Field(
        None, description="explicit placement-group bundles, e.g. [{CPU: 1, GPU: 1}, {CPU: 1, GPU: 1}]"
    )


class StudySpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict, description="TrainConfig settings shared by every trial")
    smoke: dict[str, Any] = Field(default_factory=dict, description="extra settings applied by --smoke-test")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    arms: list[Arm] = Field(min_length=1)
    search: Search = Search()
    resources: Resources = Resources()
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_failures: int = Field(2, ge=0, description="retries of a crashed trial, from its last checkpoint")

    @model_validator(mode="after")
    def _consistent(self):
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arms: names must be unique, got {names}")
        if self.search.mode == "optuna":
            if len(self.arms) != 1 or len(self.seeds) != 1:
                raise ValueError("search.mode optuna takes exactly one arm and one seed (Ray Tune cannot mix a grid with a searcher)")
            if not self.search.space:
                raise ValueError("search.space: optuna needs at least one parameter")
        elif self.search.space:
            raise ValueError("search.space: only used with search.mode optuna")
        return self


def _check_train_settings(spec: StudySpec, path: Path) -> None:
    """Every arm's merged trainer settings must form a valid TrainConfig (errors name the arm)."""
    for where, settings in [("base", spec.base), ("smoke", deep_merge(spec.base, spec.smoke))]:
        try:
            TrainConfig.model_validate(settings)
        except ValidationError as exc:
            raise ConfigError(f"{path}: {format_error(exc, prefix=where)}") from None
    for i, arm in enumerate(spec.arms):
        try:
            TrainConfig.model_validate(deep_merge(spec.base, arm.overrides))
        except ValidationError as exc:
            raise ConfigError(f"{path}: {format_error(exc, prefix=f'arms[{i}].overrides')}") from None
    for key in spec.search.space:
        section, _, field = key.partition(".")
        model = TrainConfig.model_fields.get(section)
        if model is None or not field or field not in model.annotation.model_fields:
            raise ConfigError(f"{path}: search.space.{key}: not a TrainConfig setting (use section.field)")


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study spec; any problem raises ConfigError with one line."""
    spec = load_validated(path, StudySpec)
    _check_train_settings(spec, Path(path))
    return spec
