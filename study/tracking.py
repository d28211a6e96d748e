"""MLflow tracking of a study, from the driver only (one writer: no SQLite lock contention).

One experiment per study name; one parent run per study (tag ``lead_study.study_dir`` finds it
again on ``--resume``); one child run per trial (tag ``lead_study.trial_id`` finds it again after a
retry or a resume). Steps already logged for a trial are never logged twice: a retried trial
repeats the steps after its checkpoint exactly, so those results are skipped, and the last
logged step is read back from MLflow after a driver restart.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from study.trial import EVALUATED, REPORT_FILE, apply_search
from trainers import metrics as M

PARENT_TAG = "mlflow.parentRunId"
STUDY_DIR_TAG = "lead_study.study_dir"
TRIAL_TAG = "lead_study.trial_id"
STEP_KEY = M.TRAIN_ACCURACY  # every step logs it: its history tells the last logged step
EVERY_STEP = ("train/", "lead/", "loss/", "perf/")
ON_EVALUATION = ("eval/",)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)
    return out


def find_run(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> str | None:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([experiment_id], filter_string=query, max_results=1)
    return runs[0].info.run_id if runs else None


def start_study_run(tracking_uri: str, study: str, study_dir: Path, spec_path: Path, base_metrics: dict) -> tuple[str, str]:
    """The study's parent run (created, or found again on resume); returns (experiment_id, run_id)."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(study)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(study)
    run_id = find_run(client, experiment_id, {STUDY_DIR_TAG: str(study_dir), "lead_study.role": "study"})
    if run_id is None:
        run = client.create_run(
            experiment_id,
            run_name=study,
            tags={STUDY_DIR_TAG: str(study_dir), "lead_study.role": "study", "study": study},
        )
        run_id = run.info.run_id
        client.log_artifact(run_id, str(spec_path), artifact_path="spec")
        client.log_batch(run_id, metrics=[Metric(k, v, int(time.time() * 1000), 0) for k, v in base_metrics.items()])
    else:
        client.update_run(run_id, status="RUNNING")
    return experiment_id, run_id


def finish_study_run(tracking_uri: str, run_id: str, summary_rows: list[dict], status: str) -> None:
    client = MlflowClient(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "summary.json"
        path.write_text(json.dumps(summary_rows, indent=2))
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status=status)


class MLflowTracker(tune.Callback):
    """A Tune callback that mirrors every trial into a child run of the study's parent run."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, study: str, plans):
        self.plans = {p.name: p for p in plans}
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.study = study
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}  # trial_id -> run_id
        self._last_step: dict[str, int] = {}
        self._base_logged: set[str] = set()  # trial ids whose run holds base/* already

    def __getstate__(self):  # Tune pickles callbacks into the experiment state
        return {**self.__dict__, "_client": None}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def _run_for(self, trial) -> str:
        trial_id = trial.trial_id
        if trial_id in self._runs:
            return self._runs[trial_id]
        tags = {TRIAL_TAG: trial_id, PARENT_TAG: self.parent_run_id}
        run_id = find_run(self.client, self.experiment_id, tags)
        if run_id is None:
            plan = self.plans[trial.config["trial"]]
            run_id = self.client.create_run(
                self.experiment_id,
                run_name=str(trial),
                tags={**tags, "study": self.study, "arm": plan.arm, "variant": plan.variant, "seed": str(plan.seed)},
            ).info.run_id
            config = apply_search(plan.config, trial.config.get("search", {}))
            flat = flatten(config)
            for start in range(0, len(flat), 100):
                chunk = list(flat.items())[start : start + 100]
                self.client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in chunk])
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "train_config.yaml"
                path.write_text(yaml.safe_dump(config, sort_keys=False))
                self.client.log_artifact(run_id, str(path))
            self._last_step[trial_id] = 0
        else:
            history = self.client.get_metric_history(run_id, STEP_KEY)
            self._last_step[trial_id] = max((m.step for m in history), default=0)
            self.client.update_run(run_id, status="RUNNING")
        self._runs[trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run_for(trial)

    def on_trial_restore(self, iteration, trials, trial, **info):
        self._run_for(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self._run_for(trial)
        step = int(result["step"])
        if step <= self._last_step.get(trial.trial_id, 0):
            return  # already logged before a retry or resume: the repeat is identical
        prefixes = EVERY_STEP + (ON_EVALUATION if result.get(EVALUATED) else ())
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, step)
            for key, value in result.items()
            if key.startswith(prefixes) and isinstance(value, (int, float))
        ]
        for start in range(0, len(metrics), 500):
            self.client.log_batch(run_id, metrics=metrics[start : start + 500])
        if result.get(EVALUATED) and trial.trial_id not in self._base_logged:
            if not self.client.get_metric_history(run_id, M.BASE_ACCURACY):  # after a restart, ask once
                keys = (M.BASE_ACCURACY, M.BASE_RESPONSE_LENGTH)
                base = [Metric(k, float(result[k]), now, 0) for k in keys if k in result]
                self.client.log_batch(run_id, metrics=base)
            self._base_logged.add(trial.trial_id)
        self._last_step[trial.trial_id] = step

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        run_id = self._run_for(trial)
        with checkpoint.as_directory() as folder:
            table = Path(folder) / "eval_problems.parquet"
            if table.exists():
                step = json.loads((Path(folder) / REPORT_FILE).read_text())["step"]
                with tempfile.TemporaryDirectory() as tmp:
                    named = Path(tmp) / f"step_{step:06d}.parquet"
                    named.write_bytes(table.read_bytes())
                    self.client.log_artifact(run_id, str(named), artifact_path="eval_problems")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.client.set_terminated(self._run_for(trial), status="FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.client.set_terminated(self._run_for(trial), status="FAILED")
