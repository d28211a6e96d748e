"""GRPO with LEAD rewards, top to bottom.

One step: sample prompts -> roll out ``n`` responses each (within the step's budget) -> grade ->
``lead_step`` (length reward, advantages, weights) -> token advantages (whitened over all response
tokens unless the weighting says not)
-> clipped policy-gradient loss + KL to the frozen reference - entropy bonus, over mini-batches
of micro-batches -> AdamW. Every ``eval.every`` steps and at the end: pass@1, mean length and AES
on the fixed eval set. Every ``checkpoint.every`` steps: everything needed to resume exactly.

The trainer knows nothing of Ray or MLflow: it hands a ``StepReport`` to a callback after every
step. Randomness is a pure function of (seed, step), so a resumed run repeats an uninterrupted
one bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
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

from trainers import metrics as M
from trainers.config import TrainConfig
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
    dtype = torch.bfloat16 if config.model.dtype == "bfloat16" else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
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


def token_logprobs(model, input_ids: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token and the entropy of each next-token distribution.

    ``input_ids`` are right-padded, so no attention mask is needed (causal attention never sees
    the padding after a token). Both outputs have shape (B, W - 1): entry ``j`` is about token ``j+1``.
    """
    logits = model(input_ids=input_ids).logits[:, :-1].float()
    if temperature > 0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def token_advantages(advantages: torch.Tensor, mask: torch.Tensor, whiten: bool) -> torch.Tensor:
    """Each rollout's advantage on each of its response tokens, shape of ``mask`` (0 elsewhere);
    whitened over every response token of the batch when ``whiten`` (``masked_whiten``)."""
    token_adv = advantages.float()[:, None].expand_as(mask)
    return masked_whiten(token_adv, mask) if whiten else token_adv * mask


def clipped_objective(
    ratio: torch.Tensor, adv: torch.Tensor, clip_low: float, clip_high: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped loss per token, ``max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))`` (``clip_high``
    None: ``clip_low``, a symmetric clip), and where the clip bound the ratio."""
    clipped = ratio.clamp(1 - clip_low, 1 + (clip_low if clip_high is None else clip_high))
    return torch.maximum(-adv * ratio, -adv * clipped), ratio != clipped


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token KL estimate to the reference: ``mse`` = 0.5 (logp - ref)^2;
    ``low_var_kl`` = exp(ref - logp) - (ref - logp) - 1, clamped to [-10, 10] (k3 estimator)."""
    if kind == "mse":
        return 0.5 * (logp - ref_logp) ** 2
    log_ratio = ref_logp - logp
    return (log_ratio.exp() - log_ratio - 1).clamp(-10.0, 10.0)


def build_sequences(prompts: list[list[int]], n: int, rollouts, pad_token_id: int):
    """Right-padded prompt+response rows and the mask of response targets, shape (B, W - 1)."""
    lengths = rollouts.lengths.tolist()
    prompt_lengths = [len(prompts[i // n]) for i in range(len(lengths))]
    width = max(p + length for p, length in zip(prompt_lengths, lengths))
    device = rollouts.response_ids.device
    ids = torch.full((len(lengths), width), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(lengths), width - 1), dtype=torch.bool, device=device)
    for i, (p, length) in enumerate(zip(prompt_lengths, lengths)):
        ids[i, :p] = torch.tensor(prompts[i // n], device=device)
        ids[i, p : p + length] = rollouts.response_ids[i, :length]
        mask[i, p - 1 : p - 1 + length] = True
    return ids, mask


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


# Settings a resumed run may change: how long it runs and how often it evaluates and saves.
RESUMABLE_CHANGES = {"train": {"steps"}, "eval": {"every"}, "checkpoint": True}


def config_hash(config: TrainConfig) -> str:
    """What a checkpoint belongs to: every setting but ``RESUMABLE_CHANGES``."""
    payload = config.model_dump_json(exclude=RESUMABLE_CHANGES)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class CheckpointMismatch(ValueError):
    """A checkpoint written by a run with other settings (one line)."""


def check_checkpoint(directory: Path, config: TrainConfig) -> None:
    """Raise CheckpointMismatch unless the checkpoint in ``directory`` belongs to ``config``
    (read from its small ``CHECKPOINT_INFO`` file, not from the weights)."""
    try:
        saved = json.loads((Path(directory) / CHECKPOINT_INFO).read_text()).get("config_hash")
    except (OSError, ValueError, AttributeError):
        saved = None
    if saved != config_hash(config):
        raise CheckpointMismatch(
            f"{directory} belongs to a run with other settings (config hash {saved}, this run's "
            f"{config_hash(config)}): resume with that run's config, or start afresh with --overwrite"
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
    engine = build_engine(config.rollout.engine, model, tokenizer)
    with contextlib.closing(build_task(config.task)) as task:
        return model_path, base_evaluation(model_path, Evaluator(config, engine, tokenizer, task))


def train(
    config: TrainConfig,
    output_dir: Path,
    report: Reporter = lambda _: None,
    resume_from: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Run GRPO to ``config.train.steps``; returns the final step's metrics (with the last eval)."""
    output_dir = Path(output_dir)
    torch.manual_seed(config.seed)
    with contextlib.closing(build_task(config.task)) as task:  # a reused worker (Tune reuse_actors) keeps none of it
        model_path = base_model_path(config, log=log)
        model, tokenizer = load_model(model_path, config)
        device = next(model.parameters()).device
        reference = None
        if config.train.kl_coef > 0:
            reference = copy.deepcopy(model).eval().requires_grad_(False)
        engine = build_engine(config.rollout.engine, model, tokenizer)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
        evaluator = Evaluator(config, engine, tokenizer, task)
        base = base_evaluation(model_path, evaluator)
        base_metrics = {M.BASE_ACCURACY: base.accuracy, M.BASE_RESPONSE_LENGTH: base.response_length}
        log(f"base model: accuracy {base.accuracy:.3f}, mean length {base.response_length:.1f} tokens")

        state, start = LeadState(), 0
        if resume_from is not None:
            check_checkpoint(resume_from, config)
            saved = torch.load(Path(resume_from) / CHECKPOINT_FILE, map_location=device, weights_only=True)
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
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
            input_ids, mask = build_sequences(prompts, n, rollouts, tokenizer.pad_token_id)
            token_adv = token_advantages(out.advantages, mask, config.lead.weighting.whiten)
            # 5. policy update: clipped PG + KL - entropy, token-mean over each mini-batch
            losses = policy_update(model, reference, optimizer, input_ids, mask, token_adv, config, step)
            engine.sync_weights(model)  # the next rollouts (and evaluations) sample from the updated policy

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
            }
            done = step + 1 == config.train.steps
            tables = {}
            if (step + 1) % config.eval.every == 0 or done:
                result = evaluator()
                step_metrics.update(result.metrics("eval"))
                step_metrics.update(base_metrics)
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
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "lead_state": state.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "step": step + 1,
                        "data_cursor": step + 1,  # the next training batch is task.train_problems(step + 1, ...)
                        "config_hash": config_hash(config),
                    },
                )
            step_metrics[M.PERF_STEP_SECONDS] = time.perf_counter() - step_start
            last.update(step_metrics)
            # the step's metrics and tables are on record before the checkpoint that covers them appears
            report(StepReport(step + 1, step_metrics, tables, staged, done))
            if staged is not None:
                publish_checkpoint(staged, output_dir / "checkpoints" / f"step_{step + 1:06d}", config.checkpoint.keep_last)
        return last


def policy_update(model, reference, optimizer, input_ids, mask, token_adv, config: TrainConfig, step: int) -> dict:
    """One PPO pass (``ppo_epochs``) over the batch in shuffled mini-batches of micro-batches.

    Inside a mini-batch, rows are sorted by length and each micro-batch is cut to its longest
    row, so little compute goes to padding. Losses are token means over the whole mini-batch.
    """
    opt = config.train
    temperature = config.rollout.temperature
    total, width = input_ids.shape
    row_width = mask.long().cumsum(1).argmax(1) + 2  # tokens up to and including the last response token

    def chunks(rows: torch.Tensor):
        """Micro-batches of ``rows``, length-sorted, each with the width it needs."""
        rows = rows[torch.argsort(row_width[rows], stable=True)]
        for start in range(0, rows.numel(), opt.micro_batch_size):
            idx = rows[start : start + opt.micro_batch_size]
            yield idx, int(row_width[idx].max())

    def padded(values: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(values, (0, width - 1 - values.shape[1]))

    def forward_no_grad(module) -> torch.Tensor:
        out = torch.zeros(total, width - 1, device=input_ids.device)
        with torch.no_grad():
            for idx, w in chunks(torch.arange(total, device=input_ids.device)):
                out[idx] = padded(token_logprobs(module, input_ids[idx, :w], temperature)[0])
        return out

    ref_logp = forward_no_grad(reference) if reference is not None else None
    single_update = opt.ppo_epochs == 1 and opt.mini_batch_size >= total
    old_logp = None if single_update else forward_no_grad(model)  # the policy that sampled the batch

    generator = torch.Generator().manual_seed(step_seed(config.seed, step, 1))
    sums = {"policy": 0.0, "kl": 0.0, "entropy": 0.0, "clip": 0.0, "grad_norm": 0.0}
    updates = 0
    model.train()
    for _ in range(opt.ppo_epochs):
        order = torch.randperm(total, generator=generator).to(input_ids.device)
        for mb_start in range(0, total, opt.mini_batch_size):
            mini = order[mb_start : mb_start + opt.mini_batch_size]
            mb_tokens = mask[mini].sum().clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            for idx, w in chunks(mini):
                m = mask[idx, : w - 1].float()
                logp, entropy = token_logprobs(model, input_ids[idx, :w], temperature)
                old = logp.detach() if old_logp is None else old_logp[idx, : w - 1]
                ratio = torch.exp(logp - old)
                pg, clipped = clipped_objective(ratio, token_adv[idx, : w - 1], opt.clip_ratio, opt.clip_ratio_high)
                if ref_logp is not None:
                    kl = kl_penalty(logp, ref_logp[idx, : w - 1], opt.kl_type)
                else:
                    kl = torch.zeros_like(pg)
                loss_tokens = pg + opt.kl_coef * kl - opt.entropy_coef * entropy
                ((loss_tokens * m).sum() / mb_tokens).backward()
                with torch.no_grad():
                    sums["policy"] += float((pg * m).sum() / mb_tokens)
                    sums["kl"] += float((kl * m).sum() / mb_tokens)
                    sums["entropy"] += float((entropy * m).sum() / mb_tokens)
                    sums["clip"] += float((clipped.float() * m).sum() / mb_tokens)
            sums["grad_norm"] += float(torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip))
            optimizer.step()
            updates += 1
    return {
        M.LOSS_POLICY: sums["policy"] / updates,
        M.LOSS_KL: sums["kl"] / updates,
        M.LOSS_ENTROPY: sums["entropy"] / updates,
        M.LOSS_CLIP_FRACTION: sums["clip"] / updates,
        M.LOSS_GRAD_NORM: sums["grad_norm"] / updates,
    }
