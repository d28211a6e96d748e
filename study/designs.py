"""Study designs by name (``design.kind`` in a spec): how many seeds each comparison gets.

- ``fixed`` (the default): every arm runs every listed seed; the report gives today's intervals.
- ``sequential``: the seeds list is an ordered, pre-registered list; after each look a comparison
  (the arm under test against one other arm and variant) whose repeated interval excludes zero, or
  lies inside the equivalence margin, is decided, and only the open ones get the next seed
  (``study.sequential``). It runs as one Ray Tune experiment whose searcher
  (``study.sequential_search``) asks the allocator for the next trials.

A design is registered as its settings model (the spec's ``design`` mapping, validated by the
model its ``kind`` names; a setting only another design takes is one line naming it)::

    @register_design("fixed")
    class Fixed(Design):
        kind: Literal["fixed"] = "fixed"

        def setup(self, spec, plans, mode_setup):
            return mode_setup

``check`` adds its rules on the spec (one line each, ValueError); ``setup`` turns the search
mode's TuneSetup into the design's. Ray is imported only in ``setup``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from study.estimate import expected_wall_time
from study.search_modes import TuneSetup
from study.sequential import DEFAULT_RHO, THESE, SequentialDesign
from trainers.registry import Registry, kind_model
from trainers.settings import Strict

MIN_SEEDS = 3  # a look's t has n - 1 degrees of freedom: at 2 seeds its boundary lies beyond any data


class Design(Strict):
    """What every design is: the spec's ``design`` settings, and how they set up a study's trials."""

    kind: str = Field("fixed", description="a name in study.designs.DESIGNS: fixed, sequential")

    def check(self, spec) -> None:
        """The design's own rules on a ``StudySpec`` (ValueError, one line)."""

    def setup(self, spec, plans, mode_setup: TuneSetup, recorder=None) -> TuneSetup:
        raise NotImplementedError

    def describe(self, spec, plans, max_concurrent: int | None) -> list[str]:
        """The dry run's lines on what the design runs and the wall time it is expected to take."""
        return [expected_wall_time(spec, plans, max_concurrent)]


DESIGNS: Registry[type[Design]] = Registry("design", check=kind_model(Design))
register_design = DESIGNS.register


def design_settings(data: Any) -> Design:
    """A spec's ``design`` settings from a mapping (``kind`` picks the registered model; default "fixed")."""
    return DESIGNS.settings_of(data, Design, "fixed")


@register_design("fixed")
class Fixed(Design):
    """Every listed seed of every arm: the search mode's own setup."""

    kind: Literal["fixed"] = "fixed"

    def setup(self, spec, plans, mode_setup: TuneSetup, recorder=None) -> TuneSetup:
        return mode_setup


def comparison_groups(plans, focus_arm: str) -> tuple[dict[str, list[str]], str]:
    """Each (arm, variant) of the plans, labelled by its trials' names without the seed ("psi",
    "static-ratio0.5"), with its plan names in the order of the study's seeds list; and the focus
    arm's label."""
    groups: dict[str, list[str]] = {}
    focus = ""
    for plan in plans:
        label = plan.name[: -len(f"-s{plan.seed}")]
        groups.setdefault(label, []).append(plan.name)
        focus = label if plan.arm == focus_arm else focus
    return groups, focus


@register_design("sequential")
class Sequential(Design):
    """A group-sequential paired t over the seeds list, one comparison per other (arm, variant)."""

    kind: Literal["sequential"] = "sequential"
    min_seeds: int = Field(4, description="the first look, after this many seeds of every comparison")
    max_seeds: int = Field(12, description="the last look; the seeds list must hold at least this many")
    alpha: float = Field(0.05, description="1 - the coverage of each comparison's repeated intervals")
    rho: float = Field(DEFAULT_RHO, gt=0, description="alpha spent by look n is alpha (n / max_seeds) ** rho "
                       "(smaller: more spent early, narrower early intervals, wider late ones)")
    equivalence: float | None = Field(None, gt=0, description="an interval inside +-this margin "
                                      "(in the metric's units) decides 'equivalent'")
    problems: Literal["these", "like these"] = Field(
        THESE, description="what the intervals speak of: these evaluation problems, or problems like them "
        "(each interval widened by the problem set's own margin, a fifth of alpha; a comparison that margin alone "
        "keeps undecided stops: more seeds cannot decide it)")
    max_trials: int | None = Field(None, ge=1, description="start no trial beyond this many")
    max_hours: float | None = Field(None, gt=0, description="start no trial after this wall time")

    def sequential(self) -> SequentialDesign:
        return SequentialDesign(self.min_seeds, self.max_seeds, self.alpha, self.rho, self.equivalence, self.problems)

    def check(self, spec) -> None:
        if self.min_seeds < MIN_SEEDS:
            raise ValueError(f"design.min_seeds: {self.min_seeds} is below {MIN_SEEDS} (a look's t interval needs "
                             f"n - 1 degrees of freedom; at 2 seeds its boundary lies beyond any data)")
        if self.max_seeds < self.min_seeds:
            raise ValueError(f"design.max_seeds: {self.max_seeds} is below design.min_seeds ({self.min_seeds})")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"design.alpha: {self.alpha:g} is outside (0, 0.5)")
        if len(spec.seeds) < self.max_seeds:
            raise ValueError(f"seeds: {len(spec.seeds)} listed, design.max_seeds asks for {self.max_seeds} "
                             "(the ordered list every comparison takes a prefix of)")
        if spec.search.mode != "grid":
            raise ValueError(f"design.kind: a sequential design drives the grid of arms; search.mode "
                             f"{spec.search.mode} chooses its own trials (use design.kind fixed)")
        own = [arm.name for arm in spec.arms if arm.seeds]
        if own:
            raise ValueError(f"arms.seeds: a sequential design takes every arm's seeds from the study's list "
                             f"(set on: {', '.join(own)})")
        focus = next(arm for arm in spec.arms if arm.name == spec.focus_arm)
        if len(focus.variants()) != 1:
            raise ValueError(f"focus: the arm under test '{focus.name}' has {len(focus.variants())} variants; a "
                             "sequential design compares one run per seed against each other arm")
        if len(spec.arms) < 2:
            raise ValueError("design.kind: a sequential design compares the arm under test with other arms; "
                             "the study has one")
        groups = sum(len(arm.variants()) for arm in spec.arms)
        if self.max_trials is not None and self.max_trials < groups * self.min_seeds:
            raise ValueError(f"design.max_trials: {self.max_trials} is less than one look of every arm "
                             f"({groups} arms and variants x {self.min_seeds} seeds = {groups * self.min_seeds})")

    def describe(self, spec, plans, max_concurrent: int | None) -> list[str]:
        """Its looks, boundaries and budgets, and its fewest and most trials with their wall times."""
        design, groups = self.sequential(), len({(p.arm, p.variant) for p in plans})
        first = [p for p in plans if spec.seeds.index(p.seed) < self.min_seeds]
        most = [p for p in plans if spec.seeds.index(p.seed) < self.max_seeds][: self.max_trials]
        return [
            f"design: sequential, the arm under test against {groups - 1} others on the seeds {spec.seeds[: self.max_seeds]} "
            f"in that order; looks at {self.min_seeds}..{self.max_seeds} seeds, repeated {1 - self.alpha:.0%} intervals "
            f"per comparison, boundaries {', '.join(f'{design.boundary(n):.2f}' for n in design.looks)}"
            + (f"; equivalent inside +-{self.equivalence:g}" if self.equivalence else "")
            + ("; on problems like these (the problem set's margin added, a fifth of alpha)" if self.problems != "these" else "")
            + (f"; at most {self.max_trials} trials" if self.max_trials else "")
            + (f"; no trial starts after {self.max_hours:g} h" if self.max_hours else ""),
            f"fewest trials {len(first)} (every comparison decided at the first look): "
            + expected_wall_time(spec, first, max_concurrent),
            f"most trials {len(most)}: " + expected_wall_time(spec, most, max_concurrent),
        ]

    def setup(self, spec, plans, mode_setup: TuneSetup, recorder=None) -> TuneSetup:
        from study.sequential_search import SequentialSearcher

        groups, focus = comparison_groups(plans, spec.focus_arm)
        searcher = SequentialSearcher(groups, focus, self, spec.search.metric, spec.search.direction,
                                      recorder=recorder)
        return TuneSetup({}, num_samples=-1, search_alg=searcher)
