"""Math word problems from local files: MATH for training, MATH-500 / AIME / AMC / OlympiadBench /
Minerva for evaluation.

Two layouts are read (pyarrow), by extension:

- ``.parquet`` in verl's layout: ``prompt`` (a list of chat messages; the user message is the
  problem), ``reward_model.ground_truth``, optional ``extra_info`` and ``data_source``;
- ``.jsonl``: one ``{"problem": ..., "answer": ..., "meta": {...}}`` per line.

Every problem gets a stable id: the first 8 bytes of the BLAKE2b hash of its whitespace-normalised
text (without the prompt suffix verl's files append), as a non-negative int64, so per-problem targets and tables follow a problem across files,
orders and runs. A missing column, an empty problem or answer, or an unreadable file is a
``DatasetError`` naming the file and row.

Prompts go through the tokenizer's own chat template, with the paper's suffix appended unless the
text already ends with it (verl's MATH files carry it). With R1-style models the template opens
``<think>``; the response length is every generated token, thinking included, as in the paper.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from trainers.settings import Strict, must_exist
from trainers.tasks import TaskSettings, register_task
from trainers.tasks.grading import FALLBACKS, Grader, last_boxed

SUFFIX = "Let's think step by step and output the final answer within \\boxed{}."
# jsonl quirk (benchmarks/SOURCES.md): "\f" and "\t" of "\frac" / "\triangle" read as JSON escapes
_LOST_ESCAPES = re.compile(r"[\x0c\t](?=[a-zA-Z])")


class DatasetError(ValueError):
    """A data file that cannot be used, in one line naming the file (and row)."""


class GraderConfig(Strict):
    fallbacks: list[Literal[FALLBACKS]] = Field(default_factory=list, description="where else to look without a box")
    timeout_s: float = Field(5.0, gt=0.0, description="CPU-seconds per graded response (a pathological output stops there and counts as wrong)")
    workers: int | None = Field(None, ge=1, description="grading processes (None: up to 4)")


@register_task("math")
class MathTaskConfig(TaskSettings):
    """Settings of a math task: where the data is, how prompts are built and answers graded."""

    kind: Literal["math"] = "math"
    train_files: list[Path] = Field(description="training problems (.parquet in verl's layout, or .jsonl)")
    eval_files: list[Path] = Field(description="evaluation problems, in the same formats")
    suffix: str = Field(SUFFIX, description="appended to every problem (unless already there)")
    system_prompt: str | None = None
    grader: GraderConfig = GraderConfig()
    eval_seed: int = 1234
    truncated_is_wrong: bool = Field(False, description="a response cut off by the budget counts as incorrect (ThinkPrune)")

    @field_validator("train_files", "eval_files")
    @classmethod
    def _files_exist(cls, files: list[Path]) -> list[Path]:
        if not files:
            raise ValueError("give at least one file")
        files = [path.expanduser().resolve() for path in files]
        for path in files:
            must_exist(path, f"{path}: no such file")
        return files

    def build(self) -> "MathTask":
        return MathTask(self)

    def check_run(self, config) -> None:
        if config.model.path is None:
            raise ValueError("model.path: the math task needs a model directory (the built-in tiny model knows only sums)")


@dataclass(frozen=True)
class MathProblem:
    problem: str
    answer: str
    source: str  # file name (and data_source where the file has one)
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def id(self) -> int:
        return problem_id(self.problem)


def problem_id(text: str) -> int:
    normalised = " ".join(text.split()).encode()
    return int.from_bytes(hashlib.blake2b(normalised, digest_size=8).digest(), "big") >> 1


def _read_jsonl(path: Path) -> list[MathProblem]:
    problems = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    for row, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{row}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DatasetError(f"{path}:{row}: expected an object with 'problem' and 'answer'")
        for key in ("problem", "answer"):
            if key not in record:
                raise DatasetError(f"{path}:{row}: missing '{key}'")
            if isinstance(record[key], bool) or not isinstance(record[key], str | int | float):
                raise DatasetError(f"{path}:{row}: '{key}' is {json.dumps(record[key])[:40]}, not text")
        problem, answer = (_LOST_ESCAPES.sub(lambda m: "\\f" if m.group(0) == "\x0c" else "\\t", str(record[k]))
                           for k in ("problem", "answer"))
        problems.append(_checked(path, row, problem, answer, path.name, record.get("meta") or {}))
    return problems


def _read_parquet(path: Path) -> list[MathProblem]:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DatasetError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    for column in ("prompt", "reward_model"):
        if column not in table.column_names:
            raise DatasetError(f"{path}: missing column '{column}' (verl layout: prompt, reward_model.ground_truth)")
    sources = table["data_source"].to_pylist() if "data_source" in table.column_names else [None] * table.num_rows
    extra = table["extra_info"].to_pylist() if "extra_info" in table.column_names else [None] * table.num_rows
    problems = []
    for row, (messages, reward, source, info) in enumerate(
        zip(table["prompt"].to_pylist(), table["reward_model"].to_pylist(), sources, extra), start=1
    ):
        users = [m.get("content") for m in messages or [] if m.get("role") == "user"]
        if not users:
            raise DatasetError(f"{path}:{row}: prompt has no user message")
        if not reward or "ground_truth" not in reward:
            raise DatasetError(f"{path}:{row}: missing reward_model.ground_truth")
        name = f"{path.name}:{source}" if source else path.name
        text = (users[-1] or "").rstrip()
        text = text[: -len(SUFFIX)].rstrip() if text.endswith(SUFFIX) else text  # the prompt adds it back
        problems.append(_checked(path, row, text, str(reward["ground_truth"] or ""), name, info or {}))
    return problems


def _checked(path: Path, row: int, problem: str, answer: str, source: str, meta: dict) -> MathProblem:
    if not problem.strip():
        raise DatasetError(f"{path}:{row}: empty problem")
    if not answer.strip():
        raise DatasetError(f"{path}:{row}: empty answer")
    return MathProblem(problem, answer, source, meta)


def load_problems(path: Path) -> list[MathProblem]:
    """Every problem of a ``.parquet`` (verl) or ``.jsonl`` file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    readers = {".parquet": _read_parquet, ".jsonl": _read_jsonl}
    if path.suffix not in readers:
        raise DatasetError(f"{path}: unknown format '{path.suffix}' (use .parquet in verl's layout or .jsonl)")
    problems = readers[path.suffix](path)
    if not problems:
        raise DatasetError(f"{path}: no problems")
    return problems


def chat_prompt_ids(tokenizer, text: str, suffix: str = SUFFIX, system_prompt: str | None = None) -> list[int]:
    """The problem with the suffix, formatted by the tokenizer's own chat template, generation
    prompt included (an R1 template opens ``<think>`` there)."""
    content = text if not suffix or text.rstrip().endswith(suffix) else f"{text.rstrip()} {suffix}"
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": content}
    ]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    return list(ids["input_ids"] if isinstance(ids, dict) else ids)


class MathTask:
    """The trainer's view of a math data set: seeded epochs over the training files, a fixed
    evaluation set, chat prompts and safe grading."""

    def __init__(self, config: MathTaskConfig):
        self.config = config
        self.train = [p for path in config.train_files for p in load_problems(path)]
        self._eval = [p for path in config.eval_files for p in load_problems(path)]
        self.grader = Grader(config.grader.fallbacks, config.grader.workers)
        self._prompts: dict[int, list[int]] = {}
        self._order_key: tuple[int, int] | None = None
        self._order: list[int] = []

    def train_problems(self, step: int, count: int, seed: int) -> list[MathProblem]:
        """Batch ``step`` of epochs over the training set, each epoch a fresh seeded shuffle: a pure
        function of (seed, step), so a resumed run sees exactly the batches it would have seen."""
        batch = []
        for position in range(step * count, (step + 1) * count):
            epoch, index = divmod(position, len(self.train))
            batch.append(self.train[self._epoch_order(seed, epoch)[index]])
        return batch

    def _epoch_order(self, seed: int, epoch: int) -> list[int]:
        if self._order_key != (seed, epoch):
            self._order = list(range(len(self.train)))
            random.Random(f"{seed}-{epoch}").shuffle(self._order)
            self._order_key = (seed, epoch)
        return self._order

    def eval_problems(self) -> list[MathProblem]:
        return list(self._eval)

    def prompt_ids(self, problem: MathProblem, tokenizer) -> list[int]:
        if problem.id not in self._prompts:
            self._prompts[problem.id] = chat_prompt_ids(tokenizer, problem.problem, self.config.suffix,
                                                        self.config.system_prompt)
        return self._prompts[problem.id]

    def grade(self, responses: list[str], problems: list[MathProblem]) -> list[float]:
        return self.grader.grade(responses, [p.answer for p in problems], self.config.grader.timeout_s)

    def close(self) -> None:
        """Stop the grading processes."""
        self.grader.close()

    def grading_counts(self) -> dict[str, int]:
        """Responses whose grading raised or hit the limit so far (see ``Grader``)."""
        return self.grader.counts()

    def response_features(self, response: str) -> dict[str, int]:
        """Per response: whether it boxed an answer, and whether it closed its ``<think>`` block."""
        return {"boxed": int(last_boxed(response) is not None), "think_closed": int("</think>" in response)}
