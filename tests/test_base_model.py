"""The tiny verbose base model: a real Hugging Face directory, cached by settings, built atomically."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import TINY
from trainers.models import tiny
from trainers.models.tiny import TinyModelConfig, ensure_base_model
from trainers.tasks.synthetic import SyntheticTaskConfig


def test_loads_through_the_auto_classes(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    ids = tokenizer.encode("Q:3+5=")
    assert ids == [tokenizer.convert_tokens_to_ids(ch) for ch in "Q:3+5="]
    assert tokenizer.decode(ids + [tokenizer.eos_token_id], skip_special_tokens=True) == "Q:3+5="
    assert len(tokenizer) == 21
    logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), 21)
    info = json.loads((tiny_model_dir / "build_info.json").read_text())
    assert info["model"]["sft_steps"] == TINY["sft_steps"]


def test_cache_is_reused_and_keyed_by_settings(tiny_model_dir, cache_dir):
    task = SyntheticTaskConfig(max_terms=5, eval_size=24)
    built = []
    again = ensure_base_model(task, TinyModelConfig(**TINY), cache_dir, log=built.append)
    assert again == tiny_model_dir and built == []
    other = tiny.settings_hash(task, TinyModelConfig(**{**TINY, "seed": 1}))
    assert other != tiny_model_dir.name.removeprefix("base-")


def test_a_crash_mid_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def crash(task, config, out_dir, log=print):
        (out_dir / "config.json").write_text("{}")  # half-written
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(tiny, "train_base_model", crash)
    with pytest.raises(RuntimeError):
        ensure_base_model(SyntheticTaskConfig(), TinyModelConfig(sft_steps=1), tmp_path, log=lambda _: None)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_the_base_model_is_the_same_whatever_the_thread_count(tmp_path):
    """Built from a process on 1 thread and from one on 2, the weights are bit-identical (the
    build runs on ``BUILD_THREADS``), and the caller's thread count is given back."""
    from safetensors.torch import load_file

    task, config = SyntheticTaskConfig(max_terms=5, eval_size=24), TinyModelConfig(**TINY)
    before = torch.get_num_threads()
    weights = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = tmp_path / f"threads{threads}"
            out.mkdir()
            info = tiny.train_base_model(task, config, out, log=lambda _: None)
            assert info["threads"] == 1 and torch.get_num_threads() == threads
            weights[threads] = load_file(out / "model.safetensors")
    finally:
        torch.set_num_threads(before)
    assert weights[1].keys() == weights[2].keys()
    assert all(torch.equal(weights[1][key], weights[2][key]) for key in weights[1])
