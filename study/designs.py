"""Study designs by name (``design.kind`` in a spec): how many seeds each comparison gets.

- ``fixed`` (the default): every arm runs every listed seed; the report gives today's intervals.
- ``sequential``: the seeds list is an ordered, pre-registered list; after each look a comparison
  (the arm under test against one other arm and variant) whose repeated interval excludes zero, or
  lies inside the equivalence margin, is decided, and only the open ones get the next seed
  (``study.sequential``). It runs as one Ray Tune experiment whose searcher
  (``study.sequential_search``) asks the allocator for the next trials.

A design is one class and one decorator line::

    @register_design("fixed")
    class Fixed(Design):
        def setup(self, spec, plans, mode_setup):
            return mode_setup

``check`` adds its rules on the spec (one line each, ValueError); ``uses`` names the ``design``
settings it takes (the others must be left unset); ``setup`` turns the search mode's TuneSetup
into the design's. Ray is imported only in ``setup``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from study.search_modes import TuneSetup
from study.sequential import DEFAULT_RHO, THESE, SequentialDesign
from trainers.registry import Registry
from trainers.settings import Strict

SEQUENTIAL_FIELDS = ("min_seeds", "max_seeds", "alpha", "rho", "equivalence", "problems", "max_trials", "max_hours")
MIN_SEEDS = 3  # a look's t has n - 1 degrees of freedom: at 2 seeds its boundary lies beyond any data


class Design:
    uses: ClassVar[tuple[str, ...]] = ()

    def check(self, spec) -> None:
        """The design's own rules on a ``StudySpec`` (ValueError, one line)."""

    def setup(self, spec, plans, mode_setup: TuneSetup, recorder=None) -> TuneSetup:
        raise NotImplementedError


DESIGNS: Registry[type[Design]] = Registry("design")
register_design = DESIGNS.register


class DesignSettings(Strict):
    kind: DESIGNS.Name = Field("fixed", description="a name in study.designs.DESIGNS: fixed, sequential")
    min_seeds: int = Field(4, description="sequential: the first look, after this many seeds of every comparison")
    max_seeds: int = Field(12, description="sequential: the last look; the seeds list must hold at least this many")
    alpha: float = Field(0.05, description="sequential: 1 - the coverage of each comparison's repeated intervals")
    rho: float = Field(DEFAULT_RHO, gt=0, description="sequential: alpha spent by look n is alpha (n / max_seeds) ** rho "
                       "(smaller: more spent early, narrower early intervals, wider late ones)")
    equivalence: float | None = Field(None, gt=0, description="sequential: an interval inside +-this margin "
                                      "(in the metric's units) decides 'equivalent'")
    problems: Literal["these", "like these"] = Field(
        THESE, description="sequential: what the intervals speak of: these evaluation problems, or problems like them "
        "(each interval widened by the problem set's own margin, a fifth of alpha; a comparison that margin alone "
        "keeps undecided stops: more seeds cannot decide it)")
    max_trials: int | None = Field(None, ge=1, description="sequential: start no trial beyond this many")
    max_hours: float | None = Field(None, gt=0, description="sequential: start no trial after this wall time")

    def sequential(self) -> SequentialDesign:
        return SequentialDesign(self.min_seeds, self.max_seeds, self.alpha, self.rho, self.equivalence, self.problems)


@register_design("fixed")
class Fixed(Design):
    """Every listed seed of every arm: the search mode's own setup."""

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

    uses = SEQUENTIAL_FIELDS

    def check(self, spec) -> None:
        d = spec.design
        if d.min_seeds < MIN_SEEDS:
            raise ValueError(f"design.min_seeds: {d.min_seeds} is below {MIN_SEEDS} (a look's t interval needs "
                             f"n - 1 degrees of freedom; at 2 seeds its boundary lies beyond any data)")
        if d.max_seeds < d.min_seeds:
            raise ValueError(f"design.max_seeds: {d.max_seeds} is below design.min_seeds ({d.min_seeds})")
        if not 0 < d.alpha < 0.5:
            raise ValueError(f"design.alpha: {d.alpha:g} is outside (0, 0.5)")
        if len(spec.seeds) < d.max_seeds:
            raise ValueError(f"seeds: {len(spec.seeds)} listed, design.max_seeds asks for {d.max_seeds} "
                             "(the ordered list every comparison takes a prefix of)")
        if spec.search.population_search or spec.search.mode != "grid":
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
        if d.max_trials is not None and d.max_trials < groups * d.min_seeds:
            raise ValueError(f"design.max_trials: {d.max_trials} is less than one look of every arm "
                             f"({groups} arms and variants x {d.min_seeds} seeds = {groups * d.min_seeds})")

    def setup(self, spec, plans, mode_setup: TuneSetup, recorder=None) -> TuneSetup:
        from study.sequential_search import SequentialSearcher

        groups, focus = comparison_groups(plans, spec.focus_arm)
        searcher = SequentialSearcher(groups, focus, spec.design, spec.search.metric, spec.search.direction,
                                      recorder=recorder)
        return TuneSetup({}, num_samples=-1, search_alg=searcher)
