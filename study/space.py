"""The distributions a study's search draws trainer settings from, as a spec writes them:
``{uniform: [low, high]}``, ``{loguniform: [low, high]}`` or ``{choice: [...]}``. Each knows its
extremes (the spec's check validates them as trainer settings before anything runs), its Ray Tune
search space (``tune_domain``; Ray is imported there only) and the range a population clips a
perturbed value into (``clip_range``)."""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

from pydantic import Discriminator, Field, Tag, field_validator

from trainers.settings import Strict


def finite_range(bounds: tuple[float, float], positive: bool = False) -> tuple[float, float]:
    low, high = bounds
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"needs finite bounds with low < high, got [{low}, {high}]")
    if positive and low <= 0:
        raise ValueError(f"needs bounds above 0, got [{low}, {high}]")
    return bounds


class Range(Strict):
    """A numeric range, ``{<kind>: [low, high]}``: its bounds are its extremes and the range a
    population clips a perturbed value into; Ray Tune's domain of the same name samples it."""

    kind: ClassVar[str]  # the spec's key, and Ray Tune's function: uniform | loguniform
    positive: ClassVar[bool] = False  # bounds must lie above 0

    @field_validator("*")
    @classmethod
    def _finite(cls, bounds):
        return finite_range(bounds, cls.positive)

    @property
    def bounds(self) -> tuple[float, float]:
        return getattr(self, self.kind)

    def extremes(self) -> tuple[float, ...]:
        return self.bounds

    def clip_range(self) -> tuple[float, float] | None:
        return self.bounds

    def tune_domain(self, population: bool = False):
        from ray import tune

        return getattr(tune, self.kind)(*self.bounds)


class Uniform(Range):
    kind: ClassVar[str] = "uniform"
    uniform: tuple[float, float]


class LogUniform(Range):
    kind: ClassVar[str] = "loguniform"
    positive: ClassVar[bool] = True
    loguniform: tuple[float, float]


class Choice(Strict):
    choice: list[Any] = Field(min_length=1)

    def extremes(self) -> tuple[Any, ...]:
        return tuple(self.choice)

    def clip_range(self) -> None:
        """None: a perturbed choice moves to a neighbouring value, never outside the list."""
        return None

    def tune_domain(self, population: bool = False):
        """A population's choices stay a list (PBT shifts a list value to a neighbour, and would
        multiply a ``tune.choice`` value)."""
        from ray import tune

        return list(self.choice) if population else tune.choice(self.choice)


KINDS = ("uniform", "loguniform", "choice")


def _distribution_kind(value: Any) -> str | None:
    """The distribution a mapping names by its one key (``{uniform: [a, b]}``)."""
    if isinstance(value, dict):
        return next((key for key in KINDS if key in value), None)
    return next((key for key in KINDS if hasattr(value, key)), None)


Distribution = Annotated[
    Annotated[Uniform, Tag("uniform")] | Annotated[LogUniform, Tag("loguniform")] | Annotated[Choice, Tag("choice")],
    Discriminator(_distribution_kind, custom_error_type="distribution",
                  custom_error_message="expected one of {uniform: [low, high]}, {loguniform: [low, high]}, {choice: [...]}"),
]
