"""Search modes by name (``search.mode`` in a spec): how a study's trials are chosen and scheduled.

A mode is one class and one decorator line::

    @register_search_mode("grid")
    class Grid(SearchMode):
        def setup(self, spec, plans) -> TuneSetup:
            return TuneSetup({"trial": tune.grid_search([p.name for p in plans])})

``uses`` names the ``search`` settings the mode takes (the others must be left unset), ``check``
adds the mode's own rules on the spec (one line each, raised as ValueError), and ``population``
says whether the mode moves one arm's trials as a population (PBT, PB2): that arm then runs as a
phase of its own, after the others, which run as a grid. Ray is imported only in ``setup``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from trainers.registry import Registry
from trainers.settings import lookup

SEARCH_FIELDS = ("space", "num_samples", "population")  # the mode-specific settings of ``search``


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


class SearchMode:
    uses: ClassVar[tuple[str, ...]] = ()
    population: ClassVar[bool] = False
    folder: ClassVar[str | None] = None  # its experiment runs in this child folder of the study's, under this name

    def check(self, spec) -> None:
        """The mode's own rules on a ``StudySpec`` (ValueError, one line)."""

    def setup(self, spec, plans) -> TuneSetup:
        raise NotImplementedError

    def before_restore(self, spec) -> None:
        """What the mode needs before ``Tuner.restore`` continues an interrupted phase (nothing by default)."""


SEARCH_MODES: Registry[type[SearchMode]] = Registry("search mode")
register_search_mode = SEARCH_MODES.register


def users_of(field: str) -> list[str]:
    """The search modes that take the ``search`` setting ``field``, in the order they were registered."""
    return [name for name in SEARCH_MODES.registered() if field in SEARCH_MODES[name].uses]


def tune_domain(distribution, population: bool = False):
    """A spec distribution as Ray Tune's search space; a population's choices stay a list (PBT
    shifts a list value to a neighbour, and would multiply a ``tune.choice`` value)."""
    from ray import tune

    if hasattr(distribution, "uniform"):
        return tune.uniform(*distribution.uniform)
    if hasattr(distribution, "loguniform"):
        return tune.loguniform(*distribution.loguniform)
    return list(distribution.choice) if population else tune.choice(distribution.choice)


@register_search_mode("grid")
class Grid(SearchMode):
    """Every planned trial once (arms x grid variants x seeds)."""

    def setup(self, spec, plans) -> TuneSetup:
        from ray import tune

        return TuneSetup({"trial": tune.grid_search([p.name for p in plans])})


@register_search_mode("optuna")
class Optuna(SearchMode):
    """Optuna's sampler over ``search.space`` (dotted trainer settings), ``num_samples`` trials of
    one arm and one seed (Ray Tune does not mix a grid with a searcher)."""

    uses = ("space", "num_samples")

    def check(self, spec) -> None:
        if len(spec.arms) != 1 or len(spec.seeds) != 1:
            raise ValueError("search.mode optuna takes exactly one arm and one seed (Ray Tune cannot mix a grid with a searcher)")
        if not spec.search.space:
            raise ValueError("search.space: optuna needs at least one parameter")

    def setup(self, spec, plans) -> TuneSetup:
        from ray.tune.search.optuna import OptunaSearch

        space = {"trial": plans[0].name, "search": {k: tune_domain(d) for k, d in spec.search.space.items()}}
        return TuneSetup(space, spec.search.num_samples, OptunaSearch(seed=spec.seeds[0]), trial_ids_in_names=True)


class PopulationSearch(SearchMode):
    """One arm's trials as a population, synchronous: at every perturbation step the bottom
    quantile continues from a top member's checkpoint with its settings moved (``moves``: where
    the population names what moves and how)."""

    uses = ("population",)
    population = True
    folder = "population"  # the population's experiment, inside the study's folder
    moves: ClassVar[str]  # "mutations" or "bounds"

    def check(self, spec) -> None:
        population, other = spec.search.population, {"mutations": "bounds", "bounds": "mutations"}[self.moves]
        mode = spec.search.mode
        if population is None:
            raise ValueError(f"search.population: search.mode {mode} needs one (arm, perturbation_interval, ...)")
        if not getattr(population, self.moves):
            raise ValueError(f"search.population.{self.moves}: {mode} needs at least one setting to move")
        if getattr(population, other):
            raise ValueError(f"search.population.{other}: not used by {mode} (it takes {self.moves})")
        if spec.search.asha is not None:
            raise ValueError(f"search.asha: cannot be combined with {mode} (both are schedulers)")

    def scheduler(self, spec):
        raise NotImplementedError

    def setup(self, spec, plans) -> TuneSetup:
        from ray import tune

        # each member starts from its own plan's values of the settings the population moves
        start = {p.name: {key: lookup(p.config, key) for key in spec.search.population.keys} for p in plans}
        space = {"trial": tune.grid_search([p.name for p in plans]),
                 "search": tune.sample_from(lambda resolved: dict(start[resolved.config.trial]))}
        self.seed(spec)
        # every member must exist as a trial from the start: a synchronous population waits for all
        # of them at each perturbation, and a limit on concurrent trials keeps the later ones from
        # being created until the first ones finish (they would run one after another, unranked).
        # Members still share the CPUs: the scheduler pauses and swaps them, and the next one resumes
        # in the same process; an exploit's donor runs at most one interval ahead before the
        # receiver restores its checkpoint.
        return TuneSetup(space, scheduler=self.scheduler(spec), limit_concurrency=False, reuse_actors=True,
                         keep_checkpoints=max(3, spec.search.population.perturbation_interval + 1))

    def before_restore(self, spec) -> None:
        self.seed(spec)

    @staticmethod
    def seed(spec) -> None:
        """Seed the generators PBT and PB2 draw their perturbations from (at the start, and again
        when a study resumes: the draws after a resume are reproducible, not a continuation)."""
        random.seed(spec.seeds[0])
        np.random.seed(spec.seeds[0])

    @staticmethod
    def common(spec) -> dict[str, Any]:
        population = spec.search.population
        return dict(time_attr="step", perturbation_interval=population.perturbation_interval,
                    quantile_fraction=population.quantile_fraction, synch=True)


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

    moves = "mutations"

    def scheduler(self, spec):
        from ray.tune.schedulers import PopulationBasedTraining

        population = spec.search.population
        ranges = {k: d.extremes() for k, d in population.mutations.items() if not hasattr(d, "choice")}

        def clip(config: dict) -> dict:
            for key, (low, high) in ranges.items():
                config["search"][key] = min(max(config["search"][key], low), high)
            return config

        return resumable(PopulationBasedTraining)(
            hyperparam_mutations={"search": {k: tune_domain(d, population=True) for k, d in population.mutations.items()}},
            resample_probability=population.resample_probability, custom_explore_fn=clip, **self.common(spec),
        )


@register_search_mode("pb2")
class Pb2(PopulationSearch):
    """Ray Tune's ``PB2``: the moved settings are chosen by a Gaussian-process bandit within ``bounds``."""

    moves = "bounds"

    def scheduler(self, spec):
        from ray.tune.schedulers.pb2 import PB2

        bounds = {"search": {k: list(v) for k, v in spec.search.population.bounds.items()}}
        return resumable(PB2)(hyperparam_bounds=bounds, **self.common(spec))
