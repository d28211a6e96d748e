"""Search modes by name (``search.mode`` in a spec): how a study's trials are chosen and scheduled.

A mode is registered as its settings model (the spec's ``search`` mapping, validated by the model
its ``mode`` names; a setting that only another mode takes is one line naming that mode)::

    @register_search_mode("grid")
    class Grid(SearchMode):
        mode: Literal["grid"] = "grid"

        def setup(self, spec, plans) -> TuneSetup:
            return TuneSetup({"trial": tune.grid_search([p.name for p in plans])})

``check`` adds the mode's own rules on the spec (one line each, raised as ValueError); ``drawn``
and ``config_problems`` let the spec's check validate every trainer setting the mode can draw;
``phases`` splits the plans into the Ray Tune experiments the study runs one after the other (a
population's arm apart from a grid of the others); ``setup`` gives an experiment's Tuner its space,
searcher, scheduler and options. Ray is imported only where a Tuner is set up.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from study.space import Choice, Distribution, LogUniform, Uniform, finite_range
from trainers import contract as M
from trainers.config import TrainConfig
from trainers.registry import Registry, kind_model
from trainers.settings import Strict, deep_merge, dotted, lookup


@dataclass
class TuneSetup:
    """What a mode gives a phase's ``tune.Tuner``: its search space, searcher and scheduler, and
    the Tuner options the mode needs (a population's: every member from the start, actors reused,
    more checkpoints kept)."""

    param_space: dict[str, Any]
    num_samples: int = 1
    search_alg: Any = None
    scheduler: Any = None
    trial_ids_in_names: bool = False  # sampled trials share a plan: their names carry the trial id
    limit_concurrency: bool = True  # False: no cap on concurrent trials (a synchronous population waits for all)
    reuse_actors: bool = False  # True: a paused trial resumes in the same process
    keep_checkpoints: int = 2


class SearchMode(Strict):
    """What every search mode is: the spec's ``search`` settings, and how they turn a study's trial
    plans into Ray Tune experiments."""

    mode: str = Field("grid", description="a name in study.search_modes.SEARCH_MODES: grid, optuna, pbt, pb2")
    metric: str = M.EVAL_AES
    direction: Literal["max", "min"] = "max"
    folder: ClassVar[str | None] = None  # its experiment runs in this child folder of the study's, under this name

    @property
    def trials_per_plan(self) -> int:
        """How many trials the mode runs from one plan (a searcher samples several)."""
        return 1

    @property
    def stops_trials_early(self) -> bool:
        return False

    @property
    def moved_arm(self) -> str | None:
        """The arm whose trials the mode changes while they run (a population's), or None."""
        return None

    def changeable(self) -> list[str]:
        """The dotted settings a trial may be handed by the mode while it runs."""
        return []

    def check(self, spec) -> None:
        """The mode's own rules on a ``StudySpec`` (ValueError, one line)."""

    def drawn(self, spec) -> Iterator[tuple[str, dict[str, Any]]]:
        """(where, trainer settings) for every extreme the mode can draw: each must be a valid TrainConfig."""
        return iter(())

    def config_problems(self, spec, arm: str, config: TrainConfig, smoke: bool) -> list[str]:
        """The mode's rules on one trial config of ``arm`` (one line each)."""
        return []

    @staticmethod
    def at_extremes(spec, arm, where: str, extremes: dict[str, tuple[Any, ...]]) -> Iterator[tuple[str, dict[str, Any]]]:
        """``drawn``'s pairs: each of ``arm``'s settings with one dotted key set to one of its extremes."""
        for key, values in extremes.items():
            for value in values:
                for _, settings in arm.settings(spec.base):
                    yield f"{where}.{key} = {value!r}: ", deep_merge(settings, dotted(key, value))

    def phases(self, plans: list) -> list[tuple[str, list, SearchMode]]:
        """(name, plans, the mode that sets it up): the experiments the study runs, one after the other."""
        return [("grid", plans, self)]

    def describe(self) -> str | None:
        """A line for the dry run, where the plans alone do not say what the mode does."""
        return None

    def setup(self, spec, plans) -> TuneSetup:
        raise NotImplementedError

    def before_restore(self, spec) -> None:
        """What the mode needs before ``Tuner.restore`` continues an interrupted phase (nothing by default)."""


SEARCH_MODES: Registry[type[SearchMode]] = Registry("search mode", check=kind_model(SearchMode, key="mode"))
register_search_mode = SEARCH_MODES.register


def search_settings(data: Any) -> SearchMode:
    """A spec's ``search`` settings from a mapping (``mode`` picks the registered model; default "grid")."""
    return SEARCH_MODES.settings_of(data, SearchMode, "grid", key="mode")


class Asha(Strict):
    grace_period: int = Field(1, ge=1, description="steps before a trial can be stopped")
    reduction_factor: float = Field(2.0, gt=1.0)


class EarlyStopping(SearchMode):
    """A mode whose trials ASHA may stop early (``asha``: Ray Tune's ``ASHAScheduler`` over steps)."""

    asha: Asha | None = None

    @property
    def stops_trials_early(self) -> bool:
        return self.asha is not None

    def scheduler(self, plans):
        if self.asha is None:
            return None
        from ray.tune.schedulers import ASHAScheduler

        max_steps = max(TrainConfig.of(p.config).train.steps for p in plans)
        return ASHAScheduler(time_attr="step", max_t=max_steps, grace_period=min(self.asha.grace_period, max_steps),
                             reduction_factor=self.asha.reduction_factor)


@register_search_mode("grid")
class Grid(EarlyStopping):
    """Every planned trial once (arms x grid variants x seeds)."""

    mode: Literal["grid"] = "grid"

    def setup(self, spec, plans) -> TuneSetup:
        from ray import tune

        return TuneSetup({"trial": tune.grid_search([p.name for p in plans])}, scheduler=self.scheduler(plans))


@register_search_mode("optuna")
class Optuna(EarlyStopping):
    """Optuna's sampler over ``space`` (dotted trainer settings), ``num_samples`` trials of one arm
    and one seed (Ray Tune does not mix a grid with a searcher)."""

    mode: Literal["optuna"] = "optuna"
    num_samples: int = Field(8, ge=1, description="number of trials")
    space: dict[str, Distribution] = Field(default_factory=dict, description="dotted TrainConfig keys, e.g. lead.weighting.lambda_min")

    @property
    def trials_per_plan(self) -> int:
        return self.num_samples

    def check(self, spec) -> None:
        if len(spec.arms) != 1 or len(spec.seeds) != 1:
            raise ValueError("search.mode optuna takes exactly one arm and one seed (Ray Tune cannot mix a grid with a searcher)")
        if not self.space:
            raise ValueError("search.space: optuna needs at least one parameter")

    def drawn(self, spec) -> Iterator[tuple[str, dict[str, Any]]]:
        return self.at_extremes(spec, spec.arms[0], "search.space", {k: d.extremes() for k, d in self.space.items()})

    def setup(self, spec, plans) -> TuneSetup:
        from ray.tune.search.optuna import OptunaSearch

        space = {"trial": plans[0].name, "search": {k: d.tune_domain() for k, d in self.space.items()}}
        return TuneSetup(space, self.num_samples, OptunaSearch(seed=spec.seeds[0]), self.scheduler(plans),
                         trial_ids_in_names=True)


class Population(Strict):
    """Population Based Training (``pbt``, Ray Tune's ``PopulationBasedTraining``) or PB2 (``pb2``,
    its Gaussian-process bandit) over one arm's trials: every ``perturbation_interval`` steps, the
    members in the bottom ``quantile_fraction`` by ``search.metric`` continue from the checkpoint
    of one in the top quantile, with its settings perturbed (PBT: times 0.8 or 1.2, or resampled
    with ``resample_probability``, kept inside the space; PB2: chosen by the bandit inside
    ``bounds``). Synchronous: every member reaches the step before any exploit, so each exploit
    continues the donor's run at the step the receiver stopped. The study's other arms run beside
    the population, untouched by it."""

    arm: str = Field(description="the arm whose trials (variants x seeds) form the population")
    perturbation_interval: int = Field(ge=1, description="steps between exploits; a multiple of eval.every")
    quantile_fraction: float = Field(0.25, gt=0.0, le=0.5)
    resample_probability: float = Field(0.25, ge=0.0, le=1.0, description="pbt only")
    mutations: dict[str, Uniform | LogUniform | Choice] = Field(
        default_factory=dict, description="pbt: dotted TrainConfig keys and the space each moves in"
    )
    bounds: dict[str, tuple[float, float]] = Field(default_factory=dict, description="pb2: dotted keys and [low, high]")

    @field_validator("bounds")
    @classmethod
    def _ranges(cls, bounds):
        return {key: finite_range(value) for key, value in bounds.items()}

    @property
    def keys(self) -> tuple[str, ...]:
        """The settings the population changes."""
        return tuple(self.mutations or self.bounds)

    def extremes(self) -> dict[str, tuple[Any, ...]]:
        return {key: dist.extremes() for key, dist in self.mutations.items()} | dict(self.bounds)


class PopulationSearch(SearchMode):
    """One arm's trials as a population, synchronous: at every perturbation step the bottom
    quantile continues from a top member's checkpoint with its settings moved (``moves``: where
    the population names what moves and how). The other arms run first, as a grid."""

    population: Population = Field(description="the population and how it moves")
    folder = "population"  # the population's experiment, inside the study's folder
    moves: ClassVar[str]  # "mutations" or "bounds"

    @property
    def moved_arm(self) -> str:
        return self.population.arm

    def changeable(self) -> list[str]:
        return list(self.population.keys)

    def check(self, spec) -> None:
        population, other = self.population, {"mutations": "bounds", "bounds": "mutations"}[self.moves]
        if not getattr(population, self.moves):
            raise ValueError(f"search.population.{self.moves}: {self.mode} needs at least one setting to move")
        if getattr(population, other):
            raise ValueError(f"search.population.{other}: not used by {self.mode} (it takes {self.moves})")
        arm = self.arm(spec)
        if arm is None:
            raise ValueError(f"search.population.arm: no arm named '{population.arm}' "
                             f"(arms: {', '.join(a.name for a in spec.arms)})")
        members = len(arm.variants()) * len(spec.arm_seeds(arm, smoke=False))
        if members < 2:
            raise ValueError(f"search.population.arm: '{arm.name}' has {members} trial; a population needs at least 2 "
                             "(weight variants x seeds)")

    def arm(self, spec):
        """The spec's arm the population is made of (None: no arm of that name)."""
        return next((arm for arm in spec.arms if arm.name == self.population.arm), None)

    def drawn(self, spec) -> Iterator[tuple[str, dict[str, Any]]]:
        return self.at_extremes(spec, self.arm(spec), f"search.population.{self.moves}", self.population.extremes())

    def config_problems(self, spec, arm: str, config: TrainConfig, smoke: bool) -> list[str]:
        """An exploit must not replace a member's weights after its final evaluation, nor rank members
        on stale evaluations, nor continue from a checkpoint older than the donor's step."""
        interval, steps, where = self.population.perturbation_interval, config.train.steps, ", under --smoke-test" * smoke
        if arm != self.population.arm or interval >= steps:
            return []  # no exploit happens
        problems = []
        if steps % interval == 0:
            problems.append(f"search.population.perturbation_interval: {interval} divides train.steps ({steps}{where}): "
                            "an exploit at the last step would replace a member's weights after its final evaluation")
        if self.metric.startswith(M.EVALUATION_PREFIXES) and interval % config.eval.every:
            problems.append(f"search.population.perturbation_interval: {interval} is not a multiple of eval.every "
                            f"({config.eval.every}{where}): members would be ranked on stale evaluations and exploit "
                            "checkpoints older than their step")
        elif interval % config.checkpoint.every:
            problems.append(f"search.population.perturbation_interval: {interval} is not a multiple of checkpoint.every "
                            f"({config.checkpoint.every}{where}): an exploit would continue from a checkpoint older "
                            "than the donor's step")
        return problems

    def phases(self, plans: list) -> list[tuple[str, list, SearchMode]]:
        others = Grid(metric=self.metric, direction=self.direction)
        return [("grid", [p for p in plans if p.arm != self.population.arm], others),
                ("population", [p for p in plans if p.arm == self.population.arm], self)]

    def describe(self) -> str:
        return f"{self.population.arm}: a {self.mode} population over {', '.join(self.population.keys)}"

    def scheduler(self, plans):
        raise NotImplementedError

    def setup(self, spec, plans) -> TuneSetup:
        from ray import tune

        # each member starts from its own plan's values of the settings the population moves
        start = {p.name: {key: lookup(p.config, key) for key in self.population.keys} for p in plans}
        space = {"trial": tune.grid_search([p.name for p in plans]),
                 "search": tune.sample_from(lambda resolved: dict(start[resolved.config.trial]))}
        self.seed(spec)
        # every member must exist as a trial from the start: a synchronous population waits for all
        # of them at each perturbation, and a limit on concurrent trials keeps the later ones from
        # being created until the first ones finish (they would run one after another, unranked).
        # Members still share the CPUs: the scheduler pauses and swaps them, and the next one resumes
        # in the same process; an exploit's donor runs at most one interval ahead before the
        # receiver restores its checkpoint.
        return TuneSetup(space, scheduler=self.scheduler(plans), limit_concurrency=False, reuse_actors=True,
                         keep_checkpoints=max(3, self.population.perturbation_interval + 1))

    def before_restore(self, spec) -> None:
        self.seed(spec)

    @staticmethod
    def seed(spec) -> None:
        """Seed the generators PBT and PB2 draw their perturbations from (at the start, and again
        when a study resumes: the draws after a resume are reproducible, not a continuation)."""
        random.seed(spec.seeds[0])
        np.random.seed(spec.seeds[0])

    def common(self) -> dict[str, Any]:
        return dict(time_attr="step", perturbation_interval=self.population.perturbation_interval,
                    quantile_fraction=self.population.quantile_fraction, synch=True)


def resumable(scheduler_class: type) -> type:
    """``scheduler_class`` (Ray Tune's synchronous PBT, or PB2) made to resume: Tune saves no
    scheduler state, so on ``--resume`` a restored scheduler took every member for one at step 0;
    the first member to report then started a perturbation and paused, and a member paused at its
    last step was never chosen again (the study hung with every member ``PAUSED``). Here a member
    restored from a checkpoint starts from what that checkpoint holds: its time is the checkpoint's
    step, its last perturbation the interval boundary at or below it, its score the checkpoint's
    metric; and the next synchronization is the boundary after the slowest restored member.

    A restored member is ``PAUSED``, as it was when the population waited for it: Tune starts every
    ``PENDING`` trial at once, and one ahead of the others would train past the synchronization
    they are catching up to. And the next synchronization always lies ahead of the slowest live
    member: when a lagging member exploits a donor more than one interval ahead, Tune's next
    synchronization (``max(next + interval, latest member)``) can equal every member's time, and no
    member would be chosen to run again (a study hung so, with every member ``PAUSED``); then the
    population skips that one ranking and goes on."""

    from ray.tune.experiment import Trial

    class Resumable(scheduler_class):
        def on_trial_add(self, tune_controller, trial) -> None:
            super().on_trial_add(tune_controller, trial)
            saved = trial.latest_checkpoint_result
            metrics = (saved.metrics or {}) if saved is not None else {}
            step = int(metrics.get(self._time_attr) or 0)
            if step <= 0:
                return
            trial.set_status(Trial.PAUSED)  # chosen to run when the population reaches it
            interval, state = self._perturbation_interval, self._trial_state[trial]
            state.last_train_time, state.last_perturbation_time = step, step - step % interval
            if self._metric in metrics:
                state.last_score, state.last_result = self._metric_op * metrics[self._metric], dict(metrics)
            slowest = min(s.last_train_time for s in self._trial_state.values() if s.last_train_time > 0)
            self._next_perturbation_sync = max(interval, (slowest // interval + 1) * interval)

        def on_trial_result(self, tune_controller, trial, result: dict) -> str:
            decision = super().on_trial_result(tune_controller, trial, result)
            times = [self._trial_state[t].last_train_time for t in tune_controller.get_live_trials()]
            if times and self._next_perturbation_sync <= min(times):
                interval = self._perturbation_interval
                self._next_perturbation_sync = (min(times) // interval + 1) * interval
            return decision

    Resumable.__name__ = Resumable.__qualname__ = f"Resumable{scheduler_class.__name__}"
    return Resumable


@register_search_mode("pbt")
class Pbt(PopulationSearch):
    """Ray Tune's ``PopulationBasedTraining``: a perturbed setting is times 0.8 or 1.2 (a choice
    shifts to a neighbour), or resampled with ``resample_probability``, clipped into its space."""

    mode: Literal["pbt"] = "pbt"
    moves = "mutations"

    def scheduler(self, plans):
        from ray.tune.schedulers import PopulationBasedTraining

        population = self.population
        ranges = {k: r for k, d in population.mutations.items() if (r := d.clip_range()) is not None}

        def clip(config: dict) -> dict:
            for key, (low, high) in ranges.items():
                config["search"][key] = min(max(config["search"][key], low), high)
            return config

        return resumable(PopulationBasedTraining)(
            hyperparam_mutations={"search": {k: d.tune_domain(population=True) for k, d in population.mutations.items()}},
            resample_probability=population.resample_probability, custom_explore_fn=clip, **self.common(),
        )


@register_search_mode("pb2")
class Pb2(PopulationSearch):
    """Ray Tune's ``PB2``: the moved settings are chosen by a Gaussian-process bandit within ``bounds``."""

    mode: Literal["pb2"] = "pb2"
    moves = "bounds"

    def scheduler(self, plans):
        from ray.tune.schedulers.pb2 import PB2

        bounds = {"search": {k: list(v) for k, v in self.population.bounds.items()}}
        return resumable(PB2)(hyperparam_bounds=bounds, **self.common())
