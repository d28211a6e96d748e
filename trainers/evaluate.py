"""Evaluate a model on math benchmarks with the paper's protocol.

    python -m trainers.evaluate --model PATH --benchmarks math500,aime24,aime25,amc23,olympiadbench \\
        --data-dir ../shared/data [--max-tokens 4096] [--base-results BASE/results.json] [--out DIR]

Sober Reasoning protocol (LEAD, section 6): temperature 0.8, top-p 0.9, pass@1 averaged over n
samples per problem, n = 3 for MATH-500, OlympiadBench and Minerva, n = 10 for AIME24, AIME25 and
AMC23, one max-tokens budget. Rollouts come from the trainer's rollout interface (transformers
here), prompts from the model's chat template with the paper's suffix, grades from
``trainers.grading``. The response length is every generated token, thinking included.

Writes to ``--out`` (default ``evaluations/<model dir name>``): ``samples.parquet`` (benchmark,
problem id, sample, response length, truncated, extracted answer, correct), and ``results.json``
(per benchmark and overall: accuracy, mean length, truncation; AES against ``--base-results``,
another run's ``results.json``). Problems are evaluated in chunks, each saved as it finishes: an
interrupted evaluation run again with the same arguments resumes after its last saved chunk.
Bad input: one line naming the flag, file or row, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from trainers.evaluation import aes
from trainers.grading import Grader, extract_answer
from trainers.rollout.base import SamplingParams
from trainers.tasks.math import DatasetError, chat_prompt_ids, load_problems


@dataclass(frozen=True)
class Benchmark:
    file: str  # relative to --data-dir
    n_samples: int


BENCHMARKS = {
    "math500": Benchmark("math/test.parquet", 3),
    "aime24": Benchmark("benchmarks/aime24.jsonl", 10),
    "aime25": Benchmark("benchmarks/aime25.jsonl", 10),
    "amc23": Benchmark("benchmarks/amc23.jsonl", 10),
    "olympiadbench": Benchmark("benchmarks/olympiadbench.jsonl", 3),
    "minerva": Benchmark("benchmarks/minerva.jsonl", 3),
}
SAMPLE_SCHEMA = pa.schema(
    [("benchmark", pa.string()), ("problem_id", pa.int64()), ("sample", pa.int32()), ("response_length", pa.int64()),
     ("truncated", pa.bool_()), ("extracted_answer", pa.string()), ("correct", pa.float64())]
)


class EvaluationError(ValueError):
    """Bad flags or files, in one line."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainers.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a local Hugging Face model directory")
    parser.add_argument("--benchmarks", default="math500,aime24,aime25,amc23,olympiadbench",
                        help=f"comma-separated, of: {', '.join(BENCHMARKS)}; or NAME=FILE.jsonl|.parquet[:N] for your own")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--max-tokens", type=int, default=4096, help="the response budget")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems of each benchmark")
    parser.add_argument("--batch-size", type=int, default=32, help="problems per chunk (one generate call, one saved file)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--grading-timeout", type=float, default=5.0, help="seconds per graded response")
    parser.add_argument("--base-results", type=Path, default=None, help="the base model's results.json, for AES")
    parser.add_argument("--out", type=Path, default=None, help="default: evaluations/<model dir name>")
    return parser.parse_args(argv)


def resolve_benchmarks(spec: str, data_dir: Path) -> dict[str, tuple[Path, int]]:
    """name -> (file, samples per problem), checked to exist."""
    chosen = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        if "=" in item:  # NAME=FILE[:N]
            name, _, target = item.partition("=")
            file, _, n = target.partition(":")
            chosen[name] = (Path(file), int(n) if n else 3)
        elif item in BENCHMARKS:
            chosen[item] = (data_dir / BENCHMARKS[item].file, BENCHMARKS[item].n_samples)
        else:
            raise EvaluationError(f"--benchmarks: unknown benchmark '{item}' (known: {', '.join(BENCHMARKS)}, or NAME=FILE)")
    if not chosen:
        raise EvaluationError("--benchmarks: none given")
    for name, (file, _) in chosen.items():
        if not file.is_file():
            raise EvaluationError(f"--benchmarks: {name}: no file at {file} (check --data-dir)")
    return chosen


def _write_atomic(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        pq.write_table(table, tmp.name)
    Path(tmp.name).replace(path)


def evaluate_chunk(engine, tokenizer, grader: Grader, name: str, problems: list, n: int, sampling: SamplingParams,
                   seed: int, timeout_s: float) -> pa.Table:
    prompts = [chat_prompt_ids(tokenizer, p.problem) for p in problems]
    rollouts = engine.generate(prompts, n, sampling, seed=seed)
    texts = tokenizer.batch_decode(rollouts.response_ids.tolist(), skip_special_tokens=True)
    truths = [p.answer for p in problems for _ in range(n)]
    correct = grader.grade(texts, truths, timeout_s)
    return pa.table(
        {
            "benchmark": [name] * len(texts),
            "problem_id": [p.id for p in problems for _ in range(n)],
            "sample": [s for _ in problems for s in range(n)],
            "response_length": rollouts.lengths.tolist(),
            "truncated": rollouts.truncated.tolist(),
            "extracted_answer": [extract_answer(t) for t in texts],
            "correct": correct,
        },
        schema=SAMPLE_SCHEMA,
    )


def summarize(samples: pa.Table) -> dict:
    rows = samples.to_pylist()
    count = max(len(rows), 1)
    return {
        "accuracy": sum(r["correct"] for r in rows) / count,
        "response_length": sum(r["response_length"] for r in rows) / count,
        "truncated_fraction": sum(r["truncated"] for r in rows) / count,
        "problems": len({r["problem_id"] for r in rows}),
        "samples": len(rows),
    }


def with_aes(results: dict, base: dict | None) -> dict:
    """AES per benchmark and overall against the base model's numbers on the same benchmark."""
    if base is None:
        return results
    for name, numbers in [*results["benchmarks"].items(), ("overall", results["overall"])]:
        reference = base["overall"] if name == "overall" else base["benchmarks"].get(name)
        if reference and reference["accuracy"] > 0 and reference["response_length"] > 0:
            numbers["aes"] = aes(numbers["accuracy"], numbers["response_length"], reference["accuracy"],
                                 reference["response_length"])
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        benchmarks = resolve_benchmarks(args.benchmarks, args.data_dir)
        problems = {name: load_problems(file)[: args.limit] for name, (file, _) in benchmarks.items()}
        if not (args.model / "config.json").is_file():
            raise EvaluationError(f"--model: {args.model} is not a model directory (no config.json)")
        base = json.loads(args.base_results.read_text()) if args.base_results else None
        if base is not None and "benchmarks" not in base:
            raise EvaluationError(f"--base-results: {args.base_results} is not a results.json of this tool")
        out = args.out or Path("evaluations") / args.model.resolve().name
        settings = {"model": str(args.model.resolve()), "max_tokens": args.max_tokens, "temperature": args.temperature,
                    "top_p": args.top_p, "seed": args.seed, "limit": args.limit, "batch_size": args.batch_size,
                    "benchmarks": {name: [str(file), n] for name, (file, n) in benchmarks.items()}}
        settings_file = out / "settings.json"
        if settings_file.exists() and json.loads(settings_file.read_text()) != settings:
            raise EvaluationError(f"--out: {out} holds an evaluation with other settings; choose another --out")
    except (EvaluationError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps(settings, indent=2))

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.grpo import resolve_device
    from trainers.rollout.hf import HFRolloutEngine

    device = resolve_device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" and device.type == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(device)
    engine = HFRolloutEngine(model, tokenizer.pad_token_id, tokenizer.eos_token_id)
    sampling = SamplingParams(args.temperature, args.top_p, args.max_tokens)
    grader = Grader()
    chunks = [(name, start) for name in benchmarks for start in range(0, len(problems[name]), args.batch_size)]
    tables = []
    try:
        for name, start in tqdm(chunks, desc="evaluating", unit="chunk"):
            path = out / "chunks" / name / f"{start:06d}.parquet"
            if not path.exists():  # saved chunks are what an interrupted run already did
                chunk = problems[name][start : start + args.batch_size]
                table = evaluate_chunk(engine, tokenizer, grader, name, chunk, benchmarks[name][1], sampling,
                                       args.seed * 1_000_003 + start, args.grading_timeout)
                _write_atomic(table, path)
            tables.append(pq.read_table(path))
    finally:
        grader.close()
    samples = pa.concat_tables(tables)
    _write_atomic(samples, out / "samples.parquet")
    per_benchmark = {name: summarize(samples.filter(pa.compute.equal(samples["benchmark"], name))) for name in benchmarks}
    overall = {key: sum(r[key] for r in per_benchmark.values()) / len(per_benchmark)
               for key in ("accuracy", "response_length", "truncated_fraction")}  # the mean over benchmarks
    results = with_aes({"model": settings["model"], "settings": settings, "benchmarks": per_benchmark,
                        "overall": overall}, base)
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out / "results.json")
    print(f"{'benchmark':16} {'acc':>7} {'length':>8} {'trunc':>6} {'AES':>7}")
    for name, numbers in [*per_benchmark.items(), ("overall", overall)]:
        score = f"{numbers['aes']:7.3f}" if "aes" in numbers else "      –"
        print(f"{name:16} {numbers['accuracy']:7.3f} {numbers['response_length']:8.1f} "
              f"{numbers['truncated_fraction']:6.3f} {score}")
    print(f"wrote {out / 'results.json'} and {out / 'samples.parquet'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
