"""TrainConfig: one fully resolved training run, typed and validated (pydantic).

Unknown keys are errors. ``format_error`` turns a validation error into one line that names the
field path, e.g. ``train.lr: Input should be greater than 0``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SerializeAsAny, field_validator, model_serializer, model_validator

from trainers.actor import BACKENDS
from trainers.actor.aggregation import LOSS_AGGREGATIONS
from trainers.actor.losses import POLICY_LOSSES
from trainers.io.remote import is_uri
from trainers.loop.group_filters import GroupFilter, KeepAll, group_filter_settings
from trainers.method.lead import LeadConfig
from trainers.method.weightings import WEIGHTINGS
from trainers.models.tiny import TinyModelConfig
from trainers.rollout import ENGINES
from trainers.rollout.base import EngineSpec, SamplingParams
from trainers.settings import Strict, deep_merge, load_validated, must_exist, omit_empty, with_plugins
from trainers.tasks import TaskSettings, task_settings
from trainers.tasks.synthetic import SyntheticTaskConfig


class ModelConfig(Strict):
    path: Path | str | None = Field(
        None, description="a Hugging Face model directory, local or a URI pyarrow opens (s3://, gs://: downloaded "
        "once into the cache); None builds the tiny base model")
    cache_dir: Path | None = Field(None, description="where built base models and base evaluations are cached")
    tiny: TinyModelConfig = TinyModelConfig()
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["float32", "bfloat16"] = "float32"

    @field_validator("path")
    @classmethod
    def _is_model_directory(cls, path: Path | str | None) -> Path | str | None:
        """A URI stays as it is (checked when the run starts, ``trainers.io.remote``); a local path
        must be a model directory."""
        if path is not None and not is_uri(path):
            path = Path(path).expanduser().resolve()
            must_exist(path / "config.json", f"{path} is not a model directory (no config.json)")
        return path


BudgetSchedule = list[tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=1)]]]


class RolloutConfig(Strict):
    engine: ENGINES.Name = Field("hf", description="the rollout engine, a name in trainers.rollout.ENGINES")
    engine_options: dict[str, Any] = Field(default_factory=dict, description="the engine's own settings (its Settings model)")
    n: int = Field(8, ge=1, description="rollouts per prompt")
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: Annotated[int, Field(ge=1)] | BudgetSchedule = Field(
        160,
        description="the response budget, or a schedule [[step, budget], ...] from step 0 (ThinkPrune's "
        "shrinking budget: each budget holds from its step until the next)",
    )
    max_prompt_tokens: int = Field(64, ge=1)
    group_filter: SerializeAsAny[GroupFilter] = Field(
        KeepAll(), description="which graded rollouts train, kind: a name in trainers.loop.group_filters.GROUP_FILTERS: "
        "none | dynamic_sampling (DAPO) | gfpo"
    )
    gpu_memory_utilization: float = Field(
        0.4, gt=0.0, le=1.0, description="vllm on a GPU: its share of the GPU's memory, weights and KV cache "
        "(it shares the GPU with training, and sleeps while the policy updates)"
    )

    _filter_by_kind = field_validator("group_filter", mode="wrap")(lambda value, handler: group_filter_settings(value))

    @model_validator(mode="after")
    def _engine_options(self) -> "RolloutConfig":
        ENGINES.check_options(self.engine, self.engine_options, "engine_options")
        return self

    @model_serializer(mode="wrap")
    def _without_empty_options(self, handler) -> dict[str, Any]:
        return omit_empty(handler(self), "engine_options")

    @field_validator("max_new_tokens")
    @classmethod
    def _schedule_from_step_zero(cls, budget: int | BudgetSchedule) -> int | BudgetSchedule:
        if isinstance(budget, list):
            steps = [step for step, _ in budget]
            if not steps or steps[0] != 0 or any(b <= a for a, b in zip(steps, steps[1:])):
                raise ValueError(f"a budget schedule starts at step 0 and its steps increase, got steps {steps}")
        return budget

    def budget_at(self, step: int) -> int:
        """The response budget of training step ``step`` (0-based)."""
        if isinstance(self.max_new_tokens, int):
            return self.max_new_tokens
        return [budget for start, budget in self.max_new_tokens if start <= step][-1]

    @property
    def max_budget(self) -> int:
        """The largest budget the run ever uses."""
        return max_budget(self.max_new_tokens)


def max_budget(max_new_tokens: int | list) -> int:
    """The largest budget of a fixed budget or a schedule (raw or validated)."""
    return max_new_tokens if isinstance(max_new_tokens, int) else max(budget for _, budget in max_new_tokens)


class OptimConfig(Strict):
    backend: BACKENDS.Name = Field("single", description="the training backend, a name in trainers.actor.BACKENDS")
    backend_options: dict[str, Any] = Field(default_factory=dict, description="the backend's own settings (its Settings model)")
    workers: int = Field(1, ge=1, description="training processes (deepspeed: one per GPU, or CPU processes on gloo)")
    zero_stage: Literal[1, 2, 3] = Field(2, description="deepspeed: ZeRO stage")
    gradient_checkpointing: bool = Field(False, description="recompute each layer's activations in the backward pass")
    steps: int = Field(150, ge=1)
    prompts_per_step: int = Field(16, ge=1)
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    mini_batch_size: int = Field(64, ge=1, description="rollouts per optimizer step")
    micro_batch_size: int = Field(16, ge=1, description="rollouts per forward/backward pass (length-sorted)")
    ppo_epochs: int = Field(1, ge=1)
    clip_ratio: float = Field(0.2, gt=0.0, description="lower clip: the ratio is kept above 1 - clip_ratio")
    clip_ratio_high: float | None = Field(
        None, gt=0.0, description="upper clip: the ratio is kept below 1 + clip_ratio_high; None: clip_ratio"
    )
    clip_ratio_c: float | None = Field(
        None, gt=1.0, description="dual clip: for negative advantages the loss is at most -A clip_ratio_c (verl 3, "
        "DLER 10); None: off"
    )
    policy_loss: POLICY_LOSSES.Name = Field(
        "ppo_clip", description="a name in trainers.actor.losses.POLICY_LOSSES: ppo_clip (PPO's clipped token ratio) "
        "| gspo (GSPO's sequence ratio)")
    loss_aggregation: LOSS_AGGREGATIONS.Name = Field(
        "token_mean", description="a name in trainers.actor.aggregation.LOSS_AGGREGATIONS: token_mean (over the "
        "mini-batch's response tokens) | budget (Dr. GRPO: each sequence's sum over the generation budget, mean over sequences)"
    )
    kl_coef: float = Field(5e-4, ge=0.0)
    kl_type: Literal["mse", "low_var_kl"] = "mse"
    entropy_coef: float = Field(0.001, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)

    @model_serializer(mode="wrap")
    def _without_empty_options(self, handler) -> dict[str, Any]:
        data = omit_empty(handler(self), "backend_options")
        if data.get("policy_loss") == "ppo_clip":  # the default: a config written before it existed keeps its hash
            del data["policy_loss"]
        return data

    @model_validator(mode="after")
    def _one_single_worker(self) -> "OptimConfig":
        BACKENDS.check_options(self.backend, self.backend_options, "backend_options")
        if self.clip_ratio_c is not None and not getattr(POLICY_LOSSES.lookup(self.policy_loss), "dual_clip", False):
            raise ValueError(f"clip_ratio_c: the {self.policy_loss} policy loss has no dual clip; remove clip_ratio_c")
        if self.backend == "single" and self.workers != 1:
            raise ValueError(f"workers: the single backend trains in one process (got {self.workers}); use backend: deepspeed")
        return self


class EvalConfig(Strict):
    every: int = Field(25, ge=1, description="evaluate every this many steps, and at the end")
    n_samples: int = Field(1, ge=1, description="samples per problem; pass@1 is averaged over them")
    temperature: float = Field(0.8, ge=0.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    max_new_tokens: int | None = Field(None, ge=1, description="None: the rollout budget (its largest, if scheduled)")
    num_problems: int | None = Field(None, ge=1, description="None: the task's whole eval set")
    batch_size: int = Field(512, ge=1, description="prompts per generate call")


class CheckpointConfig(Strict):
    every: int = Field(25, ge=1)
    keep_last: int = Field(2, ge=1)


class TrainConfig(Strict):
    seed: int = 0
    task: SerializeAsAny[TaskSettings] = SyntheticTaskConfig()
    model: ModelConfig = ModelConfig()
    rollout: RolloutConfig = RolloutConfig()
    train: OptimConfig = OptimConfig()
    lead: LeadConfig = Field(description="lead.bmax defaults to the run's largest response budget (run_defaults)")
    eval: EvalConfig = EvalConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    plugins: list[str] = Field(default_factory=list, description="your own rewards, weightings, ...: .py files or "
                               "module names, imported before the rest is validated (trainers.plugins)")

    _task_by_kind = field_validator("task", mode="wrap")(lambda value, handler: task_settings(value))

    @classmethod
    def of(cls, data: dict[str, Any]) -> "TrainConfig":
        """Settings validated after the plugins they name are imported (``with_plugins``: a
        validator never imports), e.g. in a trial's own process; a plugin that fails is a
        validation-style ValueError naming it."""
        return cls.model_validate(with_plugins(data))

    @model_validator(mode="before")
    @classmethod
    def _run_defaults(cls, data: Any) -> Any:
        """The defaults that follow the run (``run_defaults``)."""
        return run_defaults(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.lead.bmax > self.rollout.max_budget:
            raise ValueError(f"lead.bmax ({self.lead.bmax}) exceeds rollout.max_new_tokens ({self.rollout.max_budget})")
        train, rollouts = self.train, self.train.prompts_per_step * self.rollout.n
        if train.backend == "deepspeed" and train.zero_stage == 3 and (train.ppo_epochs > 1 or train.mini_batch_size < rollouts):
            raise ValueError(
                f"train.zero_stage: ZeRO-3 runs one optimizer step per batch here (mini_batch_size >= "
                f"prompts_per_step x rollout.n = {rollouts}, ppo_epochs 1): the no-grad pass that several "
                "steps need hangs ZeRO-3's parameter trace (a known limitation); use zero_stage 2"
            )
        if self.train.mini_batch_size % self.train.micro_batch_size:
            raise ValueError("train.mini_batch_size must be a multiple of train.micro_batch_size")
        self.task.check_run(self)
        self.rollout.group_filter.check_run(self.rollout.n)
        return self

    @model_serializer(mode="wrap")
    def _without_empty_plugins(self, handler) -> dict[str, Any]:
        return omit_empty(handler(self), "plugins")

    def rollout_sampling(self, step: int) -> SamplingParams:
        """Sampling of training step ``step`` (0-based), with that step's budget."""
        return SamplingParams(self.rollout.temperature, self.rollout.top_p, self.rollout.budget_at(step))

    def engine_spec(self, model_path: Path) -> EngineSpec:
        """What the rollout engine needs besides the model: room for the longest prompt and budget."""
        longest = max(self.rollout.max_budget, self.eval_sampling.max_new_tokens)
        return EngineSpec(
            model_path, self.rollout.max_prompt_tokens + longest, self.model.dtype, self.seed,
            self.rollout.gpu_memory_utilization, self.rollout.engine_options,
        )

    @property
    def eval_sampling(self) -> SamplingParams:
        budget = self.eval.max_new_tokens or self.rollout.max_budget
        return SamplingParams(self.eval.temperature, self.eval.top_p, budget)

    def smoke(self) -> "TrainConfig":
        """The same run, shrunk to a quick check (``SMOKE_SETTINGS``); a run that builds its own
        base model builds a small one on shorter sums (``SMOKE_BASE_MODEL``: seconds, not minutes)."""
        shrink = SMOKE_SETTINGS if self.model.path else deep_merge(SMOKE_SETTINGS, SMOKE_BASE_MODEL)
        return self.model_validate(fit_group_filter(deep_merge(self.model_dump(), shrink)))


# A run shrunk to a quick check: 2 steps, tiny batches, one evaluation of 16 problems.
SMOKE_SETTINGS = {
    "train": {"steps": 2, "prompts_per_step": 2, "mini_batch_size": 4, "micro_batch_size": 4},
    "rollout": {"n": 2},
    "eval": {"every": 2, "n_samples": 1, "num_problems": 16},
    "checkpoint": {"every": 1},
}


def fit_group_filter(settings: dict) -> dict:
    """A shrunk run's settings with its group filter fitted to the smoke test's rollouts per prompt
    (``GroupFilter.smoke``: GFPO keeps fewer than ``rollout.n``); settings that do not validate
    are left for validation to name."""
    rollout = settings.get("rollout")
    if not isinstance(rollout, dict) or not isinstance(rollout.get("group_filter"), (dict, GroupFilter)):
        return settings
    try:
        fitted = group_filter_settings(rollout["group_filter"]).smoke(int(rollout.get("n", RolloutConfig().n)))
    except (ValueError, TypeError):
        return settings
    return {**settings, "rollout": {**rollout, "group_filter": fitted}}


SMOKE_BASE_MODEL = {
    "model": {"tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128, "sft_steps": 250}},
    "task": {"max_terms": 5},
}


def run_defaults(data: dict) -> dict:
    """The settings whose default follows the run: ``lead.bmax`` is the (largest) response budget,
    and a weighting's run-dependent settings are the run's (``Weighting.for_run``: a schedule spans
    ``train.steps``)."""
    lead = data.get("lead", {})
    if not isinstance(lead, dict):
        return data
    budget = (data.get("rollout") or {}).get("max_new_tokens", RolloutConfig().max_new_tokens)
    try:
        lead = {"bmax": max_budget(budget), **lead}
    except (TypeError, ValueError):  # a malformed budget: its own validation names it
        pass
    weighting, steps = lead.get("weighting"), (data.get("train") or {}).get("steps", OptimConfig().steps)
    if isinstance(weighting, dict) and weighting.get("kind", "psi") in WEIGHTINGS and isinstance(steps, int):
        lead["weighting"] = WEIGHTINGS[weighting.get("kind", "psi")].for_run(weighting, steps)
    return {**data, "lead": lead}


def load_train_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """A run config from YAML, with ``KEY=VALUE`` overrides (``train.steps=30 seed=1``) applied before validation."""
    return load_validated(path, TrainConfig, overrides)
