"""Median seconds per GRPO step and rollout tokens/s for a run config on CPU.

    python benchmarks/grpo_step.py [CONFIG.yaml] [--steps 12] [--trl]

Runs the trainer for ``--steps`` steps (default config: the shipped synthetic PSI run, 16 prompts
x 8 rollouts, 160-token budget) on the cached base model and prints the median step time, its
rollout and update parts, and rollout tokens/s. ``--trl`` also times TRL's ``GRPOTrainer`` on the
same model with the same prompts per step, rollouts, budget and micro-batch (``pip install trl``
first; it is not a dependency of this project). Goal: at most half of TRL's step time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from trainers import contract as M
from trainers.config import load_train_config
from trainers.loop.base_model import base_model_path
from trainers.loop.grpo import train
from trainers.settings import deep_merge

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "trainers/configs/synthetic_psi.yaml"


def time_lead_study(config, steps: int) -> dict[str, float]:
    config = config.model_validate(
        deep_merge(config.model_dump(), {"train": {"steps": steps}, "eval": {"every": 10**6, "num_problems": 8}})
    )
    reports = []
    with tempfile.TemporaryDirectory() as out:
        train(config, Path(out), report=reports.append, log=lambda _: None)
    timed = reports[2:]  # skip warm-up steps
    step = statistics.median(r.metrics[M.PERF_STEP_SECONDS] for r in timed[:-1])  # the last one also evaluates
    return {
        "step_seconds": step,
        "rollout_seconds": statistics.median(r.metrics[M.PERF_ROLLOUT_SECONDS] for r in timed),
        "tokens_per_second": statistics.median(r.metrics[M.PERF_ROLLOUT_TOKENS_PER_SECOND] for r in timed),
        "response_length": statistics.median(r.metrics[M.TRAIN_RESPONSE_LENGTH] for r in timed),
    }


def time_trl(config, steps: int) -> float:
    """TRL's GRPOTrainer, configured like ``config``: median seconds per optimizer step."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from trainers.tasks.synthetic import SyntheticTask

    path = base_model_path(config, log=lambda _: None)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    task = SyntheticTask(config.task)
    problems = [p for step in range(steps + 2) for p in task.train_problems(step, config.train.prompts_per_step, 0)]
    by_prompt = {p.prompt: p for p in problems}
    dataset = Dataset.from_list([{"prompt": p.prompt} for p in problems])

    def correctness(prompts, completions, **_):
        return task.grade(completions, [by_prompt[p] for p in prompts])

    step_times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_times.append(time.perf_counter() - self.start)

    n = config.rollout.n
    micro = config.train.micro_batch_size
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(  # one optimizer step = one generation round of prompts_per_step x n completions
            output_dir=out,
            per_device_train_batch_size=micro,
            gradient_accumulation_steps=config.train.prompts_per_step * n // micro,
            num_generations=n,
            max_completion_length=config.rollout.max_budget,
            temperature=config.rollout.temperature,
            learning_rate=config.train.lr,
            beta=config.train.kl_coef,
            max_steps=steps,
            logging_steps=10**6,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=config.seed,
        )
        trainer = GRPOTrainer(
            model=model, reward_funcs=[correctness], args=args, train_dataset=dataset, processing_class=tokenizer,
            callbacks=[Timer()],
        )
        trainer.train()
    return statistics.median(step_times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--trl", action="store_true", help="also time TRL's GRPOTrainer (needs trl installed)")
    args = parser.parse_args()
    config = load_train_config(args.config)
    ours = time_lead_study(config, args.steps)
    shape = f"{config.train.prompts_per_step} prompts x {config.rollout.n} rollouts, budget {config.rollout.max_budget}"
    print(f"lead-study GRPO step ({shape}), median over {args.steps - 3} steps on CPU:")
    print(f"  step seconds          {ours['step_seconds']:.2f}")
    print(f"  rollout seconds       {ours['rollout_seconds']:.2f}")
    print(f"  rollout tokens/s      {ours['tokens_per_second']:.0f}")
    print(f"  mean response length  {ours['response_length']:.1f}")
    if args.trl:
        theirs = time_trl(config, args.steps)
        print(f"TRL GRPOTrainer step seconds {theirs:.2f} (ours / TRL = {ours['step_seconds'] / theirs:.2f})")


if __name__ == "__main__":
    main()
