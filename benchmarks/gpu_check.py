"""The GPU device check: rollout and policy-update throughput at DeepSeek-R1-Distill-Qwen-1.5B's shape.

    python benchmarks/gpu_check.py            # one GPU, about 5 minutes on an H100, nothing downloaded
    python benchmarks/gpu_check.py --tiny     # the same code path on a small model (a CPU check)

Builds a randomly initialised Qwen2 with the 1.5B model's configuration (hidden 1536, 28 layers,
12 heads, 2 KV heads, MLP 8960, vocabulary 151,936) and prints:
1. rollout tokens/s of the ``hf`` engine: 64 prompts x 8 samples x 1,024 new tokens (EOS never
   stops a row: every row decodes the whole budget), bf16 autocast over float32 weights;
2. policy-update tokens/s and MFU: the single backend's PPO pass over 64 rows of 64 prompt +
   1,024 response tokens (mini-batch 64, micro-batch 8, gradient checkpointing, bf16 autocast,
   AdamW), MFU = 6 x parameters x tokens / seconds / 989 TFLOP/s (H100 dense bf16);
3. the peak memory of one micro-batch at the paper's shape: 8 rows of 1,024 prompt + 4,096
   response tokens, forward and backward with chunked log-probs and gradient checkpointing.
Needs torch, transformers and pydantic (no vLLM, DeepSpeed or Ray).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a bare checkout, not installed

print = functools.partial(print, flush=True)  # noqa: A001  (lines appear as they are measured)

from trainers.actor.single import SingleActor  # noqa: E402
from trainers.config import OptimConfig  # noqa: E402
from trainers.actor.update import PolicyBatch  # noqa: E402
from trainers.rollout.base import EngineSpec, SamplingParams  # noqa: E402
from trainers.rollout.hf import HFRolloutEngine  # noqa: E402

R1_1P5B = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
               intermediate_size=8960, vocab_size=151_936, max_position_embeddings=131_072, rope_theta=10_000.0,
               rms_norm_eps=1e-6, tie_word_embeddings=False)
TINY = dict(R1_1P5B, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=256, vocab_size=2048)
H100_BF16_FLOPS = 989e12


def train_settings(dtype: str):
    """The settings SingleActor and policy_update read: the trainer's own ``OptimConfig`` (every
    setting not named here at its default), a rollout temperature and the compute dtype."""
    train = OptimConfig(lr=1e-6, kl_coef=0.0, entropy_coef=0.0, mini_batch_size=64, micro_batch_size=8,
                        gradient_checkpointing=True)
    return SimpleNamespace(train=train, rollout=SimpleNamespace(temperature=1.0), model=SimpleNamespace(dtype=dtype))


def batch(rows: int, prompt: int, response: int, vocab: int, device) -> PolicyBatch:
    ids = torch.randint(3, vocab, (rows, prompt + response), device=device)
    mask = torch.zeros(rows, prompt + response - 1, dtype=torch.bool, device=device)
    mask[:, prompt - 1 :] = True
    adv = torch.randn(rows, 1, device=device).expand_as(mask) * mask
    return PolicyBatch(ids, mask, adv.float(), torch.zeros_like(adv, dtype=torch.float32), response)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a small model, small batches: check the script")
    parser.add_argument("--memory-only", action="store_true", help="only the micro-batch memory (part 3)")
    parser.add_argument("--micro-rows", type=int, nargs="+", default=[8], help="rows of the part-3 micro-batches")
    args = parser.parse_args()
    from transformers import Qwen2Config, Qwen2ForCausalLM

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    prompts, n, new_tokens, rows, prompt_len = (64, 8, 1024, 64, 64) if not args.tiny else (4, 2, 16, 8, 8)
    torch.manual_seed(0)
    with device:  # built in place: initialising 1.5B parameters on the CPU first takes minutes
        model = Qwen2ForCausalLM(Qwen2Config(**(TINY if args.tiny else R1_1P5B)))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"model {n_params / 1e9:.3f}B parameters (float32 weights, {dtype} compute)")
    vocab = model.config.vocab_size
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=-1)  # -1: no token ends a row

    if args.memory_only:
        return micro_batch_memory(SingleActor(train_settings(dtype), model), args, vocab, device)

    # 1. rollouts
    engine = HFRolloutEngine(model, tokenizer, EngineSpec(Path("."), prompt_len + new_tokens, dtype))
    prompt_ids = torch.randint(3, vocab, (prompts, prompt_len)).tolist()
    sampling = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=new_tokens)
    engine.generate(prompt_ids[:2], 2, SamplingParams(1.0, 1.0, 8), seed=0)  # warm-up
    sync()
    start = time.perf_counter()
    out = engine.generate(prompt_ids, n, sampling, seed=1)
    sync()
    seconds = time.perf_counter() - start
    print(f"rollout (hf engine): {out.num_tokens} tokens ({prompts} prompts x {n} x {new_tokens}) in {seconds:.1f} s: "
          f"{out.num_tokens / seconds:,.0f} tokens/s, peak memory {peak_gib():.1f} GiB")
    del out
    reset_peak()

    # 2. policy updates
    actor = SingleActor(train_settings(dtype), model)
    update_batch = batch(rows, prompt_len, new_tokens, vocab, device)
    tokens = rows * (prompt_len + new_tokens)
    actor.update(update_batch, seed=0)  # warm-up
    times = []
    for step in range(3):
        sync()
        start = time.perf_counter()
        actor.update(update_batch, seed=step + 1)
        sync()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    flops = 6 * n_params * tokens / seconds
    print(f"policy update (single backend): {tokens} tokens in {seconds:.2f} s (median of 3): {tokens / seconds:,.0f} "
          f"tokens/s, {flops / 1e12:.1f} TFLOP/s, MFU {flops / H100_BF16_FLOPS:.1%} of 989 TFLOP/s, "
          f"peak memory {peak_gib():.1f} GiB")
    reset_peak()
    return micro_batch_memory(actor, args, vocab, device)


def micro_batch_memory(actor, args, vocab: int, device) -> int:
    """3. forward + backward of micro-batches at the paper's shape: the peak memory of each."""
    long_prompt, long_response = (1024, 4096) if not args.tiny else (16, 64)
    for rows in args.micro_rows:
        micro = batch(rows, long_prompt, long_response, vocab, device)
        actor.optimizer.zero_grad(set_to_none=True)
        reset_peak()
        before = torch.cuda.memory_allocated() if device.type == "cuda" else 0
        shape = f"a micro-batch of {rows} x {long_prompt + long_response} tokens, forward + backward"
        try:
            logp, _ = actor.forward(micro.input_ids)
            (logp.float() * micro.mask).sum().backward()
            sync()
            print(f"{shape}: peak memory {peak_gib():.1f} GiB ({(peak_bytes() - before) / 2**30:.1f} GiB above the "
                  f"{before / 2**30:.1f} GiB allocated before it)")
        except torch.OutOfMemoryError as exc:
            print(f"{shape}: out of memory ({str(exc).splitlines()[0][:60]}); {before / 2**30:.1f} GiB allocated before it")
        del micro
        logp = None  # free the graph before the next size
    return 0


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_bytes() -> int:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


def peak_gib() -> float:
    return peak_bytes() / 2**30


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    sys.exit(main())
