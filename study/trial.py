"""The Ray Tune trainable: one trial = one trainer run, restored from ``tune.get_checkpoint()``.

Each trainer step becomes one ``tune.report``; steps that wrote a trainer checkpoint report it
as a Tune checkpoint, with the step's per-problem eval table and the latest eval metrics added to
the folder (the driver's MLflow tracker reads the table from there). Every result carries the
latest eval metrics, so searchers and schedulers always find their metric; ``evaluated`` says
whether this step measured them itself.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from ray import tune

from study.shipping import fetch
from trainers import contract as M
from trainers.config import TrainConfig
from trainers.io.fingerprint import versions
from trainers.loop.grpo import StepReport, train
from trainers.settings import deep_merge, dotted

REPORT_FILE = "report.json"  # in each Tune checkpoint: {"step", "last_eval", "trial_id", "trial_name", "settings"}
EVALUATED = "evaluated"
EXPLOIT = "exploit"  # in the first result after a PBT exploit: a JSON record (``exploit_record``)
MADE_WITH = "made_with"  # in every result: the trial process's own versions() as JSON, its CPU kernel level included
PROBLEM_SCORES = "problem_scores"  # in a trial's last result: its final evaluation per problem, as JSON (problem_scores())


def problem_scores(table) -> str:
    """A final evaluation's per-problem accuracy and mean length, as the sequential design reads them."""
    return json.dumps({"problem_id": table["problem_id"].to_pylist(), "accuracy": table["accuracy"].to_pylist(),
                       "length": table["mean_length"].to_pylist()})


def apply_search(config: dict[str, Any], search: dict[str, Any]) -> dict[str, Any]:
    """Merge sampled dotted-key values (Optuna's, e.g. ``lead.weighting.beta``) into a trial config."""
    for key, value in search.items():
        config = deep_merge(config, dotted(key, value))
    return config


def exploit_record(saved: dict[str, Any], trial_id: str, settings: dict) -> dict | None:
    """When a trial starts from a checkpoint another trial wrote (a PBT exploit): ``step`` (the
    donor's step it continues from), ``donor`` (the donor's trial name), ``donor_settings`` and
    ``new`` (the settings it goes on with); None for its own checkpoint. (The driver adds ``old``.)"""
    if saved.get("trial_id", trial_id) == trial_id:
        return None
    return {"step": saved["step"], "donor": saved["trial_name"], "donor_settings": saved["settings"], "new": settings}


def run_trial(params: dict[str, Any], plans: dict[str, dict[str, Any]]) -> None:
    """``params``: {"trial": plan name, "search": {dotted key: value}} (searched settings: Optuna's
    samples, a population's current values); ``plans``: every trial's plan by name (name, arm,
    variant, seed, config, threads, changeable: the settings a population may change on restore)."""
    trial = plans[params["trial"]]
    settings = params.get("search", {})
    config = trial["config"] if trial["shipped"] is None else fetch(trial["shipped"], trial["config"], log=print)
    config = TrainConfig.of(apply_search(config, settings))
    torch.set_num_threads(trial["threads"])
    made_with = json.dumps(versions())  # this process's, on whichever node it runs
    context = tune.get_context()
    trial_dir = Path(context.get_trial_dir())
    trial_dir.mkdir(parents=True, exist_ok=True)  # on a node other than the driver's, Ray has not made it yet
    (trial_dir / "worker.pid").write_text(str(os.getpid()))  # which process runs this trial
    last_eval: dict[str, float] = {M.EVAL_AES: math.nan, M.EVAL_ACCURACY: math.nan, M.EVAL_RESPONSE_LENGTH: math.nan}
    resume_from, exploit = None, None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        resume_from = Path(checkpoint.to_directory(str(trial_dir / f"restored-{Path(checkpoint.path).name}")))
        saved = json.loads((resume_from / REPORT_FILE).read_text())
        last_eval.update(saved["last_eval"])
        exploit = exploit_record(saved, context.get_trial_id(), settings)

    def report(step: StepReport) -> None:
        nonlocal exploit
        evaluated = M.EVAL_ACCURACY in step.metrics
        if evaluated:
            last_eval.update({k: v for k, v in step.metrics.items() if k.startswith((*M.EVALUATION_PREFIXES, M.BASE_PREFIX))})
        result = {**step.metrics, **last_eval, "step": step.step, EVALUATED: float(evaluated)}
        numbers = {key: value for key, value in settings.items() if isinstance(value, (int, float))}
        result.update({M.SETTING_PREFIX + key: float(value) for key, value in numbers.items()})
        result["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        result[MADE_WITH] = made_with
        if exploit is not None:
            result[EXPLOIT], exploit = json.dumps(exploit), None
        if step.done and "eval_problems" in step.tables:
            result[PROBLEM_SCORES] = problem_scores(step.tables["eval_problems"])
        if step.checkpoint_dir is None:
            tune.report(result)
            return
        written = {"step": step.step, "last_eval": last_eval, "trial_id": context.get_trial_id(),
                   "trial_name": context.get_trial_name(), "settings": settings}
        (step.checkpoint_dir / REPORT_FILE).write_text(json.dumps(written))
        for name, table in step.tables.items():
            pq.write_table(table, step.checkpoint_dir / f"{name}.parquet")
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(str(step.checkpoint_dir)))

    train(config, trial_dir / "run", report=report, resume_from=resume_from, log=print,
          changeable=tuple(trial.get("changeable", ())))
