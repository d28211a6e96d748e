"""MLflow tracking of a study, from the driver only (one writer: no SQLite lock contention).

One experiment per study name; one parent run per study (tag ``lead_study.study_dir`` finds it
again on ``--resume``); one child run per trial (tag ``lead_study.trial_id`` finds it again after a
retry or a resume). Steps already logged for a trial are never logged twice: a retried trial
repeats the steps after its checkpoint exactly, so those results are skipped, and the last
logged step is read back from MLflow after a driver restart.

Each trial's whole history is also kept as one Parquet artifact (``HISTORY_ARTIFACT``), rewritten
at every checkpoint and when the trial ends, so ``analysis.load`` reads a study with one download
per trial instead of one request per metric key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from stores.mlflow_store import read_json_artifact
from study.replay import HEADER, W_CORR, replay_config
from study.trial import EVALUATED, EXPLOIT, MADE_WITH, REPORT_FILE, apply_search
from trainers import contract as M
from trainers.contract import (
    EXPLOIT_METRIC, EXPLOITS_ARTIFACT, HISTORY_ARTIFACT, HISTORY_SCHEMA, PLANNED_ARTIFACT, STEP_KEY,
    TAG_HISTORY_STEP, TAG_LOGGED_STEP, TAG_ROLE, TAG_STUDY_DIR, TAG_STUDY_RUN, TAG_TRIAL_ID, ROLE_STUDY,
)
from trainers.io.fingerprint import versions
from trainers.io.lineage import lineage


_PLAIN_VALUE = re.compile(r"[\w.:/-]*")


def find_run(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> str | None:
    """The run carrying all of ``tags``. Values with quotes or other specials (a folder named
    ``it's``) are compared here, never spliced into MLflow's filter string."""
    plain = {k: v for k, v in tags.items() if _PLAIN_VALUE.fullmatch(v)}
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in plain.items())
    runs = client.search_runs([experiment_id], filter_string=query, max_results=50_000)
    found = [r for r in runs if all(r.data.tags.get(k) == v for k, v in tags.items())]
    return found[0].info.run_id if found else None


def log_json(client: MlflowClient, run_id: str, name: str, content) -> None:
    """``content`` as the JSON artifact ``name`` (``folder/file.json`` goes into ``folder``)."""
    folder, _, file = name.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / file
        path.write_text(json.dumps(content, indent=2))
        client.log_artifact(run_id, str(path), artifact_path=folder or None)


def log_yaml(client: MlflowClient, run_id: str, name: str, content: dict, header: str = "") -> None:
    """``content`` as the YAML artifact ``name`` (at the run's top level), after a ``header`` comment."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(header + yaml.safe_dump(content, sort_keys=False))
        client.log_artifact(run_id, str(path))


def write_history_artifact(client: MlflowClient, run_id: str, rows: list[tuple[str, int, float]], step: int) -> None:
    """A run's (key, step, value) rows as ``HISTORY_ARTIFACT``, then the tag saying it holds ``step``."""
    columns = list(zip(*rows)) if rows else [[], [], []]
    table = pa.table(dict(zip(HISTORY_SCHEMA.names, columns)), schema=HISTORY_SCHEMA)
    folder, name = HISTORY_ARTIFACT.rsplit("/", 1)
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(table, Path(tmp) / name)
        client.log_artifact(run_id, str(Path(tmp) / name), artifact_path=folder)
    client.set_tag(run_id, TAG_HISTORY_STEP, str(step))


def artifact_location(tracking_uri: str) -> str | None:
    """A SQLite store keeps its artifacts beside the database (``mlruns/`` next to it), not in
    whatever directory the study happened to be started from; other stores keep their default."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri()
    return None


def version_tags() -> dict[str, str]:
    """``version.torch`` etc.: what the run was made with (``trainers.io.fingerprint.versions``), as the
    driver sees it; a trial's run then takes its own process's (``MADE_WITH``, with every step)."""
    return {M.version_tag(name): version for name, version in versions().items()}


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # the UI opens a model-training experiment on its runs, not a GenAI overview
TRIALS_VIEW = "lead-study-trials"  # a shared view state of the MLflow UI (an experiment tag)
TRIALS_VIEW_STATE = {  # every trial (not the first ten), grouped by arm and variant, each drawn alone, the study's curves first
    "searchFilter": "",
    "orderByKey": "attributes.start_time",
    "orderByAsc": False,
    "runsHiddenMode": "SHOW_ALL",
    "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": M.TAG_ARM_VARIANT}]},
    "groupsExpanded": {},
    "useGroupedValuesInCharts": False,
    "hideEmptyCharts": True,
    "chartsSearchFilter": "w_corr|eval/accuracy|eval/aes|eval/response_length|train/accuracy|train/response_length",
}


def trials_view_url(ui_url: str, experiment_id: str) -> str:
    """Where the MLflow UI charts the study's trials, grouped by arm. ``workflowType`` matters: the
    UI (3.x) otherwise opens every experiment on its GenAI overview, whatever the experiment's kind."""
    return (f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={TRIALS_VIEW}&compareRunsMode=CHART")


def configure_experiment(client: MlflowClient, experiment_id: str) -> None:
    """Mark the study's experiment as model training and store the trials view (see ``trials_view_url``)."""
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, "custom_model_development")
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{TRIALS_VIEW}", json.dumps(TRIALS_VIEW_STATE))


def start_study_run(
    tracking_uri: str, study: str, study_dir: Path, spec_path: Path, base_metrics: dict, trial_names: list[str],
    focus: str, design: str = "fixed", overrides: list[str] = (),
) -> tuple[str, str]:
    """The study's parent run (created, or found again on resume), tagged with the arm under test
    (``focus``), its design (``fixed``, or a sequential design's settings as JSON) and the spec's
    ``--set`` overrides; returns (experiment_id, run_id). A resume with other overrides than the
    study started with is a ValueError (one line)."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(study)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        study, artifact_location=artifact_location(tracking_uri)
    )
    configure_experiment(client, experiment_id)
    run_id = find_run(client, experiment_id, {TAG_STUDY_DIR: str(study_dir), TAG_ROLE: ROLE_STUDY})
    if run_id is None:
        run = client.create_run(
            experiment_id,
            run_name=f"{study} (study)",
            tags={TAG_STUDY_DIR: str(study_dir), TAG_ROLE: ROLE_STUDY, M.TAG_STUDY: study, M.TAG_FOCUS: focus,
                  M.TAG_DESIGN: design, M.TAG_OVERRIDES: json.dumps(list(overrides)), **version_tags()},
        )
        run_id = run.info.run_id
        client.log_artifact(run_id, str(spec_path), artifact_path=M.SPEC_FOLDER)
        log_json(client, run_id, PLANNED_ARTIFACT, trial_names)
        client.log_batch(run_id, metrics=[Metric(k, v, int(time.time() * 1000), 0) for k, v in base_metrics.items()])
    else:
        started = json.loads(client.get_run(run_id).data.tags.get(M.TAG_OVERRIDES, "[]"))
        if started != list(overrides):
            raise ValueError(f"--set: the study started with {started or 'no overrides'}; resume it with the same")
        client.update_run(run_id, status="RUNNING")
    return experiment_id, run_id


class LookRecorder:
    """A sequential study's looks on its MLflow run, as they happen: the metrics
    ``sequential/<comparison>/{estimate,low,high}`` at step = seeds (the UI charts each comparison's
    repeated interval against the seeds), and ``DECISION_PATH_ARTIFACT``: every look in order with
    its interval, boundary, decision, the trials started so far and the trials it asked for next.
    Why the study started no more trials goes into the tag ``TAG_DESIGN_STOPPED``."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.path: list[dict] | None = None  # read back from the run the first time (a resumed study's)

    def looks_so_far(self, client: MlflowClient) -> list[dict]:
        if self.path is None:
            self.path = read_json_artifact(client, self.run_id, M.DECISION_PATH_ARTIFACT) or []
        return self.path

    def __call__(self, comparison: str, look, started: int, next_trials: list[str]) -> None:
        client = MlflowClient(self.tracking_uri)
        numbers = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in dataclasses.asdict(look).items()}
        record = {"comparison": comparison, **numbers, "trials_started": started, "next": next_trials}
        path = self.looks_so_far(client) + [record]
        now = int(time.time() * 1000)
        metrics = [Metric(f"{M.SEQUENTIAL_PREFIX}{comparison}/{key}", getattr(look, key), now, look.seeds)
                   for key in ("estimate", "low", "high") if math.isfinite(getattr(look, key))]
        client.log_batch(self.run_id, metrics=metrics)
        log_json(client, self.run_id, M.DECISION_PATH_ARTIFACT, path)
        self.path = path

    def stopped(self, reason: str) -> None:
        MlflowClient(self.tracking_uri).set_tag(self.run_id, M.TAG_DESIGN_STOPPED, reason)

    def __getstate__(self):  # pickled with the searcher into Tune's experiment state: the path stays in MLflow
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "path": None}


def finish_study_run(tracking_uri: str, run_id: str, summary_rows: list[dict], status: str) -> None:
    """End the study's run with ``status``; with trial rows, log them as ``summary.json`` (with the versions)."""
    client = MlflowClient(tracking_uri)
    if summary_rows:
        log_json(client, run_id, M.SUMMARY_ARTIFACT, {"trials": summary_rows, "versions": versions()})
    client.set_terminated(run_id, status=status)


class MLflowTracker(tune.Callback):
    """A Tune callback that mirrors every trial into a child run of the study's parent run."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, study: str, plans, threads: int):
        self.plans = {p.name: p for p in plans}
        self.threads = threads  # torch threads per trial: they change numbers, so every run records them
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.study = study
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}  # trial_id -> run_id
        self._last_step: dict[str, int] = {}
        self._base_logged: set[str] = set()  # trial ids whose run holds base/* already
        self._history: dict[str, list[tuple[str, int, float]]] = {}  # trial id -> what its run holds
        self._exploits: dict[str, list[dict]] = {}  # trial id -> its PBT exploit records

    def __getstate__(self):  # Tune pickles callbacks into the experiment state; histories stay in MLflow
        return {**self.__dict__, "_client": None, "_history": {}, "_exploits": {}}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def _plan_of(self, trial):
        """The plan a trial started from. A population member's ``config["trial"]`` becomes its
        donor's after an exploit (PBT copies the donor's config); its name stays its own."""
        return self.plans.get(str(trial)) or self.plans[trial.config["trial"]]

    def _run_for(self, trial) -> str:
        trial_id = trial.trial_id
        if trial_id in self._runs:
            return self._runs[trial_id]
        tags = {TAG_TRIAL_ID: trial_id, TAG_STUDY_RUN: self.parent_run_id}
        run_id = find_run(self.client, self.experiment_id, tags)
        if run_id is None:
            plan = self._plan_of(trial)
            config = apply_search(plan.config, trial.config.get("search", {}))
            run_id = self.client.create_run(
                self.experiment_id,
                run_name=str(trial),
                tags={
                    **tags, M.TAG_STUDY: self.study, M.TAG_ARM: plan.arm, M.TAG_VARIANT: plan.variant, M.TAG_SEED: str(plan.seed),
                    M.TAG_ARM_VARIANT: M.arm_label(plan.arm, plan.variant),
                    **M.method_tags(config, plan.motion), **version_tags(),
                    **({M.TAG_PARAMS_ARE: M.STARTING_VALUES} if plan.motion == M.SEARCHED else {}),
                    M.TAG_THREADS: str(self.threads),
                },
            ).info.run_id
            flat = M.params(config)
            for start in range(0, len(flat), 100):
                chunk = list(flat.items())[start : start + 100]
                self.client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in chunk])
            log_yaml(self.client, run_id, M.TRAIN_CONFIG_ARTIFACT, config)
            self._last_step[trial_id] = 0
            self._history[trial_id] = []
        else:  # found again after a driver restart: ``_rows`` reads back what it holds
            self._history.pop(trial_id, None)
            if trial.status not in ("TERMINATED", "ERROR"):  # a member read for another's lineage may have ended
                self.client.update_run(run_id, status="RUNNING")
        self._runs[trial_id] = run_id
        return run_id

    def _rows(self, trial_id: str, run_id: str) -> list[tuple[str, int, float]]:
        """Everything the trial's run holds (read back once from MLflow after a driver restart)."""
        if trial_id not in self._history:
            keys = self.client.get_run(run_id).data.metrics
            rows = [(key, m.step, m.value) for key in keys for m in self.client.get_metric_history(run_id, key)]
            self._history[trial_id] = rows
            self._last_step[trial_id] = max((step for key, step, _ in rows if key == STEP_KEY), default=0)
        return self._history[trial_id]

    def _write_history(self, trial) -> None:
        run_id = self._run_for(trial)
        rows = self._rows(trial.trial_id, run_id)
        write_history_artifact(self.client, run_id, rows, self._last_step.get(trial.trial_id, 0))

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run_for(trial)

    def on_trial_restore(self, iteration, trials, trial, **info):
        self._run_for(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self._run_for(trial)
        rows = self._rows(trial.trial_id, run_id)
        step = int(result["step"])
        if step <= self._last_step.get(trial.trial_id, 0):
            return  # already logged before a retry or resume: the repeat is identical
        prefixes = M.EVERY_STEP_PREFIXES + (M.EVALUATION_PREFIXES if result.get(EVALUATED) else ())
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, step)
            for key, value in result.items()
            if key.startswith(prefixes) and isinstance(value, (int, float))
        ]
        if result.get(EVALUATED) and trial.trial_id not in self._base_logged:
            if not self.client.get_metric_history(run_id, M.BASE_ACCURACY):  # after a restart, ask once
                keys = (M.BASE_ACCURACY, M.BASE_RESPONSE_LENGTH)
                metrics += [Metric(k, float(result[k]), now, 0) for k in keys if k in result]
            self._base_logged.add(trial.trial_id)
        made_with = [RunTag(M.version_tag(k), v) for k, v in json.loads(result.get(MADE_WITH, "{}")).items()]
        for start in range(0, len(metrics), 500):
            last = start + 500 >= len(metrics)
            tags = [RunTag(TAG_LOGGED_STEP, str(step)), *made_with] if last else []  # with the step's last metrics
            self.client.log_batch(run_id, metrics=metrics[start : start + 500], tags=tags)
        rows += [(m.key, m.step, m.value) for m in metrics]
        self._last_step[trial.trial_id] = step
        if EXPLOIT in result:
            self._log_exploit(trial.trial_id, run_id, json.loads(result[EXPLOIT]), rows)

    def _log_exploit(self, trial_id: str, run_id: str, record: dict, rows: list) -> None:
        """Add a PBT exploit to the run's ``EXPLOITS_ARTIFACT`` (once, also after a retry), with
        ``old``: the settings the member logged at the exploit's step; mark that step with ``EXPLOIT_METRIC``."""
        if trial_id not in self._exploits:  # after a driver restart: read back what the run holds
            self._exploits[trial_id] = read_json_artifact(self.client, run_id, EXPLOITS_ARTIFACT) or []
        records = self._exploits[trial_id]
        if any((r["step"], r["donor"]) == (record["step"], record["donor"]) for r in records):
            return
        prefix = M.SETTING_PREFIX
        record["old"] = {key.removeprefix(prefix): value for key, step, value in rows
                         if key.startswith(prefix) and step == record["step"]}
        records.append(record)
        log_json(self.client, run_id, EXPLOITS_ARTIFACT, records)
        self.client.log_batch(run_id, metrics=[Metric(EXPLOIT_METRIC, 1.0, int(time.time() * 1000), record["step"])])
        rows.append((EXPLOIT_METRIC, record["step"], 1.0))

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        run_id = self._run_for(trial)
        with checkpoint.as_directory() as folder:
            table = Path(folder) / "eval_problems.parquet"
            if table.exists():
                step = json.loads((Path(folder) / REPORT_FILE).read_text())["step"]
                folder, name = M.problems_artifact(step).rsplit("/", 1)
                with tempfile.TemporaryDirectory() as tmp:
                    (Path(tmp) / name).write_bytes(table.read_bytes())
                    self.client.log_artifact(run_id, str(Path(tmp) / name), artifact_path=folder)
        self._write_history(trial)

    def _replay(self, trial, trials) -> dict:
        """A population member's replay config (``study.replay``): its final weights' w_corr
        lineage through its donors' runs (``trials``: the population), its final searched
        settings, the lineage's first seed."""
        own, links = {}, {}
        for member in trials:
            name, trial_id, run_id = self._plan_of(member).name, member.trial_id, self._run_for(member)
            rows = self._rows(trial_id, run_id)
            key = M.SETTING_PREFIX + W_CORR
            steps = sorted((step, value) for k, step, value in rows if k == key)
            own[name] = ([s for s, _ in steps], [v for _, v in steps])
            records = self._exploits.get(trial_id)
            if records is None:
                records = self._exploits[trial_id] = read_json_artifact(self.client, run_id, EXPLOITS_ARTIFACT) or []
            links[name] = sorted((r["step"], r["donor"]) for r in records)
        name = self._plan_of(trial).name
        search = trial.config.get("search", {})
        chain = lineage(own, links, name) if W_CORR in search else None
        root = chain[0][2] if chain else name
        return replay_config(self.plans[name].config, search, chain, self.plans[root].seed)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._write_history(trial)
        run_id = self._run_for(trial)
        plan = self._plan_of(trial)
        if plan.motion == M.SEARCHED:
            header = HEADER.format(arm=plan.arm, trial=plan.name)
            log_yaml(self.client, run_id, M.TRAIN_CONFIG_ARTIFACT, self._replay(trial, trials), header)
        self.client.set_terminated(run_id, status="FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._write_history(trial)
        self.client.set_terminated(self._run_for(trial), status="FAILED")
