"""A tiny, untrained chat model for running the math pipeline end to end on CPU.

    python -m trainers.models.tiny_chat OUT_DIR --corpus problems.jsonl [more files]

A byte-level BPE tokenizer (``tokenizers``) trained on the given problem files, an R1-style chat
template (``<|User|>...<|Assistant|><think>\\n``: the generation prompt opens the thinking block,
as DeepSeek-R1-Distill's does), and a randomly initialised ``Qwen2ForCausalLM`` of about 0.3 M
parameters, saved as an ordinary Hugging Face model directory. It answers nonsense; it exists so
data loading, prompts, rollouts, grading, evaluation and training can all be exercised without a
GPU or a download. Real runs give ``model.path`` / ``--model`` a real model directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from trainers.tasks.math import load_problems

SPECIAL = ["<|pad|>", "<|end|>", "<|User|>", "<|Assistant|>", "<think>", "</think>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}<|User|>{{ message['content'] }}"
    "{% else %}<|Assistant|>{{ message['content'] }}<|end|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|><think>\n{% endif %}"
)


def build_tiny_chat_model(out_dir: Path, corpus_files: list[Path], vocab_size: int = 400, seed: int = 0) -> Path:
    """Write the tokenizer and model to ``out_dir`` (see the module docstring); returns it."""
    texts = [f"{p.problem} {p.answer}" for path in corpus_files for p in load_problems(path)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<|pad|>", eos_token="<|end|>")
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(
        Qwen2Config(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                    pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id, bos_token_id=None,
                    tie_word_embeddings=True)
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.models.tiny_chat", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--corpus", type=Path, nargs="+", required=True, help="problem files the tokenizer learns from")
    args = parser.parse_args(argv)
    from trainers.tasks.math import DatasetError

    try:
        print(build_tiny_chat_model(args.out_dir, args.corpus))
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
