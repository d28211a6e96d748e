"""GRPO with LEAD rewards, top to bottom.

One step: sample prompts -> roll out ``n`` responses each (within the step's budget) -> grade ->
the group filter (which rollouts train; it may draw more rounds: ``trainers.loop.group_filters``) ->
``lead_step`` (length reward, advantages, weights) -> token advantages (whitened over all response
tokens unless ``lead.advantage.whiten`` says not)
-> the actor's policy update (``trainers.actor``: clipped policy-gradient loss + KL to the frozen
reference - entropy bonus, over mini-batches of micro-batches, AdamW; in this process or over
DeepSpeed workers) -> the rollout engine syncs to the new weights. Every ``eval.every`` steps and
at the end: pass@1, mean length and AES on the fixed eval set. Every ``checkpoint.every`` steps:
everything needed to resume.

The trainer knows nothing of Ray or MLflow: it hands a ``StepReport`` to a callback after every
step. Randomness is a pure function of (seed, step), so with the ``hf`` engine a resumed run
repeats an uninterrupted one bit for bit (with ``vllm`` it continues from the checkpoint, not bit
for bit). The run's parts (task, model, engine, evaluator, actor, the base model's numbers) come
from one factory, ``build_run``, which tests and benchmarks can replace; checkpoints are
``trainers.loop.checkpoint``, evaluation ``trainers.loop.evaluation``, the base model ``trainers.loop.base_model``.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import torch

from trainers import contract as M
from trainers.actor import build_actor
from trainers.actor.update import PolicyBatch
from trainers.config import TrainConfig
from trainers.loop import checkpoint
from trainers.loop.base_model import base_evaluation, base_model_path, load_model
from trainers.loop.evaluation import EvalResult, Evaluator, aes
from trainers.loop.group_filters import Drawn, concat
from trainers.method.lead import LeadState, lead_step, masked_whiten
from trainers.rollout import build_engine
from trainers.runtime.process import mix_seed, step_seed
from trainers.tasks import build_task, grade_rollouts


@dataclass
class StepReport:
    step: int  # steps completed so far (1-based)
    metrics: dict[str, float]
    tables: dict[str, pa.Table] = field(default_factory=dict)  # "eval_problems" on evaluation steps
    checkpoint_dir: Path | None = None  # this step's checkpoint, staged: readable during the report call only
    done: bool = False


Reporter = Callable[[StepReport], None]


@dataclass
class Run:
    """What a training run is made of: its task, tokenizer, rollout engine, evaluator, actor (the
    training backend, holding the policy) and the base model's evaluation."""

    task: object
    tokenizer: object
    engine: object
    evaluator: Evaluator
    actor: object
    base: EvalResult
    device: torch.device  # where the policy's inputs live

    @property
    def base_metrics(self) -> dict[str, float]:
        return {M.BASE_ACCURACY: self.base.accuracy, M.BASE_RESPONSE_LENGTH: self.base.response_length}


def build_run(config: TrainConfig, stack: contextlib.ExitStack, log: Callable[[str], None] = print) -> Run:
    """The run's parts, each closed by ``stack`` when the run ends (a reused worker keeps none)."""
    task = stack.enter_context(contextlib.closing(build_task(config.task)))
    model_path = base_model_path(config, log=log)
    model, tokenizer = load_model(model_path, config)
    device = next(model.parameters()).device
    engine = build_engine(config.rollout.engine, model, tokenizer, config.engine_spec(model_path))
    stack.enter_context(contextlib.closing(engine))
    evaluator = Evaluator(config, engine, tokenizer, task)
    base = base_evaluation(model_path, evaluator)  # before any update: the base model's weights
    log(f"base model: accuracy {base.accuracy:.3f}, mean length {base.response_length:.1f} tokens")
    actor = stack.enter_context(contextlib.closing(build_actor(config.train.backend, config, model, log)))
    return Run(task, tokenizer, engine, evaluator, actor, base, device)


def token_advantages(advantages: torch.Tensor, mask: torch.Tensor, whiten: bool) -> torch.Tensor:
    """Each rollout's advantage on each of its response tokens, shape of ``mask`` (0 elsewhere);
    whitened over every response token of the batch when ``whiten`` (``masked_whiten``)."""
    token_adv = advantages.float()[:, None].expand_as(mask)
    return masked_whiten(token_adv, mask) if whiten else token_adv * mask


def build_sequences(drawn: Drawn, pad_token_id: int, advantages: torch.Tensor, whiten: bool, budget: int) -> PolicyBatch:
    """Right-padded prompt+response rows of ``drawn``'s rollouts, the mask of response targets
    (B, W - 1), each response token's advantage (``token_advantages``), the sampler's
    log-probability of it, and the step's generation ``budget``."""
    lengths = drawn.lengths.tolist()
    prompts = [drawn.prompts[g] for g in drawn.group.tolist()]
    width = max(len(prompt) + length for prompt, length in zip(prompts, lengths))
    device = drawn.response_ids.device
    ids = torch.full((len(lengths), width), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(lengths), width - 1), dtype=torch.bool, device=device)
    sampler_logp = torch.zeros((len(lengths), width - 1), dtype=torch.float32, device=device)
    for i, (prompt, length) in enumerate(zip(prompts, lengths)):
        p = len(prompt)
        ids[i, :p] = torch.tensor(prompt, device=device)
        ids[i, p : p + length] = drawn.response_ids[i, :length]
        mask[i, p - 1 : p - 1 + length] = True
        sampler_logp[i, p - 1 : p - 1 + length] = drawn.logprobs[i, :length]
    return PolicyBatch(ids, mask, token_advantages(advantages, mask, whiten), sampler_logp, budget)


def draw_round(config: TrainConfig, run: Run, step: int, round_: int) -> tuple[Drawn, dict[str, float], float]:
    """Generation round ``round_`` of step ``step`` (0-based), rolled out and graded: round 0 is the
    step's own prompts; a later round draws fresh ones as a run seeded ``mix_seed(seed, round_)``
    would, so every round is a pure function of (seed, step, round). Also returns the grading
    failures and the seconds spent generating."""
    seed = config.seed if round_ == 0 else mix_seed(config.seed, round_)
    problems = run.task.train_problems(step, config.train.prompts_per_step, seed)
    prompts = [run.task.prompt_ids(problem, run.tokenizer) for problem in problems]
    n, start = config.rollout.n, time.perf_counter()
    rollouts = run.engine.generate(prompts, n, config.rollout_sampling(step), seed=step_seed(seed, step, 0))
    seconds = time.perf_counter() - start
    texts = run.tokenizer.batch_decode(rollouts.response_ids.tolist(), skip_special_tokens=True)
    scores, failures = grade_rollouts(run.task, texts, [p for p in problems for _ in range(n)], rollouts.truncated)
    return Drawn.of(problems, prompts, n, rollouts, scores), failures, seconds


def skipped_step_metrics() -> dict[str, float]:
    """What a step that kept no group reports for the LEAD and loss metrics it did not compute."""
    names = [M.lead(name) for name in M.LEAD_REPORTED] + [M.TRAIN_REWARD_CORRECTNESS, M.TRAIN_REWARD_EFFICIENCY]
    return dict.fromkeys(names + [M.LOSS_POLICY, M.LOSS_KL, M.LOSS_ENTROPY, M.LOSS_RATIO_OUTSIDE_CLIP, M.LOSS_PG_CLIPFRAC,
                                  M.LOSS_GRAD_NORM, M.PERF_SAMPLER_LOGP_GAP, M.PERF_SAMPLER_LOGP_GAP_P99,
                                  M.PERF_SAMPLER_LOGP_GAP_MAX], math.nan)


def training_step(config: TrainConfig, run: Run, step: int, state: LeadState) -> tuple[LeadState, dict[str, float]]:
    """Step ``step`` (0-based): roll out, grade, filter, LEAD, update the policy, sync the engine;
    returns the LEAD state after it and the step's metrics (evaluation and step time aside).
    ``train/*`` describe every rollout generated this step; LEAD and the update see the kept ones."""
    # 1-2. roll out and grade, round after round while the group filter asks for more
    draws, failures, seconds = [], {M.GRADER_ERRORS: 0.0, M.GRADER_TIMEOUTS: 0.0}, [0.0]

    def draw(round_: int) -> Drawn:
        drawn, failed, spent = draw_round(config, run, step, round_)
        draws.append(drawn)
        failures.update({key: failures[key] + value for key, value in failed.items()})
        seconds[0] += spent
        return drawn

    # 3. the group filter: which rollouts train
    kept = config.rollout.group_filter.select(draw(0), draw, config.train.prompts_per_step)
    every = concat(draws)
    metrics = {
        M.TRAIN_ACCURACY: float(every.scores.mean()),
        M.TRAIN_RESPONSE_LENGTH: float(every.lengths.to(torch.float64).mean()),
        M.TRAIN_TRUNCATED_FRACTION: float(every.truncated.float().mean()),
        M.TRAIN_BUDGET: float(config.rollout.budget_at(step)),
        M.FILTER_KEPT_GROUPS: float(kept.num_groups),
        M.FILTER_KEPT_ROLLOUTS: float(kept.lengths.numel()),
        M.FILTER_ROUNDS: float(len(draws)),
        M.FILTER_SKIPPED_UPDATE: float(kept.num_groups == 0),
        **failures,
        M.PERF_ROLLOUT_SECONDS: seconds[0],
        M.PERF_ROLLOUT_TOKENS_PER_SECOND: every.num_tokens / seconds[0],
        M.PERF_ROLLOUT_TOKENS: float(every.num_tokens),
        M.PERF_EVAL_TOKENS: 0.0,
    }
    if kept.num_groups == 0:  # nothing to learn from: no LEAD step, no update
        return state, {**metrics, **skipped_step_metrics(), M.PERF_TRAIN_TOKENS: 0.0}
    # 4. LEAD: length reward, advantages, weights; one group per kept prompt
    problem_ids = torch.tensor([problem.id for problem in kept.problems], device=run.device)[kept.group.to(run.device)]
    out = lead_step(kept.lengths.to(run.device, torch.float64), kept.scores.to(run.device), kept.group.to(run.device),
                    config=config.lead, state=state, problem_ids=problem_ids)
    # 5. token advantages, whitened over every response token of the batch (unless told not to)
    batch = build_sequences(kept, run.tokenizer.pad_token_id, out.advantages, config.lead.advantage.whiten,
                            config.rollout.budget_at(step))
    # 6. policy update: clipped PG + KL - entropy over mini-batches (train.loss_aggregation)
    losses = run.actor.update(batch, step_seed(config.seed, step, 1))
    run.engine.sync_weights(run.actor.model)  # the next rollouts (and evaluations) sample from the updated policy
    prompt_tokens = sum(len(kept.prompts[g]) for g in kept.group.tolist())
    return out.state, {
        **metrics,
        M.TRAIN_REWARD_CORRECTNESS: out.metrics["reward_correctness"],
        M.TRAIN_REWARD_EFFICIENCY: out.metrics["reward_efficiency"],
        **{M.lead(name): value for name, value in out.metrics.items()},
        **losses,
        M.PERF_TRAIN_TOKENS: float((prompt_tokens + kept.num_tokens) * config.train.ppo_epochs),
    }


def evaluation_metrics(config: TrainConfig, run: Run) -> tuple[dict[str, float], pa.Table]:
    """The current policy on the eval set: ``eval/*`` (AES against the base model's numbers), the
    base numbers again, and the tokens it generated; and its per-problem table."""
    result, base = run.evaluator(), run.base
    metrics = {
        **result.metrics("eval"),
        **run.base_metrics,
        M.PERF_EVAL_TOKENS: float(round(result.response_length * len(run.evaluator.problems) * config.eval.n_samples)),
        M.EVAL_AES: (aes(result.accuracy, result.response_length, base.accuracy, base.response_length)
                     if base.accuracy > 0 else math.nan),
    }
    return metrics, result.table


def train(
    config: TrainConfig,
    output_dir: Path,
    report: Reporter = lambda _: None,
    resume_from: Path | None = None,
    log: Callable[[str], None] = print,
    changeable: tuple[str, ...] = (),
    build: Callable[..., Run] = build_run,
) -> dict[str, float]:
    """Run GRPO to ``config.train.steps``; returns the final step's metrics (with the last eval).

    ``changeable``: dotted settings (``lead.weighting.w_corr``, ``train.lr``) in which ``config``
    may differ from the run that wrote ``resume_from`` (Population Based Training continues a
    trial from another's checkpoint with perturbed settings); the run goes on with ``config``'s
    values, the optimizer's learning rate and weight decay included. ``build``: the factory of the
    run's parts (``build_run``)."""
    torch.manual_seed(config.seed)
    with contextlib.ExitStack() as stack:
        run = build(config, stack, log)
        state, start = LeadState(), 0
        if resume_from is not None:
            state, start = checkpoint.restore(resume_from, config, changeable, run.actor, run.engine)
            log(f"resumed from {resume_from} at step {start}")
        last: dict[str, float] = dict(run.base_metrics)
        for step in range(start, config.train.steps):
            step_start = time.perf_counter()
            state, metrics = training_step(config, run, step, state)
            done, tables = step + 1 == config.train.steps, {}
            if (step + 1) % config.eval.every == 0 or done:
                evaluated, tables["eval_problems"] = evaluation_metrics(config, run)
                metrics.update(evaluated)
            staged = None
            directory = checkpoint.checkpoint_dir(output_dir, step + 1)
            if (step + 1) % config.checkpoint.every == 0 or tables:  # every evaluation is a checkpoint too
                staged = checkpoint.stage(directory, checkpoint.payload(run.actor, state, step + 1, config, changeable))
            metrics[M.PERF_STEP_SECONDS] = time.perf_counter() - step_start
            last.update(metrics)
            # the step's metrics and tables are on record before the checkpoint that covers them appears
            report(StepReport(step + 1, metrics, tables, staged, done))
            if staged is not None:
                checkpoint.publish(staged, directory, config.checkpoint.keep_last)
        return last
