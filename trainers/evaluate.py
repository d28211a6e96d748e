"""Evaluate a model on math benchmarks with the paper's protocol.

    python -m trainers.evaluate --model PATH --benchmarks math500,aime24,aime25,amc23,olympiadbench \\
        --data-dir ../shared/data [--max-tokens 4096] [--base-results BASE/results.json] [--out DIR]

Sober Reasoning protocol (LEAD, section 6): temperature 0.8, top-p 0.9, pass@1 averaged over n
samples per problem, n = 3 for MATH-500, OlympiadBench and Minerva, n = 10 for AIME24, AIME25 and
AMC23, one max-tokens budget. Rollouts come from the trainer's rollout interface (transformers
here), prompts from the model's chat template with the paper's suffix, grades from
``trainers.tasks.grading``. The response length is every generated token, thinking included.

Writes to ``--out`` (default ``evaluations/<model dir name>``): ``samples.parquet`` (benchmark,
problem id, sample, response length, truncated, extracted answer, correct), and ``results.json``
(per benchmark and overall: accuracy, mean length, truncation; AES against ``--base-results``,
another run's ``results.json``; the grader's error and timeout counts; the library versions). Problems are evaluated in chunks, each saved as it finishes: an
interrupted evaluation run again with the same arguments resumes after its last saved chunk.
Bad input: every problem found, one line each naming the flag, file or row, exit code 2, before
anything is loaded or generated.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from trainers.io.fingerprint import versions
from trainers.io.outputs import check_writable_dir, write_atomic
from trainers.loop.evaluation import aes
from trainers.rollout import ENGINES, build_engine
from trainers.rollout.base import EngineSpec, SamplingParams
from trainers.runtime import kernels
from trainers.runtime.process import mix_seed
from trainers.tasks.grading import Grader, extract_answer
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
    parser.add_argument("--engine", default="hf", choices=ENGINES.names(), help="the rollout engine")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--grading-timeout", type=float, default=5.0, help="seconds per graded response")
    parser.add_argument("--base-results", type=Path, default=None, help="the base model's results.json, for AES")
    parser.add_argument("--out", type=Path, default=None, help="default: evaluations/<model dir name>")
    return parser.parse_args(argv)


def resolve_benchmarks(spec: str, data_dir: Path) -> tuple[dict[str, tuple[Path, int]], list[str]]:
    """name -> (file, samples per problem), checked to exist; and every problem found, one line each."""
    chosen, errors = {}, []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        if "=" in item:  # NAME=FILE[:N]
            name, _, target = item.partition("=")
            file, _, n = target.partition(":")
            if not name or not file:
                errors.append(f"--benchmarks: '{item}': expected NAME=FILE.jsonl|.parquet[:N]")
                continue
            if n and not (n.isdigit() and int(n) >= 1):
                errors.append(f"--benchmarks: {name}: samples per problem ':{n}' must be a whole number of at least 1")
                continue
            entry = (Path(file), int(n) if n else 3)
        elif item in BENCHMARKS:
            name, entry = item, (data_dir / BENCHMARKS[item].file, BENCHMARKS[item].n_samples)
        else:
            errors.append(f"--benchmarks: unknown benchmark '{item}' (known: {', '.join(BENCHMARKS)}, or NAME=FILE)")
            continue
        if name in chosen:
            errors.append(f"--benchmarks: '{name}' is named twice")
        elif not entry[0].is_file():
            errors.append(f"--benchmarks: {name}: no file at {entry[0]} (check --data-dir)")
        else:
            chosen[name] = entry
    if not chosen and not errors:
        errors.append("--benchmarks: none given")
    return chosen, errors


def check_flags(args: argparse.Namespace) -> list[str]:
    """Every bad number or name among the flags, one line each (before anything is loaded)."""
    errors = []
    positive = {"--max-tokens": args.max_tokens, "--batch-size": args.batch_size}
    if args.limit is not None:
        positive["--limit"] = args.limit
    errors += [f"{flag}: must be at least 1, got {value}" for flag, value in positive.items() if value < 1]
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        errors.append(f"--temperature: must be a finite number >= 0, got {args.temperature}")
    if not (math.isfinite(args.top_p) and 0 < args.top_p <= 1):
        errors.append(f"--top-p: must be in (0, 1], got {args.top_p}")
    if not (math.isfinite(args.grading_timeout) and args.grading_timeout > 0):
        errors.append(f"--grading-timeout: must be a positive number of seconds, got {args.grading_timeout}")
    if args.seed < 0:
        errors.append(f"--seed: must be >= 0, got {args.seed}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", args.device):
        errors.append(f"--device: must be auto, cpu, cuda or cuda:N, got '{args.device}'")
    elif args.device.startswith("cuda") and not torch.cuda.is_available():
        errors.append(f"--device: {args.device} asked for, but this machine has no CUDA device")
    return errors


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


def check_inputs(args: argparse.Namespace) -> tuple[dict, dict, dict | None, Path, dict, list[str]]:
    """The benchmarks, their problems, the base results, the output folder and the run's settings,
    with every problem in the flags, one line each."""
    errors = check_flags(args) + kernels.problems()
    benchmarks, benchmark_errors = resolve_benchmarks(args.benchmarks, args.data_dir)
    errors += benchmark_errors
    problems = {}
    for name, (file, _) in benchmarks.items():
        try:
            problems[name] = load_problems(file)[: args.limit]
        except DatasetError as exc:
            errors.append(str(exc))
    if not (args.model / "config.json").is_file():
        errors.append(f"--model: {args.model} is not a model directory (no config.json)")
    base = None
    if args.base_results:
        try:
            base = json.loads(args.base_results.read_text())
            if not isinstance(base, dict) or "benchmarks" not in base:
                raise ValueError
        except (OSError, ValueError):
            errors.append(f"--base-results: {args.base_results} is not a readable results.json of this tool")
    out = (args.out or Path("evaluations") / args.model.resolve().name).resolve()
    settings = {"model": str(args.model.resolve()), "max_tokens": args.max_tokens, "temperature": args.temperature,
                "top_p": args.top_p, "seed": args.seed, "limit": args.limit, "batch_size": args.batch_size,
                "cpu_kernels": None if errors else kernels.level(),  # a resumed evaluation continues at its level
                "benchmarks": {name: [str(file), n] for name, (file, n) in benchmarks.items()}}
    try:
        settings_file = out / "settings.json"
        if settings_file.exists() and json.loads(settings_file.read_text()) != settings:
            errors.append(f"--out: {out} holds an evaluation with other settings; choose another --out")
        else:
            check_writable_dir(out)
    except (OSError, ValueError) as exc:
        errors.append(f"--out: {out}: {exc}")
    return benchmarks, problems, base, out, settings, errors


def sample_chunks(args: argparse.Namespace, benchmarks: dict, problems: dict, out: Path) -> tuple[pa.Table, Grader]:
    """Every benchmark's samples, chunk by chunk; a chunk already saved (an interrupted run) is read back."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.loop.base_model import resolve_device

    device = resolve_device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" and device.type == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(device)
    spec = EngineSpec(args.model.resolve(), model.config.max_position_embeddings, str(dtype).removeprefix("torch."), args.seed)
    engine = build_engine(args.engine, model, tokenizer, spec)
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
                                       mix_seed(args.seed, start), args.grading_timeout)
                write_atomic(path, table)
            tables.append(pq.read_table(path))
    finally:
        grader.close()
        engine.close()
    return pa.concat_tables(tables), grader


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    benchmarks, problems, base, out, settings, errors = check_inputs(args)
    if errors:
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(settings, indent=2))
    samples, grader = sample_chunks(args, benchmarks, problems, out)
    if grader.timeouts or grader.errors:
        print(f"grader: {grader.timeouts} responses hit the grading limit, {grader.errors} raised (scored 0)")
    write_atomic(out / "samples.parquet", samples)
    per_benchmark = {name: summarize(samples.filter(pa.compute.equal(samples["benchmark"], name))) for name in benchmarks}
    overall = {key: sum(r[key] for r in per_benchmark.values()) / len(per_benchmark)
               for key in ("accuracy", "response_length", "truncated_fraction")}  # the mean over benchmarks
    results = with_aes({"model": settings["model"], "settings": settings, "benchmarks": per_benchmark,
                        "overall": overall, "grader": grader.counts(), "versions": versions()}, base)
    write_atomic(out / "results.json", json.dumps(results, indent=2))
    print(f"{'benchmark':16} {'acc':>7} {'length':>8} {'trunc':>6} {'AES':>7}")
    for name, numbers in [*per_benchmark.items(), ("overall", overall)]:
        score = f"{numbers['aes']:7.3f}" if "aes" in numbers else "      –"
        print(f"{name:16} {numbers['accuracy']:7.3f} {numbers['response_length']:8.1f} "
              f"{numbers['truncated_fraction']:6.3f} {score}")
    print(f"wrote {out / 'results.json'} and {out / 'samples.parquet'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
