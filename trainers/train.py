"""One training run without Ray:

    python -m trainers.train CONFIG.yaml [--output-dir DIR] [--smoke-test] [--resume]

Writes under the output directory: ``metrics.jsonl`` (one line per step), ``eval/step_N.parquet``
(per-problem tables), ``checkpoints/step_N/`` and ``summary.json``; prints a final summary line.
Bad input (an unreadable config, unknown keys, wrong types, a missing model directory) prints one
line naming the file and field and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from tqdm import tqdm

from trainers import metrics as M
from trainers.config import ConfigError, load_train_config
from trainers.grpo import ModelLoadError, StepReport, latest_checkpoint, train


class RunFiles:
    """The standalone reporter: metrics as JSON lines, eval tables as Parquet, and a progress bar."""

    def __init__(self, output_dir: Path, total_steps: int, first_step: int):
        self.output_dir = output_dir
        self.metrics_path = output_dir / "metrics.jsonl"
        self._drop_steps_after(first_step)  # a resumed run rewrites what came after its checkpoint
        self.bar = tqdm(total=total_steps, initial=first_step, desc="GRPO", unit="step", dynamic_ncols=True)

    def _drop_steps_after(self, step: int) -> None:
        if not self.metrics_path.exists():
            return
        kept = [line for line in self.metrics_path.read_text().splitlines() if json.loads(line)["step"] <= step]
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.metrics_path)

    def __call__(self, report: StepReport) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps({"step": report.step, **report.metrics}) + "\n")
        for name, table in report.tables.items():
            folder = self.output_dir / name
            folder.mkdir(exist_ok=True)
            tmp = folder / f".step_{report.step:06d}.parquet.tmp"
            pq.write_table(table, tmp)
            tmp.replace(folder / f"step_{report.step:06d}.parquet")
        m = report.metrics
        postfix = {"acc": m[M.TRAIN_ACCURACY], "len": m[M.TRAIN_RESPONSE_LENGTH], "w_corr": m[M.lead("w_corr")]}
        if M.EVAL_ACCURACY in m:
            postfix.update(eval_acc=m[M.EVAL_ACCURACY], eval_len=m[M.EVAL_RESPONSE_LENGTH])
        self.bar.set_postfix({k: round(v, 3) for k, v in postfix.items()}, refresh=False)
        self.bar.update(1)
        if report.done:
            self.bar.close()


def summary_line(final: dict[str, float]) -> str:
    def fmt(key: str, digits: int = 3) -> str:
        value = final.get(key, math.nan)
        return f"{value:.{digits}f}"

    return (
        f"done: eval accuracy {fmt(M.EVAL_ACCURACY)} (base {fmt(M.BASE_ACCURACY)}), "
        f"eval length {fmt(M.EVAL_RESPONSE_LENGTH, 1)} (base {fmt(M.BASE_RESPONSE_LENGTH, 1)}), "
        f"AES {fmt(M.EVAL_AES)}, w_corr {fmt(M.lead('w_corr'))}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.train", description="One GRPO + LEAD run, no Ray.")
    parser.add_argument("config", type=Path, help="a fully resolved run config (YAML)")
    parser.add_argument("--output-dir", type=Path, default=None, help="default: runs/<config name>")
    parser.add_argument("--smoke-test", action="store_true", help="2 steps, tiny batches, one evaluation")
    parser.add_argument("--resume", action="store_true", help="continue from the output dir's latest checkpoint")
    args = parser.parse_args(argv)
    try:
        config = load_train_config(args.config)
        if args.smoke_test:
            config = config.smoke()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    output_dir = (args.output_dir or Path("runs") / args.config.stem).resolve()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: --output-dir: cannot create {output_dir}: {exc.strerror}", file=sys.stderr)
        return 2
    resume_from = latest_checkpoint(output_dir) if args.resume else None
    first_step = 0
    if resume_from is not None:
        first_step = int(resume_from.name.removeprefix("step_"))
    elif (output_dir / "metrics.jsonl").exists():
        (output_dir / "metrics.jsonl").unlink()  # a fresh run in an old folder starts a fresh log
    (output_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    files = RunFiles(output_dir, config.train.steps, first_step)
    log = lambda message: tqdm.write(message, file=sys.stderr)  # noqa: E731
    try:
        final = train(config, output_dir, report=files, resume_from=resume_from, log=log)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    (output_dir / "summary.json").write_text(json.dumps(final, indent=2))
    print(summary_line(final))
    print(f"outputs: {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
