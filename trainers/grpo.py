"""GRPO with LEAD rewards, top to bottom.

One step: sample prompts -> roll out ``n`` responses each (within the step's budget) -> grade ->
``lead_step`` (length reward, advantages, weights) -> token advantages (whitened over all response
tokens unless the weighting says not)
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
``trainers.checkpoint``, evaluation ``trainers.evaluation``, the base model ``trainers.base_model``.
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

from trainers import checkpoint
from trainers import contract as M
from trainers.actor import build_actor
from trainers.actor.update import PolicyBatch
from trainers.base_model import base_evaluation, base_model_path, load_model
from trainers.config import TrainConfig
from trainers.evaluation import EvalResult, Evaluator, aes
from trainers.lead import LeadOutput, LeadState, lead_step, masked_whiten
from trainers.rollout import build_engine
from trainers.seeding import step_seed
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


def build_sequences(prompts: list[list[int]], n: int, rollouts, pad_token_id: int, advantages: torch.Tensor,
                    whiten: bool) -> PolicyBatch:
    """Right-padded prompt+response rows, the mask of response targets (B, W - 1), each response
    token's advantage (``token_advantages``) and the sampler's log-probability of it."""
    lengths = rollouts.lengths.tolist()
    prompt_lengths = [len(prompts[i // n]) for i in range(len(lengths))]
    width = max(p + length for p, length in zip(prompt_lengths, lengths))
    device = rollouts.response_ids.device
    ids = torch.full((len(lengths), width), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(lengths), width - 1), dtype=torch.bool, device=device)
    sampler_logp = torch.zeros((len(lengths), width - 1), dtype=torch.float32, device=device)
    for i, (p, length) in enumerate(zip(prompt_lengths, lengths)):
        ids[i, :p] = torch.tensor(prompts[i // n], device=device)
        ids[i, p : p + length] = rollouts.response_ids[i, :length]
        mask[i, p - 1 : p - 1 + length] = True
        sampler_logp[i, p - 1 : p - 1 + length] = rollouts.logprobs[i, :length]
    return PolicyBatch(ids, mask, token_advantages(advantages, mask, whiten), sampler_logp)


def training_step(config: TrainConfig, run: Run, step: int, state: LeadState) -> tuple[LeadOutput, dict[str, float]]:
    """Step ``step`` (0-based): roll out, grade, LEAD, update the policy, sync the engine; returns
    the LEAD output and the step's metrics (evaluation and step time aside)."""
    start = time.perf_counter()
    # 1. roll out
    problems = run.task.train_problems(step, config.train.prompts_per_step, config.seed)
    prompts = [run.task.prompt_ids(problem, run.tokenizer) for problem in problems]
    n = config.rollout.n
    rollouts = run.engine.generate(prompts, n, config.rollout_sampling(step), seed=step_seed(config.seed, step, 0))
    rollout_seconds = time.perf_counter() - start
    # 2. grade
    texts = run.tokenizer.batch_decode(rollouts.response_ids.tolist(), skip_special_tokens=True)
    scores, grading_failures = grade_rollouts(run.task, texts, [p for p in problems for _ in range(n)], rollouts.truncated)
    # 3. LEAD: length reward, advantages, weights; one group per prompt row of the batch
    device = run.device
    group_ids = torch.arange(len(problems), device=device).repeat_interleave(n)
    problem_ids = torch.tensor([problem.id for problem in problems], device=device).repeat_interleave(n)
    lengths = rollouts.lengths.to(torch.float64)
    out = lead_step(lengths, torch.tensor(scores, dtype=torch.float64, device=device), group_ids,
                    config=config.lead, state=state, problem_ids=problem_ids)
    # 4. token advantages, whitened over every response token of the batch (unless told not to)
    batch = build_sequences(prompts, n, rollouts, run.tokenizer.pad_token_id, out.advantages, config.lead.weighting.whiten)
    # 5. policy update: clipped PG + KL - entropy, token-mean over each mini-batch
    losses = run.actor.update(batch, step_seed(config.seed, step, 1))
    run.engine.sync_weights(run.actor.model)  # the next rollouts (and evaluations) sample from the updated policy
    prompt_tokens = sum(len(prompt) for prompt in prompts) * n
    return out, {
        M.TRAIN_ACCURACY: sum(scores) / len(scores),
        M.TRAIN_RESPONSE_LENGTH: float(lengths.mean()),
        M.TRAIN_TRUNCATED_FRACTION: float(rollouts.truncated.float().mean()),
        M.TRAIN_BUDGET: float(config.rollout.budget_at(step)),
        M.TRAIN_REWARD_CORRECTNESS: out.metrics["reward_correctness"],
        M.TRAIN_REWARD_EFFICIENCY: out.metrics["reward_efficiency"],
        **{M.lead(name): value for name, value in out.metrics.items()},
        **losses,
        **grading_failures,
        M.PERF_ROLLOUT_SECONDS: rollout_seconds,
        M.PERF_ROLLOUT_TOKENS_PER_SECOND: rollouts.num_tokens / rollout_seconds,
        M.PERF_ROLLOUT_TOKENS: float(rollouts.num_tokens),
        M.PERF_TRAIN_TOKENS: float((prompt_tokens + rollouts.num_tokens) * config.train.ppo_epochs),
        M.PERF_EVAL_TOKENS: 0.0,
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
            out, metrics = training_step(config, run, step, state)
            state, done, tables = out.state, step + 1 == config.train.steps, {}
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
