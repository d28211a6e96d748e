"""Metric names: the contract between the trainer, the study runner, MLflow and the analysis.

Every training step emits at least ``STEP_METRICS``; every evaluation emits at least
``EVAL_METRICS``. ``lead/<name>`` carries every float of ``lead_step``'s metrics.
"""

TRAIN_ACCURACY = "train/accuracy"
TRAIN_RESPONSE_LENGTH = "train/response_length"
TRAIN_TRUNCATED_FRACTION = "train/truncated_fraction"
TRAIN_BUDGET = "train/budget"  # the step's response budget (it moves under a budget schedule)
TRAIN_REWARD_CORRECTNESS = "train/reward_correctness"
TRAIN_REWARD_EFFICIENCY = "train/reward_efficiency"
LOSS_POLICY = "loss/policy"
LOSS_KL = "loss/kl"
LOSS_ENTROPY = "loss/entropy"
LOSS_CLIP_FRACTION = "loss/clip_fraction"
LOSS_GRAD_NORM = "loss/grad_norm"
PERF_STEP_SECONDS = "perf/step_seconds"
PERF_ROLLOUT_SECONDS = "perf/rollout_seconds"
PERF_ROLLOUT_TOKENS_PER_SECOND = "perf/rollout_tokens_per_second"
PERF_ROLLOUT_TOKENS = "perf/rollout_tokens"  # response tokens the step's rollouts generated
PERF_TRAIN_TOKENS = "perf/train_tokens"  # prompt + response tokens through the policy update, every PPO epoch
PERF_EVAL_TOKENS = "perf/eval_tokens"  # response tokens the step's evaluation generated (0 without one)
COMPUTE = (PERF_ROLLOUT_TOKENS, PERF_TRAIN_TOKENS, PERF_EVAL_TOKENS, PERF_STEP_SECONDS)  # summed per trial and arm
PERF_SAMPLER_LOGP_GAP = "perf/sampler_logp_gap"  # mean |trainer's - sampler's log-prob| on sampled tokens
GRADER_ERRORS = "grader/errors"  # responses whose grading raised inside the grader this step (scored 0)
GRADER_TIMEOUTS = "grader/timeouts"  # responses stopped by the grading limit this step (scored 0)

EVAL_ACCURACY = "eval/accuracy"
EVAL_RESPONSE_LENGTH = "eval/response_length"
EVAL_AES = "eval/aes"
BASE_ACCURACY = "base/accuracy"
BASE_RESPONSE_LENGTH = "base/response_length"


SETTING_PREFIX = "setting/"  # + a dotted key (setting/train.lr): a searched setting's value at each step


def lead(name: str) -> str:
    return f"lead/{name}"


LEAD_REPORTED = (
    "w_corr", "w_eff", "target_w_corr", "target_w_eff", "mu_corr", "sigma_corr", "mu_eff", "sigma_eff",
    "cv_corr", "cv_eff", "potential_corr", "potential_eff", "lstar_mean", "lstar_mean_solvable",
    "num_unsolved_prompts",
)

STEP_METRICS = (
    TRAIN_ACCURACY, TRAIN_RESPONSE_LENGTH, TRAIN_TRUNCATED_FRACTION, TRAIN_BUDGET, TRAIN_REWARD_CORRECTNESS,
    TRAIN_REWARD_EFFICIENCY, *(lead(name) for name in LEAD_REPORTED), LOSS_POLICY, LOSS_KL,
    PERF_STEP_SECONDS, PERF_ROLLOUT_TOKENS_PER_SECOND, PERF_ROLLOUT_TOKENS, PERF_TRAIN_TOKENS, PERF_EVAL_TOKENS,
    PERF_SAMPLER_LOGP_GAP, GRADER_ERRORS, GRADER_TIMEOUTS,
)
EVAL_METRICS = (EVAL_ACCURACY, EVAL_RESPONSE_LENGTH, EVAL_AES)
# Every name a study may select or rank trials by (``search.metric``): the per-step ones, the
# evaluation's, the losses and the LEAD internals.
REPORTED = tuple(dict.fromkeys((
    *STEP_METRICS, *EVAL_METRICS, "eval/truncated_fraction", PERF_ROLLOUT_SECONDS, LOSS_ENTROPY,
    LOSS_CLIP_FRACTION, LOSS_GRAD_NORM,
)))


# The MLflow tags naming a trial's method (written by study.tracking, read by analysis.load).
TAG_REWARD = "reward"  # the length reward's name in trainers.rewards.LENGTH_REWARDS
TAG_WEIGHTING = "weighting"  # psi | static | schedule
TAG_NORMALIZATION = "normalization"  # decoupled (normalize-then-combine) | combined (combine-then-normalize)
TAG_WHITEN = "whiten"  # true | false: token advantages whitened over the batch
METHOD_TAGS = (TAG_REWARD, TAG_WEIGHTING, TAG_NORMALIZATION, TAG_WHITEN)


def method_tags(lead: dict) -> dict[str, str]:
    """The method tags of a trial from its ``lead`` settings (``LeadConfig.model_dump()``)."""
    weighting = lead["weighting"]
    return {
        TAG_REWARD: lead["length_reward"],
        TAG_WEIGHTING: weighting["kind"],
        TAG_NORMALIZATION: weighting["normalization"],
        TAG_WHITEN: str(weighting["whiten"]).lower(),
    }
