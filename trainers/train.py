"""One training run without Ray:

    python -m trainers.train CONFIG.yaml [KEY=VALUE ...] [--output-dir DIR] [--smoke-test] [--resume | --overwrite]

``KEY=VALUE`` overrides a setting of the config (``train.steps=30 seed=1 lead.weighting.kind=static``;
a value is read as YAML), validated like the file; the resolved ``config.yaml`` in the output
directory replays the run, and ``summary.json`` lists the overrides.

Writes under the output directory (default ``runs/<config name>``, ``runs/<config name>-smoke``
for a smoke test; created private, mode 0700): ``metrics.jsonl`` (one line per step),
``eval_problems/step_N.parquet`` (per-problem tables), ``checkpoints/step_N/`` and
``summary.json`` (with the library versions); prints a final summary line. A step's metrics are
written before the checkpoint that covers it, so a kill never loses a step a resume skips.
A folder that holds a run needs ``--resume`` or ``--overwrite``; one this tool did not make is
never written into. Bad input (an unreadable config, unknown keys, wrong types, a missing model
directory, a checkpoint of other settings) prints one line naming the file and field, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from trainers import contract as M
from trainers.config import load_train_config
from trainers.io.fingerprint import versions
from trainers.io.outputs import MARKER, check_writable_dir, clear_owned, is_empty, make_private_dir, owner, write_atomic
from trainers.loop.base_model import ModelLoadError
from trainers.loop.checkpoint import CheckpointMismatch, check_checkpoint, checkpoint_step, latest_checkpoint
from trainers.loop.grpo import StepReport, train
from trainers.runtime import kernels
from trainers.settings import ConfigError, print_errors

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


class RunFiles:
    """The standalone reporter: metrics as JSON lines, eval tables as Parquet, and a progress bar."""

    def __init__(self, output_dir: Path, total_steps: int, first_step: int):
        self.output_dir = output_dir
        self.metrics_path = output_dir / METRICS_FILE
        self._drop_steps_after(first_step)  # a resumed run rewrites what came after its checkpoint
        self.bar = tqdm(total=total_steps, initial=first_step, desc="GRPO", unit="step", dynamic_ncols=True)

    def _drop_steps_after(self, step: int) -> None:
        """Keep the lines up to ``step``; a line torn by a kill mid-write is dropped too."""
        if not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text(errors="replace").splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        write_atomic(self.metrics_path, "".join(line + "\n" for line in kept))

    def __call__(self, report: StepReport) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps({"step": report.step, **report.metrics}) + "\n")
        for name, table in report.tables.items():
            write_atomic(self.output_dir / name / f"step_{report.step:06d}.parquet", table)
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


def default_output_dir(config: Path, smoke: bool) -> Path:
    """``runs/<config name>``, or ``runs/<config name>-smoke``: a smoke test never lands in a real run's folder."""
    return Path("runs") / (config.stem + ("-smoke" if smoke else ""))


def prepare_output_dir(output_dir: Path, resume: bool, overwrite: bool) -> None:
    """A fresh run needs an empty (or new) folder; a non-empty one must be a run folder of this
    tool and needs ``--resume`` or ``--overwrite``. Raises ValueError (one line)."""
    check_writable_dir(output_dir)
    if not is_empty(output_dir):
        if owner(output_dir) != "run":
            raise ValueError(f"{output_dir} is not empty and is not a run folder of lead-study (no {MARKER} "
                             "marker); choose another --output-dir")
        if overwrite:
            clear_owned(output_dir, "run")
        elif not resume:
            raise ValueError(f"{output_dir} holds a run: pass --resume to continue it or --overwrite to replace it")
    make_private_dir(output_dir, "run")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.train", description="One GRPO + LEAD run, no Ray.")
    parser.add_argument("config", type=Path, help="a fully resolved run config (YAML)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings over the config's, e.g. train.steps=30")
    parser.add_argument("--output-dir", type=Path, default=None, help="default: runs/<config name>[-smoke]")
    parser.add_argument("--smoke-test", action="store_true",
                        help="2 steps, tiny batches, one evaluation, a small base model: about a minute")
    both = parser.add_mutually_exclusive_group()
    both.add_argument("--resume", action="store_true", help="continue from the output dir's latest checkpoint")
    both.add_argument("--overwrite", action="store_true", help="replace the run in the output dir")
    args = parser.parse_intermixed_args(argv)
    try:
        kernels.level()  # before anything computes: a level that cannot hold is one line, not other numbers
        config = load_train_config(args.config, args.overrides)
        if args.smoke_test:
            config = config.smoke()
    except (ConfigError, kernels.KernelLevelError) as exc:
        return print_errors(exc)
    output_dir = (args.output_dir or default_output_dir(args.config, args.smoke_test)).expanduser().resolve()
    try:
        prepare_output_dir(output_dir, args.resume, args.overwrite)
    except (ValueError, OSError) as exc:
        print(f"error: --output-dir: {exc}", file=sys.stderr)
        return 2
    resume_from = latest_checkpoint(output_dir) if args.resume else None
    first_step = checkpoint_step(resume_from) if resume_from is not None else 0
    try:
        if resume_from is not None:
            check_checkpoint(resume_from, config)
    except CheckpointMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if first_step >= config.train.steps and (output_dir / SUMMARY_FILE).exists():
        print(f"the run in {output_dir} is complete (step {first_step}); its summary:")
        print(summary_line(json.loads((output_dir / SUMMARY_FILE).read_text())))
        return 0
    write_atomic(output_dir / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    files = RunFiles(output_dir, config.train.steps, first_step)
    log = lambda message: tqdm.write(message, file=sys.stderr)  # noqa: E731
    try:
        final = train(config, output_dir, report=files, resume_from=resume_from, log=log)
    except (ModelLoadError, CheckpointMismatch, kernels.KernelLevelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {**final, "threads": torch.get_num_threads(), "versions": versions(),  # threads change numbers
               "overrides": args.overrides}
    write_atomic(output_dir / SUMMARY_FILE, json.dumps(summary, indent=2))
    print(summary_line(final))
    print(f"outputs: {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
