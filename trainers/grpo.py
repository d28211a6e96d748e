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
for bit).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainers import contract as M
from trainers.actor import build_actor
from trainers.actor.update import PolicyBatch
from trainers.config import TrainConfig, deep_merge, dotted
from trainers.evaluation import EvalResult, aes, cached_evaluation, evaluate
from trainers.fingerprint import EVALUATION_CODE, fingerprint
from trainers.lead import LeadState, lead_step, masked_whiten
from trainers.models.tiny import default_cache_dir, ensure_base_model
from trainers.rollout import build_engine
from trainers.rollout.base import RolloutEngine
from trainers.tasks import build_task, grade_rollouts, task_identity

CHECKPOINT_FILE = "trainer_state.pt"
CHECKPOINT_INFO = "checkpoint.json"  # {"step": N, "config_hash": ...}: read without loading the weights
TARGET_FIELDS = {"aggregator", "floor", "bmax"}  # the LEAD settings an evaluation depends on (its lstar column)


@dataclass
class StepReport:
    step: int  # steps completed so far (1-based)
    metrics: dict[str, float]
    tables: dict[str, pa.Table] = field(default_factory=dict)  # "eval_problems" on evaluation steps
    checkpoint_dir: Path | None = None  # this step's checkpoint, staged: readable during the report call only
    done: bool = False


Reporter = Callable[[StepReport], None]


class ModelLoadError(ValueError):
    """The model directory is missing or cannot be loaded (one line, naming the path)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def base_model_path(config: TrainConfig, log: Callable[[str], None] = print) -> Path:
    """The model to start from: ``model.path``, or the tiny base model built (or reused) in the cache."""
    if config.model.path is not None:
        return config.model.path  # validated by ModelConfig: an existing model directory
    return ensure_base_model(config.task, config.model.tiny, config.model.cache_dir, log=log)


def load_model(path: Path, config: TrainConfig):
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        # float32 weights whatever model.dtype says: bfloat16 computes under autocast (trainers.precision)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model.path: cannot load {path}: {str(exc).splitlines()[0]}") from None
    needed = config.rollout.max_prompt_tokens + config.rollout.max_budget
    if needed > model.config.max_position_embeddings:
        raise ModelLoadError(
            f"rollout.max_prompt_tokens + rollout.max_new_tokens ({needed}) exceeds the model's "
            f"max_position_embeddings ({model.config.max_position_embeddings})"
        )
    return model.to(resolve_device(config.model.device)), tokenizer


def step_seed(seed: int, step: int, stream: int) -> int:
    """A distinct, reproducible seed per (run seed, step, use)."""
    return (seed * 1_000_003 + step) * 8 + stream


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


def stage_checkpoint(directory: Path, payload: dict) -> Path:
    """Write the checkpoint meant for ``directory`` into a hidden sibling folder and return it;
    ``publish_checkpoint`` moves it into place once the step's metrics are on record."""
    staged = directory.with_name(f".staged-{directory.name}-{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    torch.save(payload, staged / CHECKPOINT_FILE)
    (staged / CHECKPOINT_INFO).write_text(json.dumps({"step": payload["step"], "config_hash": payload.get("config_hash")}))
    return staged


def checkpoint_step(directory: Path) -> int:
    return int(directory.name.removeprefix("step_"))


def publish_checkpoint(staged: Path, directory: Path, keep_last: int) -> Path:
    """Rename the staged checkpoint to ``directory`` and prune all but the ``keep_last`` latest by
    step number (the one just written always stays)."""
    shutil.rmtree(directory, ignore_errors=True)
    os.rename(staged, directory)
    others = sorted((p for p in directory.parent.glob("step_*") if p.is_dir() and p != directory), key=checkpoint_step)
    for old in others[: max(0, len(others) - (keep_last - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return directory


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = [p.parent for p in (Path(output_dir) / "checkpoints").glob(f"step_*/{CHECKPOINT_FILE}")]
    return max(found, key=checkpoint_step) if found else None


# Settings a resumed run may always change: how long it runs and how often it evaluates and saves.
RESUMABLE_CHANGES = ("train.steps", "eval.every", "checkpoint")


def config_hash(config: TrainConfig, changeable: tuple[str, ...] = ()) -> str:
    """What a checkpoint belongs to: every setting but ``RESUMABLE_CHANGES`` and ``changeable``
    (dotted keys a population search may change when a trial continues from another's checkpoint)."""
    exclude = functools.reduce(deep_merge, (dotted(key, True) for key in (*RESUMABLE_CHANGES, *changeable)), {})
    payload = config.model_dump_json(exclude=exclude)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class CheckpointMismatch(ValueError):
    """A checkpoint written by a run with other settings (one line)."""


def check_checkpoint(directory: Path, config: TrainConfig, changeable: tuple[str, ...] = ()) -> None:
    """Raise CheckpointMismatch unless the checkpoint in ``directory`` belongs to ``config`` up to
    the ``changeable`` settings (read from its small ``CHECKPOINT_INFO`` file, not from the weights)."""
    try:
        saved = json.loads((Path(directory) / CHECKPOINT_INFO).read_text()).get("config_hash")
    except (OSError, ValueError, AttributeError):
        saved = None
    if saved != config_hash(config, changeable):
        raise CheckpointMismatch(
            f"{directory} belongs to a run with other settings (config hash {saved}, this run's "
            f"{config_hash(config, changeable)}): resume with that run's config, or start afresh with --overwrite"
        )


@dataclass
class Evaluator:
    """Evaluation on the fixed eval set with the eval sampling. One seed serves every evaluation
    (the base model's included), so arms and steps are compared on common random numbers."""

    config: TrainConfig
    engine: RolloutEngine
    tokenizer: object
    task: object  # see trainers.tasks

    def __post_init__(self):
        cfg = self.config
        self.sampling = cfg.eval_sampling
        self.problems = self.task.eval_problems()[: cfg.eval.num_problems]

    def __call__(self) -> EvalResult:
        cfg = self.config
        seed = step_seed(cfg.task.eval_seed, 0, 7)
        return evaluate(
            self.engine, self.tokenizer, self.task, self.problems, self.sampling, cfg.eval.n_samples, seed,
            cfg.lead, cfg.eval.batch_size,
        )

    @property
    def cache_key(self) -> dict:
        """What a result depends on besides the weights."""
        return {
            "engine": self.config.rollout.engine,
            "task": task_identity(self.config.task),
            "problems": len(self.problems),
            "sampling": self.sampling,
            "n_samples": self.config.eval.n_samples,
            "lead": self.config.lead.model_dump(include=TARGET_FIELDS),
        }


def base_evaluation(model_path: Path, evaluator: Evaluator) -> EvalResult:
    """The base model's numbers on the eval set, computed once and cached next to the base models.

    ``evaluator`` must sample from the base model's weights (call it before any update)."""
    key = {
        "model": str(model_path),
        "weights_mtime": max(p.stat().st_mtime for p in model_path.glob("*.safetensors")),
        "code": fingerprint(EVALUATION_CODE, libraries=("torch", "transformers", "tokenizers", "math-verify")),
        **evaluator.cache_key,
    }
    cache_dir = Path(evaluator.config.model.cache_dir or default_cache_dir()).expanduser() / "evaluations"
    return cached_evaluation(cache_dir, key, evaluator)


def prepare(config: TrainConfig, log: Callable[[str], None] = print) -> tuple[Path, EvalResult]:
    """Build (or reuse) the base model and evaluate it once; trials then find both in the cache."""
    model_path = base_model_path(config, log=log)
    model, tokenizer = load_model(model_path, config)
    with contextlib.closing(build_task(config.task)) as task, contextlib.closing(
        build_engine(config.rollout.engine, model, tokenizer, config.engine_spec(model_path))
    ) as engine:
        return model_path, base_evaluation(model_path, Evaluator(config, engine, tokenizer, task))


def train(
    config: TrainConfig,
    output_dir: Path,
    report: Reporter = lambda _: None,
    resume_from: Path | None = None,
    log: Callable[[str], None] = print,
    changeable: tuple[str, ...] = (),
) -> dict[str, float]:
    """Run GRPO to ``config.train.steps``; returns the final step's metrics (with the last eval).

    ``changeable``: dotted settings (``lead.weighting.w_corr``, ``train.lr``) in which ``config``
    may differ from the run that wrote ``resume_from`` (Population Based Training continues a
    trial from another's checkpoint with perturbed settings); the run goes on with ``config``'s
    values, the optimizer's learning rate and weight decay included."""
    output_dir = Path(output_dir)
    torch.manual_seed(config.seed)
    with contextlib.ExitStack() as stack:  # a reused worker (Tune reuse_actors) keeps none of it
        task = stack.enter_context(contextlib.closing(build_task(config.task)))
        model_path = base_model_path(config, log=log)
        model, tokenizer = load_model(model_path, config)
        device = next(model.parameters()).device
        engine = build_engine(config.rollout.engine, model, tokenizer, config.engine_spec(model_path))
        stack.enter_context(contextlib.closing(engine))
        evaluator = Evaluator(config, engine, tokenizer, task)
        base = base_evaluation(model_path, evaluator)
        base_metrics = {M.BASE_ACCURACY: base.accuracy, M.BASE_RESPONSE_LENGTH: base.response_length}
        log(f"base model: accuracy {base.accuracy:.3f}, mean length {base.response_length:.1f} tokens")
        actor = stack.enter_context(contextlib.closing(build_actor(config.train.backend, config, model, log)))

        state, start = LeadState(), 0
        if resume_from is not None:
            check_checkpoint(resume_from, config, changeable)
            saved = torch.load(Path(resume_from) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
            actor.load_state_dict(saved)
            engine.sync_weights(actor.model)
            state = LeadState.from_state_dict(saved["lead_state"])
            torch.set_rng_state(saved["torch_rng"])
            start = saved["step"]
            log(f"resumed from {resume_from} at step {start}")

        last: dict[str, float] = dict(base_metrics)
        for step in range(start, config.train.steps):
            step_start = time.perf_counter()
            # 1. roll out
            problems = task.train_problems(step, config.train.prompts_per_step, config.seed)
            prompts = [task.prompt_ids(problem, tokenizer) for problem in problems]
            n = config.rollout.n
            rollouts = engine.generate(prompts, n, config.rollout_sampling(step), seed=step_seed(config.seed, step, 0))
            rollout_seconds = time.perf_counter() - step_start
            # 2. grade
            texts = tokenizer.batch_decode(rollouts.response_ids.tolist(), skip_special_tokens=True)
            scores, grading_failures = grade_rollouts(
                task, texts, [problem for problem in problems for _ in range(n)], rollouts.truncated
            )
            # 3. LEAD: length reward, advantages, weights; one group per prompt row of the batch
            group_ids = torch.arange(len(problems), device=device).repeat_interleave(n)
            problem_ids = torch.tensor([problem.id for problem in problems], device=device).repeat_interleave(n)
            lengths = rollouts.lengths.to(torch.float64)
            out = lead_step(
                lengths, torch.tensor(scores, dtype=torch.float64, device=device), group_ids,
                config=config.lead, state=state, problem_ids=problem_ids,
            )
            state = out.state
            # 4. token advantages, whitened over every response token of the batch (unless told not to)
            batch = build_sequences(prompts, n, rollouts, tokenizer.pad_token_id, out.advantages,
                                    config.lead.weighting.whiten)
            # 5. policy update: clipped PG + KL - entropy, token-mean over each mini-batch
            losses = actor.update(batch, step_seed(config.seed, step, 1))
            prompt_tokens = sum(len(prompt) for prompt in prompts) * n
            engine.sync_weights(actor.model)  # the next rollouts (and evaluations) sample from the updated policy

            step_metrics = {
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
            done = step + 1 == config.train.steps
            tables = {}
            if (step + 1) % config.eval.every == 0 or done:
                result = evaluator()
                step_metrics.update(result.metrics("eval"))
                step_metrics.update(base_metrics)
                step_metrics[M.PERF_EVAL_TOKENS] = float(round(
                    result.response_length * len(evaluator.problems) * config.eval.n_samples))
                step_metrics[M.EVAL_AES] = (
                    aes(result.accuracy, result.response_length, base.accuracy, base.response_length)
                    if base.accuracy > 0
                    else math.nan
                )
                tables["eval_problems"] = result.table
            staged = None
            if (step + 1) % config.checkpoint.every == 0 or tables:  # every evaluation is a checkpoint too
                staged = stage_checkpoint(
                    output_dir / "checkpoints" / f"step_{step + 1:06d}",
                    {
                        **actor.state_dict(),  # "model" and "optimizer", full (unsharded)
                        "lead_state": state.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "step": step + 1,
                        "data_cursor": step + 1,  # the next training batch is task.train_problems(step + 1, ...)
                        "config_hash": config_hash(config, changeable),
                    },
                )
            step_metrics[M.PERF_STEP_SECONDS] = time.perf_counter() - step_start
            last.update(step_metrics)
            # the step's metrics and tables are on record before the checkpoint that covers them appears
            report(StepReport(step + 1, step_metrics, tables, staged, done))
            if staged is not None:
                publish_checkpoint(staged, output_dir / "checkpoints" / f"step_{step + 1:06d}", config.checkpoint.keep_last)
        return last
