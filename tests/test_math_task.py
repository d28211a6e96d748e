"""Math data sets (verl parquet and JSON Lines), stable ids, clear errors, chat prompts, the math task
in the trainer's config, and ``python -m trainers.evaluate`` end to end on a tiny chat model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_main
from trainers.config import TrainConfig
from trainers.models.tiny_chat import build_tiny_chat_model
from trainers.settings import ConfigError
from trainers.tasks.math import SUFFIX, DatasetError, MathTask, MathTaskConfig, chat_prompt_ids, load_problems, problem_id

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests/fixtures/math_problems.jsonl"
DATA = Path(os.environ.get("LEAD_DATA_DIR") or ROOT.parent / "shared" / "data")
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real math data not found at {DATA} (set LEAD_DATA_DIR)")


def verl_parquet(path: Path, rows: list[dict]) -> Path:
    """The fixture's problems in verl's layout (prompt chat list, reward_model.ground_truth, extra_info)."""
    table = pa.table({
        "data_source": ["fixture"] * len(rows),
        "prompt": [[{"content": r["problem"] + " " + SUFFIX, "role": "user"}] for r in rows],
        "ability": ["math"] * len(rows),
        "reward_model": [{"ground_truth": r["answer"], "style": "rule"} for r in rows],
        "extra_info": [{"index": i, "split": "train"} for i in range(len(rows))],
    })
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def fixture_rows():
    return [json.loads(line) for line in FIXTURE.read_text().splitlines()]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat"), [FIXTURE])


def test_both_layouts_give_the_same_problems_and_ids(fixture_rows, tmp_path):
    from_jsonl = load_problems(FIXTURE)
    from_parquet = load_problems(verl_parquet(tmp_path / "train.parquet", fixture_rows))
    assert [p.answer for p in from_jsonl] == [r["answer"] for r in fixture_rows]
    assert [p.answer for p in from_parquet] == [p.answer for p in from_jsonl]
    assert from_jsonl[0].meta == {"row": 0} and from_parquet[0].source == "train.parquet:fixture"
    ids = [p.id for p in from_jsonl]
    assert len(set(ids)) == len(ids) and all(0 <= i < 2**63 for i in ids)
    assert problem_id("What  is\n$1$?") == problem_id("What is $1$?")  # whitespace does not matter


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("a.jsonl", '{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?"}\n', "a.jsonl:2: missing 'answer'"),
        ("b.jsonl", '{"problem": "1+1?", "answer": " "}\n', "b.jsonl:1: empty answer"),
        ("c.jsonl", '{"problem": "1+1?", "answer": "2"}\nnot json\n', "c.jsonl:2: not JSON"),
        ("d.jsonl", "", "d.jsonl: no problems"),
        ("e.csv", "problem,answer\n", "e.csv: unknown format '.csv'"),
        ("f.parquet", "not parquet", "f.parquet: not a readable Parquet file"),
    ],
)
def test_bad_files_name_the_file_and_row(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DatasetError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_problems(path)


def test_parquet_without_the_verl_columns(tmp_path):
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"question": ["1+1?"], "answer": ["2"]}), path)
    with pytest.raises(DatasetError, match="plain.parquet: missing column 'prompt'"):
        load_problems(path)


def test_jsonl_escape_quirks_are_repaired(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"problem": "\frac{1}{2} of \triangle ABC", "answer": "\frac12"}) + "\n")
    (problem,) = load_problems(path)
    assert problem.problem == "\\frac{1}{2} of \\triangle ABC" and problem.answer == "\\frac12"


@needs_data
def test_real_files_load_with_unique_ids_per_file():
    sizes = {"math/train.parquet": 8521, "math/test.parquet": 500, "benchmarks/aime24.jsonl": 30,
             "benchmarks/aime25.jsonl": 30, "benchmarks/amc23.jsonl": 40, "benchmarks/minerva.jsonl": 272,
             "benchmarks/olympiadbench.jsonl": 675}
    for name, size in sizes.items():
        problems = load_problems(DATA / name)
        assert len(problems) == size, name
        assert len({p.id for p in problems}) >= size - 2, name  # MATH train repeats two problems verbatim
    aime25 = load_problems(DATA / "benchmarks/aime25.jsonl")
    assert not any("\x0c" in p.problem or "\t" in p.problem for p in aime25)


def test_chat_prompts_use_the_template_and_the_suffix_once(chat_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    text = tokenizer.decode(chat_prompt_ids(tokenizer, "What is $1+1$?"))
    assert text == f"<|User|>What is $1+1$? {SUFFIX}<|Assistant|><think>\n"
    again = tokenizer.decode(chat_prompt_ids(tokenizer, f"What is $1+1$? {SUFFIX}"))
    assert again == text  # verl's files already carry the suffix
    system = tokenizer.decode(chat_prompt_ids(tokenizer, "Q", system_prompt="Be brief."))
    assert system.startswith("Be brief.<|User|>Q")


def test_math_task_batches_are_seeded_epochs(fixture_rows, tmp_path):
    train = verl_parquet(tmp_path / "train.parquet", fixture_rows)
    task = MathTask(MathTaskConfig(train_files=[train], eval_files=[FIXTURE]))
    first_epoch = [p.id for step in range(3) for p in task.train_problems(step, 4, seed=0)]
    assert sorted(first_epoch) == sorted(p.id for p in load_problems(FIXTURE))  # each problem once per epoch
    assert [p.id for p in task.train_problems(5, 4, 0)] == [p.id for p in task.train_problems(5, 4, 0)]
    assert [p.id for p in task.train_problems(0, 4, 1)] != [p.id for p in task.train_problems(0, 4, 0)]
    problems = task.eval_problems()[:2]
    assert task.grade(["\\boxed{11}", "\\boxed{3/4}"], problems) == [1.0, 1.0]
    assert task.response_features("<think>x</think> \\boxed{2}") == {"boxed": 1, "think_closed": 1}
    task.grader.close()


def test_the_trainer_config_takes_a_math_task(chat_model, tmp_path):
    task = {"kind": "math", "train_files": [str(FIXTURE)], "eval_files": [str(FIXTURE)], "grader": {"timeout_s": 2}}
    config = TrainConfig.model_validate({"task": task, "model": {"path": str(chat_model)}})
    assert config.task.kind == "math" and config.task.grader.timeout_s == 2
    assert TrainConfig.model_validate({"task": {"max_terms": 5}}).task.kind == "synthetic"  # the default
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"task": task}))
    with pytest.raises(ConfigError, match="model.path: the math task needs a model directory"):
        from trainers.settings import load_validated

        load_validated(path, TrainConfig)


def run_evaluate(*args, cwd):
    return subprocess.run([sys.executable, "-m", "trainers.evaluate", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def evaluate_in_process(*args, cwd):
    from trainers.evaluate import main

    return run_main(main, *args, cwd=cwd)


def test_evaluate_cli_end_to_end_and_resume(chat_model, tmp_path):
    out = tmp_path / "eval"
    args = ["--model", str(chat_model), "--benchmarks", f"fix={FIXTURE}:2,mini={FIXTURE}:1", "--max-tokens", "16",
            "--batch-size", "5", "--device", "cpu", "--out", str(out)]
    first = run_evaluate(*args, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-2000:]
    samples = pq.read_table(out / "samples.parquet")
    assert samples.num_rows == 12 * 2 + 12 * 1
    assert samples.schema.names == ["benchmark", "problem_id", "sample", "response_length", "truncated",
                                    "extracted_answer", "correct"]
    results = json.loads((out / "results.json").read_text())
    assert set(results["benchmarks"]) == {"fix", "mini"} and results["benchmarks"]["fix"]["samples"] == 24
    assert results["grader"] == {"errors": 0, "timeouts": 0} and results["versions"]["transformers"] != "not installed"
    assert 0 < results["overall"]["response_length"] <= 16
    chunk = out / "chunks/fix/000005.parquet"
    saved = pq.read_table(chunk)
    chunk.unlink()  # as if interrupted before this chunk: a rerun redoes it alone, identically
    second = run_evaluate(*args, "--base-results", str(out / "results.json"), cwd=ROOT)
    assert second.returncode == 0, second.stderr[-2000:]
    assert pq.read_table(chunk).equals(saved)
    assert pq.read_table(out / "samples.parquet").equals(samples)
    rerun = json.loads((out / "results.json").read_text())
    assert rerun["benchmarks"]["fix"]["accuracy"] == results["benchmarks"]["fix"]["accuracy"]


def test_evaluate_cli_bad_input(chat_model, tmp_path):
    cases = [
        (["--model", str(chat_model), "--benchmarks", "gsm8k"], "error: --benchmarks: unknown benchmark 'gsm8k'"),
        (["--model", str(chat_model), "--benchmarks", "aime24", "--data-dir", str(tmp_path)],
         f"error: --benchmarks: aime24: no file at {tmp_path}/benchmarks/aime24.jsonl"),
        (["--model", str(tmp_path), "--benchmarks", f"fix={FIXTURE}"], "error: --model: "),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "x"}\n')
    cases.append((["--model", str(chat_model), "--benchmarks", f"bad={bad}"], f"error: {bad}:1: missing 'answer'"))
    for args, message in cases:
        proc = evaluate_in_process(*args, "--out", str(tmp_path / "never"), cwd=ROOT)
        assert proc.returncode == 2 and proc.stderr.strip().startswith(message), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


def test_evaluate_reports_every_bad_flag_at_once_before_loading_anything(chat_model, tmp_path):
    nulls = tmp_path / "nulls.jsonl"
    nulls.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "x", "answer": null}\n')
    proc = evaluate_in_process("--model", str(chat_model), "--benchmarks", f"n={nulls},f={FIXTURE}:abc", "--limit", "-1",
                        "--max-tokens", "0", "--batch-size", "0", "--temperature", "nan", "--top-p", "2",
                        "--grading-timeout", "0", "--device", "tpu", "--out", "/proc/lead-study-eval", cwd=ROOT)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2
    for expected in ("--max-tokens: must be at least 1, got 0", "--batch-size: must be at least 1, got 0",
                     "--limit: must be at least 1, got -1", "--temperature: must be a finite number >= 0, got nan",
                     "--top-p: must be in (0, 1], got 2.0", "--grading-timeout: must be a positive number",
                     "--device: must be auto, cpu, cuda or cuda:N, got 'tpu'",
                     "--benchmarks: f: samples per problem ':abc' must be a whole number", f"{nulls}:2: 'answer' is null, not text",
                     "--out: /proc/lead-study-eval: cannot write in /proc"):
        assert sum(expected in line for line in lines) == 1, (expected, lines)
    assert all(line.startswith("error: ") for line in lines) and len(lines) == 10


def test_grpo_trains_on_the_math_task(chat_model, tmp_path):
    """Two GRPO steps and an evaluation on the fixture, through the same loop as the synthetic task."""
    from trainers.loop.grpo import train

    config = TrainConfig.model_validate({
        "model": {"path": str(chat_model), "cache_dir": str(tmp_path / "cache")},
        "task": {"kind": "math", "train_files": [str(FIXTURE)], "eval_files": [str(FIXTURE)], "grader": {"workers": 1}},
        "rollout": {"n": 2, "max_new_tokens": 12, "max_prompt_tokens": 256},
        "train": {"steps": 2, "prompts_per_step": 2, "mini_batch_size": 4, "micro_batch_size": 2},
        "eval": {"every": 2, "num_problems": 4},
        "checkpoint": {"every": 2},
    })
    reports = []
    final = train(config, tmp_path / "run", report=reports.append, log=lambda _: None)
    assert [r.step for r in reports] == [1, 2]
    assert 0 < final["train/response_length"] <= 12 and final["eval/accuracy"] == 0.0  # an untrained model
    assert "eval/boxed_per_response" in final and (tmp_path / "run").is_dir()
