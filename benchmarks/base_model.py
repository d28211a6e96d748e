"""The base model's accuracy, length and truncation on the eval set, by number of terms k.

    python benchmarks/base_model.py [CONFIG.yaml]

Builds (or reuses) the configured base model, samples every eval problem once with the eval
settings, and prints pass@1, mean length against the minimal length, and the truncated share at
the response budget, overall and by k. Targets: build under 5 minutes on 2 cores, pass@1 between
0.4 and 0.9, mean length at least 1.8x the minimal length, truncation on the hardest problems.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyarrow.compute as pc

from trainers.config import load_train_config
from trainers.loop.base_model import base_model_path, load_model
from trainers.loop.evaluation import Evaluator
from trainers.rollout import build_engine
from trainers.tasks.synthetic import SyntheticTask

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "trainers/configs/synthetic_psi.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", type=Path, default=DEFAULT_CONFIG)
    args = parser.parse_args()
    config = load_train_config(args.config)
    path = base_model_path(config)
    info = json.loads((path / "build_info.json").read_text())
    print(f"base model {path}: {info['parameters']:,} parameters, SFT {info['sft_seconds']} s, final loss {info['final_loss_ema']}")
    model, tokenizer = load_model(path, config)
    task = SyntheticTask(config.task)
    engine = build_engine(config.rollout.engine, model, tokenizer, config.engine_spec(path))
    evaluator = Evaluator(config, engine, tokenizer, task)
    problems = evaluator.problems
    start = time.perf_counter()
    result = evaluator()
    seconds = time.perf_counter() - start
    table = result.table
    minimal = pc.mean(table["minimal_length"]).as_py()
    print(
        f"{len(problems)} eval problems, T={config.eval.temperature} top-p={config.eval.top_p}, budget "
        f"{config.rollout.max_budget}: pass@1 {result.accuracy:.3f}, mean length {result.response_length:.1f} "
        f"({result.response_length / minimal:.2f}x the minimal {minimal:.1f}), truncated {result.truncated_fraction:.3f} "
        f"[{seconds:.1f} s]"
    )
    print(f"{'k':>3} {'n':>4} {'pass@1':>7} {'length':>7} {'minimal':>8} {'truncated':>10}")
    ks = [p.k for p in problems]
    for k in sorted(set(ks)):
        rows = table.filter([kk == k for kk in ks])
        print(
            f"{k:>3} {rows.num_rows:>4} {pc.mean(rows['accuracy']).as_py():>7.3f} {pc.mean(rows['mean_length']).as_py():>7.1f} "
            f"{pc.mean(rows['minimal_length']).as_py():>8.1f} {pc.mean(rows['truncated_fraction']).as_py():>10.3f}"
        )


if __name__ == "__main__":
    main()
