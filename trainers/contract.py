"""The tracking contract: every name the writer (the trainer, ``study/``) and the reader
(``analysis/``) share, defined once.

- metric names and their prefixes (every training step emits at least ``STEP_METRICS``, every
  evaluation at least ``EVAL_METRICS``; ``lead/<name>`` carries every float of ``lead_step``'s metrics);
- MLflow tags (the method tags included, from ``method_tags``), artifact paths and Parquet schemas;
- how a dotted setting becomes an MLflow param (``params``) and a column of the runs table
  (``param_column``), and how a metric becomes a column (``final_column``, ``best_column``).

Plain names and pyarrow schemas only: no MLflow here (the trainer knows nothing of it).
"""

import pyarrow as pa

TRAIN_ACCURACY = "train/accuracy"
TRAIN_RESPONSE_LENGTH = "train/response_length"
TRAIN_TRUNCATED_FRACTION = "train/truncated_fraction"
TRAIN_BUDGET = "train/budget"  # the step's response budget (it moves under a budget schedule)
TRAIN_REWARD_CORRECTNESS = "train/reward_correctness"
TRAIN_REWARD_EFFICIENCY = "train/reward_efficiency"
LOSS_POLICY = "loss/policy"
LOSS_KL = "loss/kl"
LOSS_ENTROPY = "loss/entropy"
LOSS_RATIO_OUTSIDE_CLIP = "loss/ratio_outside_clip"  # tokens whose ratio lies outside the clip band
LOSS_PG_CLIPFRAC = "loss/pg_clipfrac"  # tokens where the clipped term is the larger loss: verl's pg_clipfrac
LOSS_GRAD_NORM = "loss/grad_norm"
PERF_STEP_SECONDS = "perf/step_seconds"
PERF_ROLLOUT_SECONDS = "perf/rollout_seconds"
PERF_ROLLOUT_TOKENS_PER_SECOND = "perf/rollout_tokens_per_second"
PERF_ROLLOUT_TOKENS = "perf/rollout_tokens"  # response tokens the step's rollouts generated
PERF_TRAIN_TOKENS = "perf/train_tokens"  # prompt + response tokens through the policy update, every PPO epoch
PERF_EVAL_TOKENS = "perf/eval_tokens"  # response tokens the step's evaluation generated (0 without one)
PERF_SAMPLER_LOGP_GAP = "perf/sampler_logp_gap"  # mean |trainer's - sampler's log-prob| on sampled tokens
PERF_SAMPLER_LOGP_GAP_P99 = "perf/sampler_logp_gap_p99"  # its 99th percentile over the step's tokens
PERF_SAMPLER_LOGP_GAP_MAX = "perf/sampler_logp_gap_max"  # and its largest: a stale step hides less in these
FILTER_KEPT_GROUPS = "filter/kept_groups"  # prompts whose rollouts the group filter kept for training
FILTER_KEPT_ROLLOUTS = "filter/kept_rollouts"  # rollouts it kept (LEAD and the update see only these)
FILTER_ROUNDS = "filter/rounds"  # generation rounds the step drew (1 without a filter that draws more)
FILTER_SKIPPED_UPDATE = "filter/skipped_update"  # 1 when nothing was kept: no LEAD step, no update
GRADER_ERRORS = "grader/errors"  # responses whose grading raised inside the grader this step (scored 0)
GRADER_TIMEOUTS = "grader/timeouts"  # responses stopped by the grading limit this step (scored 0)

EVAL_ACCURACY = "eval/accuracy"
EVAL_RESPONSE_LENGTH = "eval/response_length"
EVAL_AES = "eval/aes"
BASE_PREFIX = "base/"  # the base model's numbers, logged once at step 0
BASE_ACCURACY = "base/accuracy"
BASE_RESPONSE_LENGTH = "base/response_length"


SETTING_PREFIX = "setting/"  # + a dotted key (setting/train.lr): a searched setting's value at each step
W_CORR_SETTING = "lead.weighting.w_corr"  # the weight of correctness, as a dotted setting (grids, searches, replays)


def lead(name: str) -> str:
    return f"lead/{name}"


# What every weighting reports at every step (PSI adds its own statistics: cv_*, potential_*, d_*, psi_target_*).
LEAD_REPORTED = (
    "w_corr", "w_eff", "target_w_corr", "target_w_eff", "mu_corr", "sigma_corr", "mu_eff", "sigma_eff",
    "lstar_mean", "lstar_mean_solvable", "num_unsolved_prompts",
)

STEP_METRICS = (
    TRAIN_ACCURACY, TRAIN_RESPONSE_LENGTH, TRAIN_TRUNCATED_FRACTION, TRAIN_BUDGET, TRAIN_REWARD_CORRECTNESS,
    TRAIN_REWARD_EFFICIENCY, *(lead(name) for name in LEAD_REPORTED), LOSS_POLICY, LOSS_KL,
    PERF_STEP_SECONDS, PERF_ROLLOUT_TOKENS_PER_SECOND, PERF_ROLLOUT_TOKENS, PERF_TRAIN_TOKENS, PERF_EVAL_TOKENS,
    PERF_SAMPLER_LOGP_GAP, PERF_SAMPLER_LOGP_GAP_P99, PERF_SAMPLER_LOGP_GAP_MAX, GRADER_ERRORS, GRADER_TIMEOUTS, FILTER_KEPT_GROUPS, FILTER_KEPT_ROLLOUTS, FILTER_ROUNDS,
    FILTER_SKIPPED_UPDATE,
)
EVAL_METRICS = (EVAL_ACCURACY, EVAL_RESPONSE_LENGTH, EVAL_AES)
# Every name a study may select or rank trials by (``search.metric``): the per-step ones, the
# evaluation's, the losses and the LEAD internals.
REPORTED = tuple(dict.fromkeys((
    *STEP_METRICS, *EVAL_METRICS, "eval/truncated_fraction", PERF_ROLLOUT_SECONDS, LOSS_ENTROPY,
    LOSS_RATIO_OUTSIDE_CLIP, LOSS_PG_CLIPFRAC, LOSS_GRAD_NORM,
)))


# Prefixes: which metrics a trial run logs at every step, and which only on evaluation steps.
EVERY_STEP_PREFIXES = ("train/", "lead/", "loss/", "perf/", "grader/", "filter/", SETTING_PREFIX)
EVALUATION_PREFIXES = ("eval/",)
LOWER_IS_BETTER = (EVAL_RESPONSE_LENGTH, "eval/truncated_fraction")
STEP_KEY = TRAIN_ACCURACY  # every step logs it: its history tells a run's last logged step


# --------------------------------------------------------------------------- tags

# On a trial's run: which study, arm, grid variant and seed it belongs to.
TAG_STUDY = "study"
TAG_ARM = "arm"
TAG_VARIANT = "variant"
TAG_ARM_VARIANT = "arm_variant"  # arm_label(arm, variant): what a reader compares, one group in the MLflow view
TAG_SEED = "seed"
TAG_THREADS = "threads"  # the torch threads the trial ran on (they change the last bits, and so samples)
CPU_KERNELS = "cpu-kernels"  # the CPU kernel level, in versions() and so in build_info.json and version tags


def arm_label(arm: str, variant: str, separator: str = "/") -> str:
    """An (arm, variant) as one name, ``static/ratio0.25``: the arm alone where the variant is the
    arm's only one (the value of ``TAG_ARM_VARIANT``, and how the report names an arm)."""
    return arm if arm == variant else f"{arm}{separator}{variant}"


def version_tag(name: str) -> str:
    """The tag of a run that records what it was made with: ``version.torch``, ``version.cpu-kernels``."""
    return f"version.{name}"


# The method tags: how the trial's advantage is made.
TAG_REWARD = "reward"  # the length reward's name in trainers.method.rewards.LENGTH_REWARDS
TAG_WEIGHTING = "weighting"  # the weighting's name in trainers.method.weightings.WEIGHTINGS (psi, static, schedule, ...)
TAG_MOTION = "weight_motion"  # how w_corr moves over training: one of MOTIONS
TAG_ADVANTAGE = "advantage"  # the advantage estimator's name in trainers.method.advantages.ADVANTAGES (decoupled, ...)
LEGACY_TAG_ADVANTAGE = "normalization"  # what stores written before issue 30 call it
TAG_WHITEN = "whiten"  # true | false: token advantages whitened over the batch
TAG_GROUP_FILTER = "group_filter"  # the group filter's name in trainers.loop.group_filters.GROUP_FILTERS (none, gfpo, ...)
TAG_LOSS_AGGREGATION = "loss_aggregation"  # the loss aggregation's name (token_mean, budget)
TAG_POLICY_LOSS = "policy_loss"  # the policy loss's name in trainers.actor.losses.POLICY_LOSSES (ppo_clip, gspo)
METHOD_TAGS = (TAG_REWARD, TAG_WEIGHTING, TAG_MOTION, TAG_ADVANTAGE, TAG_WHITEN, TAG_GROUP_FILTER, TAG_LOSS_AGGREGATION,
               TAG_POLICY_LOSS)
FIXED, SCHEDULED, ADAPTIVE, SEARCHED = "fixed", "scheduled", "adaptive", "searched"
MOTIONS = (FIXED, SCHEDULED, ADAPTIVE, SEARCHED)  # searched: a population member (PBT / PB2)
TAG_PARAMS_ARE = "lead_study.params_are"  # "starting values" on a population member (its settings moved)
STARTING_VALUES = "starting values"

TAG_STUDY_DIR = "lead_study.study_dir"  # on a study's run: its Ray results folder (found again on --resume)
TAG_ROLE = "lead_study.role"  # "study" on a study's own run
TAG_FOCUS = "lead_study.focus"  # on a study's run: the arm under test, which the report sets every other arm against
DEFAULT_FOCUS = "psi"  # the arm under test when a spec names none (and the arm of that name exists)
TAG_OVERRIDES = "lead_study.overrides"  # on a study's run: its --set KEY=VALUE overrides of the spec file, as JSON
TAG_DESIGN = "lead_study.design"  # on a study's run: its design (fixed | sequential: its settings as JSON)
TAG_DESIGN_STOPPED = "lead_study.design.stopped"  # on a sequential study's run: why it started no more trials
DECISION_PATH_ARTIFACT = "sequential/decision_path.json"  # on a sequential study's run: every look, in order
SEQUENTIAL_PREFIX = "sequential/"  # on a sequential study's run: sequential/<comparison>/{estimate,low,high}, step = seeds
ROLE_STUDY = "study"
TAG_TRIAL_ID = "lead_study.trial_id"  # on a trial's run: its Tune trial id (found again after a retry)
TAG_STUDY_RUN = "lead_study.study_run"  # on a trial's run: its study's run id (trials are not nested, so
# the MLflow UI lists and charts them without expanding a parent; older stores nested them instead)
TAG_PARENT_RUN = "mlflow.parentRunId"  # how older stores linked a trial to its study
TAG_LOGGED_STEP = "lead_study.logged_step"  # the last step whose metrics reached MLflow
TAG_HISTORY_STEP = "lead_study.history_step"  # the last step HISTORY_ARTIFACT holds


def method_tags(config: dict, motion: str) -> dict[str, str]:
    """The method tags of a trial from its settings (``TrainConfig.model_dump()``; a group filter,
    loss aggregation or policy loss left out is the default one) and how its weight moves (the weighting's own
    motion, or ``SEARCHED`` for a population member)."""
    if motion not in MOTIONS:
        raise ValueError(f"weight motion {motion!r} is not one of {', '.join(MOTIONS)}")
    lead = config["lead"]
    return {
        TAG_REWARD: lead["length_reward"],
        TAG_WEIGHTING: lead["weighting"]["kind"],
        TAG_MOTION: motion,
        TAG_ADVANTAGE: lead["advantage"]["kind"],
        TAG_WHITEN: str(lead["advantage"]["whiten"]).lower(),
        TAG_GROUP_FILTER: config.get("rollout", {}).get("group_filter", {}).get("kind", "none"),
        TAG_LOSS_AGGREGATION: config.get("train", {}).get("loss_aggregation", "token_mean"),
        TAG_POLICY_LOSS: config.get("train", {}).get("policy_loss", "ppo_clip"),
    }


# --------------------------------------------------------------------------- artifacts and schemas

SPEC_FOLDER = "spec"  # on a study's run: the spec file
PLANNED_ARTIFACT = "planned_trials.json"  # on a study's run: every trial the study will run
SUMMARY_ARTIFACT = "summary.json"  # on a study's run: the final table and the versions
TRAIN_CONFIG_ARTIFACT = "train_config.yaml"  # on a trial's run: the config it ran (a member's: the replay)
HISTORY_ARTIFACT = "history/metrics.parquet"  # one trial's whole history: HISTORY_SCHEMA
HISTORY_SCHEMA = pa.schema([("key", pa.string()), ("step", pa.int64()), ("value", pa.float64())])
PROBLEMS_FOLDER = "eval_problems"  # on a trial's run: problems_artifact(step) per evaluation
EXPLOITS_ARTIFACT = "pbt/exploits.json"  # on a population member's run: its exploits, one record each
EXPLOIT_METRIC = "pbt/exploit"  # 1 at each step whose donor checkpoint a member continued from
EXPLOIT_SCHEMA = pa.schema([("trial", pa.string()), ("step", pa.int64()), ("donor", pa.string()),
                            ("old", pa.string()), ("new", pa.string()), ("donor_settings", pa.string())])
# a study's histories as the analysis reads them: one row per (trial, key, step)
STUDY_HISTORY_SCHEMA = pa.schema([("run_id", pa.string()), ("trial", pa.string()), *HISTORY_SCHEMA])
# the per-problem evaluation tables (what the evaluator writes, plus run, trial and step)
PROBLEM_SCHEMA = pa.schema(
    [("run_id", pa.string()), ("trial", pa.string()), ("step", pa.int64()), ("problem_id", pa.int64()),
     ("minimal_length", pa.float64()), ("lstar", pa.float64()), ("mean_length", pa.float64()),
     ("accuracy", pa.float64()), ("truncated_fraction", pa.float64())]
)


def problems_artifact(step: int) -> str:
    """Where a trial's run keeps the per-problem table of its evaluation at ``step``."""
    return f"{PROBLEMS_FOLDER}/step_{step:06d}.parquet"


def problems_step(path: str) -> int:
    """The step of a ``problems_artifact`` path."""
    return int(path.rsplit("/", 1)[-1].removesuffix(".parquet").rsplit("_", 1)[-1])


# --------------------------------------------------------------------------- params and columns


def params(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: one per leaf, named by its dotted key (``lead.weighting.w_corr``)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(params(value, name + "."))
        else:
            out[name] = str(value)
    return out


def param_column(key: str) -> str:
    """The runs table's column of a dotted setting (``param.lead.weighting.w_corr``)."""
    return f"param.{key}"


def final_column(metric: str) -> str:
    """The runs table's column of a metric's last logged value (``final/eval/aes``)."""
    return f"final/{metric}"


def best_column(metric: str) -> str:
    """The runs table's column of a metric's best value (lowest for ``LOWER_IS_BETTER``)."""
    return f"best/{metric}"
