"""Load a study from MLflow into two pyarrow tables.

- ``runs``: one row per trial (run id, trial, arm, variant, seed, the method tags reward, weighting,
  advantage estimator and whiten, status, every param as
  ``param.<name>``, and for each ``eval/*`` metric its final and best value);
- ``history``: the long metric history (run_id, trial, key, step, value);
- ``problems``: every per-problem evaluation table the trials logged (run_id, trial, step,
  problem_id, minimal_length, lstar, mean_length, accuracy, truncated_fraction);
- ``exploits``: every PBT / PB2 exploit of a population member (trial, step, donor, settings).

Fast path: the study runner keeps each trial's whole history as one Parquet artifact
(``HISTORY_ARTIFACT``) and tags the run with the last step it holds, so a study is read with one
download per trial. A trial whose artifact is missing or behind its last logged step (a running
study, a crash between the two writes) is read through MLflow's metric-history API instead: per
(run, key) from a local store, through the server's bulk endpoint from an ``http://`` store.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from trainers import contract as M
from trainers.contract import (
    EXPLOIT_METRIC, EXPLOIT_SCHEMA, EXPLOITS_ARTIFACT, HISTORY_ARTIFACT, HISTORY_SCHEMA, LOWER_IS_BETTER,
    PLANNED_ARTIFACT, PROBLEM_SCHEMA, PROBLEMS_FOLDER, STUDY_HISTORY_SCHEMA, TAG_ARM, TAG_HISTORY_STEP,
    TAG_LOGGED_STEP, TAG_PARENT_RUN, TAG_ROLE, TAG_SEED, TAG_STUDY_RUN, TAG_VARIANT, ROLE_STUDY, best_column,
    final_column, param_column, problems_step,
)
from stores.mlflow_store import StoreError, check_store, read_json_artifact
from trainers.io.outputs import write_atomic


class StudyError(StoreError):
    """An unknown or empty study (one line)."""


@dataclass
class StudyData:
    study: str
    parent_run_id: str | None
    runs: pa.Table
    history: pa.Table
    problems: pa.Table
    planned: list[str]  # trial names the study's parent run lists (empty if it lists none)
    exploits: pa.Table = field(default_factory=EXPLOIT_SCHEMA.empty_table)  # PBT / PB2 exploits (EXPLOIT_SCHEMA), one row each
    focus: str | None = None  # the arm under test (the study run's TAG_FOCUS; older studies: focus_of)
    design: dict | None = None  # a sequential design's settings (the study run's TAG_DESIGN); None: fixed
    decision_path: list[dict] = field(default_factory=list)  # a sequential study's looks, in order (DECISION_PATH_ARTIFACT)
    design_stopped: str | None = None  # why a sequential study started no more trials (TAG_DESIGN_STOPPED)

    @property
    def missing(self) -> list[str]:
        """Planned trials with no run in MLflow yet."""
        present = set(self.runs["trial"].to_pylist())
        return [name for name in self.planned if name not in present]

    def write_parquet(self, folder: Path) -> list[Path]:
        """``runs``, ``history``, ``problems`` and ``exploits`` as Parquet in ``folder``, each written whole."""
        tables = (("runs", self.runs), ("history", self.history), ("problems", self.problems), ("exploits", self.exploits))
        return [write_atomic(folder / f"{name}.parquet", table) for name, table in tables]


def _fetch_history(client: MlflowClient, jobs: list[tuple[str, str, str]], workers: int) -> pa.Table:
    def one(job):
        run_id, trial, key = job
        return [(run_id, trial, key, m.step, m.value) for m in client.get_metric_history(run_id, key)]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = [row for chunk in pool.map(one, jobs) for row in chunk]
    return _history_table(rows)


def _history_table(rows: list[tuple]) -> pa.Table:
    """(run_id, trial, key, step, value) rows as a table."""
    columns = list(zip(*rows)) if rows else [[], [], [], [], []]
    return pa.table(dict(zip(STUDY_HISTORY_SCHEMA.names, columns)), schema=STUDY_HISTORY_SCHEMA)


def _artifacts(run, tracking_uri: str):
    """The run's artifact store, reached straight from its artifact URI (no per-run lookups)."""
    return get_artifact_repository(run.info.artifact_uri, tracking_uri=tracking_uri)


def _download(run, tracking_uri: str, path: str) -> pa.Table:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file is noise
    with tempfile.TemporaryDirectory() as tmp:
        return pq.read_table(_artifacts(run, tracking_uri).download_artifacts(path, tmp))


def _history_is_current(run) -> bool:
    tags = run.data.tags
    return TAG_HISTORY_STEP in tags and tags[TAG_HISTORY_STEP] == tags.get(TAG_LOGGED_STEP)


def _read_history_artifacts(tracking_uri: str, trials: list, workers: int) -> pa.Table:
    """The fast path: one Parquet download per trial."""

    def one(run) -> pa.Table:
        table = _download(run, tracking_uri, HISTORY_ARTIFACT).cast(HISTORY_SCHEMA)
        return table.add_column(0, "trial", pa.array([run.info.run_name] * table.num_rows, pa.string())).add_column(
            0, "run_id", pa.array([run.info.run_id] * table.num_rows, pa.string())
        )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        tables = list(pool.map(one, trials))
    return pa.concat_tables(tables) if tables else _history_table([])


def _read_problem_tables(tracking_uri: str, trials: list, workers: int) -> pa.Table:
    """Every ``eval_problems/step_<step>.parquet`` of every trial, with run, trial and step columns."""

    def one(run) -> list[pa.Table]:
        tables = []
        for artifact in _artifacts(run, tracking_uri).list_artifacts(PROBLEMS_FOLDER):
            if not artifact.path.endswith(".parquet"):
                continue
            table = _download(run, tracking_uri, artifact.path)
            step = problems_step(artifact.path)
            extra = {"run_id": run.info.run_id, "trial": run.info.run_name, "step": step}
            columns = {
                field.name: (pa.array([extra[field.name]] * table.num_rows, field.type) if field.name in extra
                             else table[field.name].cast(field.type))
                for field in PROBLEM_SCHEMA
            }
            tables.append(pa.table(columns, schema=PROBLEM_SCHEMA))
        return tables

    with ThreadPoolExecutor(max_workers=workers) as pool:
        tables = [t for chunk in pool.map(one, trials) for t in chunk]
    return pa.concat_tables(tables) if tables else PROBLEM_SCHEMA.empty_table()


def _read_exploits(client: MlflowClient, trials: list, workers: int) -> pa.Table:
    """Every population member's exploits, one row each; settings as JSON text."""

    def one(run) -> list[dict]:
        if EXPLOIT_METRIC not in run.data.metrics:  # never exploited: no record to download
            return []
        records = read_json_artifact(client, run.info.run_id, EXPLOITS_ARTIFACT)
        return [{"trial": run.info.run_name, "step": r["step"], "donor": r["donor"], "old": json.dumps(r["old"]),
                 "new": json.dumps(r["new"]), "donor_settings": json.dumps(r["donor_settings"])} for r in records or []]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = [row for chunk in pool.map(one, trials) for row in chunk]
    return pa.Table.from_pylist(rows, schema=EXPLOIT_SCHEMA).sort_by([("trial", "ascending"), ("step", "ascending")])


BULK_ENDPOINT = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"  # the MLflow UI's own bulk read
BULK_MAX_RESULTS = 25_000  # the server's cap per request
BULK_MAX_RUNS = 100


def _fetch_history_bulk(uri: str, trials: list, workers: int) -> pa.Table:
    """Histories from an MLflow server, one request per (key, chunk of runs) instead of per
    (run, key); a chunk that hits the server's cap is split until every answer is complete."""
    names = {r.info.run_id: r.info.run_name for r in trials}
    keys = sorted({key for r in trials for key in r.data.metrics})

    def fetch(key: str, run_ids: list[str]) -> list[tuple]:
        query = urllib.parse.urlencode(
            [("metric_key", key), ("max_results", BULK_MAX_RESULTS)] + [("run_id", r) for r in run_ids]
        )
        with urllib.request.urlopen(f"{uri.rstrip('/')}{BULK_ENDPOINT}?{query}", timeout=120) as response:
            metrics = json.loads(response.read()).get("metrics", [])
        if len(metrics) >= BULK_MAX_RESULTS:
            if len(run_ids) == 1:
                raise StudyError(f"run {run_ids[0]} has more than {BULK_MAX_RESULTS} values of {key}")
            half = len(run_ids) // 2
            return fetch(key, run_ids[:half]) + fetch(key, run_ids[half:])
        return [(m["run_id"], names[m["run_id"]], key, int(m.get("step", 0)), float(m["value"])) for m in metrics]

    run_ids = sorted(names)
    jobs = [(key, run_ids[i : i + BULK_MAX_RUNS]) for key in keys for i in range(0, len(run_ids), BULK_MAX_RUNS)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = [row for chunk in pool.map(lambda job: fetch(*job), jobs) for row in chunk]
    return _history_table(rows)


def load_study(tracking_uri: str, study: str, workers: int = 16) -> StudyData:
    """The study's trials and metric histories (see the module docstring)."""
    tracking_uri = check_store(tracking_uri, writing=False)
    client = MlflowClient(tracking_uri)
    try:
        experiment = client.get_experiment_by_name(study)
    except MlflowException as exc:
        raise StudyError(f"cannot read the MLflow store at {tracking_uri}: {str(exc).splitlines()[0]}") from None
    if experiment is None:
        raise StudyError(f"no study named '{study}' in {tracking_uri}")
    runs = client.search_runs([experiment.experiment_id], max_results=50_000)
    parents = sorted((r for r in runs if r.data.tags.get(TAG_ROLE) == ROLE_STUDY), key=lambda r: r.info.start_time)
    parent = parents[-1] if parents else None  # a study run again under the same name: its latest run
    trials = sorted(
        (r for r in runs if TAG_ARM in r.data.tags
         and (parent is None or r.data.tags.get(TAG_STUDY_RUN, r.data.tags.get(TAG_PARENT_RUN)) == parent.info.run_id)),
        key=lambda r: r.info.run_name or "",
    )
    if not trials:
        raise StudyError(f"study '{study}' has no trials yet")

    current = [r for r in trials if _history_is_current(r)]
    stale = [r for r in trials if r not in current]
    if not stale:
        slow = _history_table([])
    elif tracking_uri.startswith(("http://", "https://")):
        slow = _fetch_history_bulk(tracking_uri, stale, workers)
    else:
        jobs = [(r.info.run_id, r.info.run_name, key) for r in stale for key in r.data.metrics]
        slow = _fetch_history(client, jobs, workers)
    fast = _read_history_artifacts(tracking_uri, current, workers)
    history = pa.concat_tables([fast, slow]).sort_by([("trial", "ascending"), ("key", "ascending"), ("step", "ascending")])
    problems = _read_problem_tables(tracking_uri, trials, workers)
    problems = problems.sort_by([("trial", "ascending"), ("step", "ascending"), ("problem_id", "ascending")])

    eval_keys = sorted({key for r in trials for key in r.data.metrics if key.startswith(M.EVALUATION_PREFIXES)})
    param_keys = sorted({key for r in trials for key in r.data.params})
    version_tags = sorted({tag for r in trials for tag in r.data.tags if tag.startswith(M.version_tag(""))})
    last_step = _per_run(history, M.STEP_KEY, "last_step")
    columns: dict[str, list] = {
        "run_id": [r.info.run_id for r in trials],
        "trial": [r.info.run_name for r in trials],
        "arm": [r.data.tags.get(TAG_ARM) for r in trials],
        "variant": [r.data.tags.get(TAG_VARIANT) for r in trials],
        "seed": [int(r.data.tags.get(TAG_SEED, -1)) for r in trials],
        **{tag: [r.data.tags.get(tag) for r in trials] for tag in (*M.METHOD_TAGS, *version_tags)},
        M.TAG_ADVANTAGE: [r.data.tags.get(M.TAG_ADVANTAGE, r.data.tags.get(M.LEGACY_TAG_ADVANTAGE)) for r in trials],
        "status": [r.info.status for r in trials],
        "steps": [int(last_step.get(r.info.run_id, 0)) for r in trials],
    }
    for key in eval_keys:
        best = _per_run(history, key, "min" if key in LOWER_IS_BETTER else "max")
        columns[final_column(key)] = [r.data.metrics.get(key) for r in trials]
        columns[best_column(key)] = [best.get(r.info.run_id) for r in trials]
    for key in param_keys:
        columns[param_column(key)] = [r.data.params.get(key) for r in trials]
    runs_table = pa.table(columns)
    return StudyData(
        study, parent.info.run_id if parent else None, runs_table, history, problems,
        (read_json_artifact(client, parent.info.run_id, PLANNED_ARTIFACT) or []) if parent else [],
        _read_exploits(client, trials, workers),
        (parent.data.tags.get(M.TAG_FOCUS) if parent else None) or focus_of(runs_table),
        *_design_of(client, parent),
    )


def _design_of(client: MlflowClient, parent) -> tuple[dict | None, list[dict], str | None]:
    """A sequential study's design, its looks and why it stopped; (None, [], None) for a fixed one."""
    tag = parent.data.tags.get(M.TAG_DESIGN, "fixed") if parent else "fixed"
    if tag == "fixed":
        return None, [], None
    path = read_json_artifact(client, parent.info.run_id, M.DECISION_PATH_ARTIFACT) or []
    return json.loads(tag), path, parent.data.tags.get(M.TAG_DESIGN_STOPPED)


def focus_of(runs: pa.Table) -> str | None:
    """The arm under test of a study whose run does not name it (made before ``TAG_FOCUS``): the arm
    named psi, else the first arm weighted by PSI, else none."""
    arms = runs["arm"].to_pylist()
    if M.DEFAULT_FOCUS in arms:
        return M.DEFAULT_FOCUS
    return next((arm for arm, kind in zip(arms, runs[M.TAG_WEIGHTING].to_pylist()) if kind == "psi"), None)


def _per_run(history: pa.Table, key: str, how: str) -> dict[str, float]:
    """``how`` ("max" / "min") of a metric's non-NaN values, per run id."""
    rows = history.filter(pc.and_(pc.equal(history["key"], key), pc.invert(pc.is_nan(history["value"]))))
    column = "step" if how == "last_step" else "value"
    aggregate = "max" if how in ("max", "last_step") else "min"
    grouped = rows.group_by("run_id").aggregate([(column, aggregate)])
    return dict(zip(grouped["run_id"].to_pylist(), grouped[f"{column}_{aggregate}"].to_pylist()))
