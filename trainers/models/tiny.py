"""The verbose base model of the synthetic task, built locally and cached.

A tiny ``Qwen2ForCausalLM`` (the architecture of the real runs' DeepSeek-R1-Distill-Qwen models)
with a character-level ``tokenizers`` WordLevel tokenizer, trained by SFT on verbose traces and
saved as an ordinary Hugging Face model directory (``AutoModelForCausalLM`` / ``AutoTokenizer``
load it). The directory lives under a cache folder, named by a hash of every setting that shapes
it, written atomically (built in a temporary folder, then renamed) under a file lock, and reused
by every later run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import torch
from pydantic import Field
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from trainers import contract as M
from trainers.io.fingerprint import BASE_MODEL_CODE, fingerprint, versions
from trainers.runtime import kernels
from trainers.runtime.process import BUILD_THREADS, torch_threads
from trainers.settings import Strict
from trainers.tasks import task_identity
from trainers.tasks.synthetic import VOCAB, SyntheticTaskConfig, sample_problem, verbose_response



class TinyModelConfig(Strict):
    """Architecture and SFT settings of the base model."""

    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(512, ge=8)
    max_positions: int = Field(512, ge=64)
    sft_steps: int = Field(600, ge=1)
    sft_batch_size: int = Field(16, ge=1, description="packed rows per SFT step")
    sft_pack_width: int = Field(256, ge=16, description="tokens per packed row")
    sft_lr: float = Field(3e-3, gt=0)
    sft_warmup: int = Field(50, ge=0)
    sft_weight_decay: float = Field(0.01, ge=0)
    seed: int = 0


def default_cache_dir() -> Path:
    return Path(os.environ.get("LEAD_STUDY_CACHE", Path.home() / ".cache" / "lead-study")).expanduser()


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer over the task's 21 symbols (``<pad>``, ``<eos>``, ``<unk>`` first)."""
    tokenizer = Tokenizer(models.WordLevel(vocab={tok: i for i, tok in enumerate(VOCAB)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", padding_side="left"
    )


def settings_hash(task: SyntheticTaskConfig, model: TinyModelConfig) -> str:
    """The cache key of a base model: its settings and the fingerprint of the code and library
    versions that build it (other SFT code or another transformers builds anew)."""
    payload = json.dumps(
        {"code": fingerprint(BASE_MODEL_CODE), "task": task_identity(task), "model": model.model_dump()}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _sft_batches(task: SyntheticTaskConfig, config: TinyModelConfig, tokenizer, rng: random.Random):
    """Packed batches: rows of ``sft_pack_width`` tokens filled with whole (prompt, trace) examples.

    Each example keeps its own positions (0, 1, ...) and attends only to itself (a block-diagonal
    causal mask), so packing equals training on unpadded examples, with mixed lengths in every
    batch and no compute spent on padding. Loss on response tokens only.
    """
    eos, width = tokenizer.eos_token_id, config.sft_pack_width
    pending: list[list[int]] = []  # [prompt_len, *tokens] of an example that did not fit its row
    while True:
        ids = torch.full((config.sft_batch_size, width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        positions = torch.zeros_like(ids)
        segments = torch.full_like(ids, -1)
        for row in range(config.sft_batch_size):
            used, segment = 0, 0
            while True:
                if not pending:
                    problem = sample_problem(rng, task, "train")
                    prompt = tokenizer.encode(problem.prompt)
                    response = tokenizer.encode(verbose_response(problem, rng, task)) + [eos]
                    pending.append([len(prompt), *prompt, *response])
                prompt_len, *tokens = pending[-1]
                if used + len(tokens) > width:
                    if used == 0:  # longer than a whole row: drop it
                        pending.pop()
                        continue
                    break
                pending.pop()
                end = used + len(tokens)
                ids[row, used:end] = torch.tensor(tokens)
                labels[row, used + prompt_len : end] = torch.tensor(tokens[prompt_len:])
                positions[row, used:end] = torch.arange(len(tokens))
                segments[row, used:end] = segment
                used, segment = end, segment + 1
            # padding: one segment per token, so every query attends to something
            pad = width - used
            segments[row, used:] = torch.arange(segment, segment + pad)
            positions[row, used:] = 0
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        mask = (segments[:, :, None] == segments[:, None, :]) & causal
        yield ids, mask[:, None], positions, labels


def train_base_model(task: SyntheticTaskConfig, config: TinyModelConfig, out_dir: Path, log=print) -> dict:
    """SFT a fresh tiny Qwen2 on verbose traces and save it (model, tokenizer, build_info.json), on
    ``BUILD_THREADS`` torch threads: the same weights on every machine, whatever its cores."""
    with torch_threads(BUILD_THREADS):
        return _train_base_model(task, config, out_dir, log)


def _train_base_model(task: SyntheticTaskConfig, config: TinyModelConfig, out_dir: Path, log=print) -> dict:
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    tokenizer = build_tokenizer()
    model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(VOCAB),
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_heads,
            intermediate_size=config.intermediate_size,
            max_position_embeddings=config.max_positions,
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
        )
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.sft_lr, weight_decay=config.sft_weight_decay)

    def lr_factor(step: int) -> float:  # linear warmup, then cosine down to 0.1x
        if step < config.sft_warmup:
            return (step + 1) / config.sft_warmup
        progress = (step - config.sft_warmup) / max(1, config.sft_steps - config.sft_warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model.train()
    start, tokens, loss_ema = time.perf_counter(), 0, None
    batches = _sft_batches(task, config, tokenizer, rng)
    for step in range(config.sft_steps):
        ids, mask, positions, labels = next(batches)
        loss = model(input_ids=ids, attention_mask=mask, position_ids=positions, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        tokens += int((labels != -100).sum())
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        if (step + 1) % 100 == 0 or step + 1 == config.sft_steps:
            log(f"base model SFT step {step + 1}/{config.sft_steps} loss {loss_ema:.3f}")
    seconds = time.perf_counter() - start
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {
        "sft_seconds": round(seconds, 1),
        "sft_response_tokens": tokens,
        "sft_response_tokens_per_second": round(tokens / seconds),
        "final_loss_ema": round(loss_ema, 4),
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "task": task_identity(task),
        "model": config.model_dump(),
        "versions": versions(),
    }
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=2))
    return info


def ensure_base_model(
    task: SyntheticTaskConfig, config: TinyModelConfig, cache_dir: Path | None = None, log=print
) -> Path:
    """The cached base model directory for these settings, built first if it does not exist yet.

    Concurrent callers wait on a lock file; a crash mid-build leaves only a ``.tmp-*`` folder,
    never a directory that looks complete.
    """
    cache_dir = Path(cache_dir or default_cache_dir()).expanduser().resolve()
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    final = cache_dir / f"base-{settings_hash(task, config)}"
    if final.is_dir():
        return check_built_level(final)
    with open(cache_dir / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():  # built by another process while we waited
            return check_built_level(final)
        tmp = cache_dir / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            log(f"building the base model into {final} (cached for later runs)")
            train_base_model(task, config, tmp, log=log)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def check_built_level(model_dir: Path) -> Path:
    """``model_dir``, if its ``build_info.json`` records the CPU kernel level this process computes
    at; else ``KernelLevelError`` (the level is part of the cache key, so only a copied folder or an
    edited record gets here: a run never studies a base model built at another level unawares)."""
    built = json.loads((model_dir / "build_info.json").read_text()).get("versions", {}).get(M.CPU_KERNELS)
    here = kernels.level()
    if built != here:
        raise kernels.KernelLevelError(f"{model_dir}: this cached base model was built at CPU kernel level {built}, "
                                       f"but this run computes at {here}: delete the folder to build it anew")
    return model_dir
