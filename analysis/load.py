"""Load a study from MLflow into two pyarrow tables.

- ``runs``: one row per trial (run id, trial, arm, variant, seed, status, every param as
  ``param.<name>``, and for each ``eval/*`` metric its final and best value);
- ``history``: the long metric history (run_id, trial, key, step, value).

Works on a running study too: whatever has been logged so far is loaded. From a local store,
histories are read per (run, key) through MLflow's client, concurrently; from a server, through
its bulk history endpoint, one request per key and chunk of runs.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

LOWER_IS_BETTER = ("eval/response_length", "eval/truncated_fraction")


class StudyError(ValueError):
    """An unknown or empty study, or a store that cannot be read (one line)."""


@dataclass
class StudyData:
    study: str
    parent_run_id: str | None
    runs: pa.Table
    history: pa.Table

    def write_parquet(self, folder: Path) -> list[Path]:
        """``runs.parquet`` and ``history.parquet`` in ``folder``, each written then renamed."""
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name, table in (("runs", self.runs), ("history", self.history)):
            path = folder / f"{name}.parquet"
            tmp = folder / f".{name}.parquet.tmp"
            pq.write_table(table, tmp)
            tmp.replace(path)
            written.append(path)
        return written


def _fetch_history(client: MlflowClient, jobs: list[tuple[str, str, str]], workers: int) -> pa.Table:
    def one(job):
        run_id, trial, key = job
        return [(run_id, trial, key, m.step, m.value) for m in client.get_metric_history(run_id, key)]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = [row for chunk in pool.map(one, jobs) for row in chunk]
    return _history_table(rows)


def _history_table(rows: list[tuple]) -> pa.Table:
    """(run_id, trial, key, step, value) rows, ordered by trial, key and step."""
    rows.sort(key=lambda r: (r[1], r[2], r[3]))
    columns = list(zip(*rows)) if rows else [[], [], [], [], []]
    return pa.table(
        {
            "run_id": pa.array(columns[0], pa.string()),
            "trial": pa.array(columns[1], pa.string()),
            "key": pa.array(columns[2], pa.string()),
            "step": pa.array(columns[3], pa.int64()),
            "value": pa.array(columns[4], pa.float64()),
        }
    )


def _check_server(uri: str) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when a server does not answer."""
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).read()
    except OSError as exc:
        raise StudyError(f"cannot read the MLflow store at {uri}: {exc}") from None


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
    if tracking_uri.startswith(("http://", "https://")):
        _check_server(tracking_uri)
    client = MlflowClient(tracking_uri)
    try:
        experiment = client.get_experiment_by_name(study)
    except MlflowException as exc:
        raise StudyError(f"cannot read the MLflow store at {tracking_uri}: {str(exc).splitlines()[0]}") from None
    if experiment is None:
        raise StudyError(f"no study named '{study}' in {tracking_uri}")
    runs = client.search_runs([experiment.experiment_id], max_results=50_000)
    parents = [r for r in runs if r.data.tags.get("lead_study.role") == "study"]
    trials = sorted((r for r in runs if "arm" in r.data.tags), key=lambda r: r.info.run_name or "")
    if not trials:
        raise StudyError(f"study '{study}' has no trials yet")

    if tracking_uri.startswith(("http://", "https://")):
        history = _fetch_history_bulk(tracking_uri, trials, workers)
    else:
        jobs = [(r.info.run_id, r.info.run_name, key) for r in trials for key in r.data.metrics]
        history = _fetch_history(client, jobs, workers)

    eval_keys = sorted({key for r in trials for key in r.data.metrics if key.startswith("eval/")})
    param_keys = sorted({key for r in trials for key in r.data.params})
    last_step = _per_run(history, "train/accuracy", "last_step")
    columns: dict[str, list] = {
        "run_id": [r.info.run_id for r in trials],
        "trial": [r.info.run_name for r in trials],
        "arm": [r.data.tags.get("arm") for r in trials],
        "variant": [r.data.tags.get("variant") for r in trials],
        "seed": [int(r.data.tags.get("seed", -1)) for r in trials],
        "status": [r.info.status for r in trials],
        "steps": [int(last_step.get(r.info.run_id, 0)) for r in trials],
    }
    for key in eval_keys:
        best = _per_run(history, key, "min" if key in LOWER_IS_BETTER else "max")
        columns[f"final/{key}"] = [r.data.metrics.get(key) for r in trials]
        columns[f"best/{key}"] = [best.get(r.info.run_id) for r in trials]
    for key in param_keys:
        columns[f"param.{key}"] = [r.data.params.get(key) for r in trials]
    return StudyData(study, parents[0].info.run_id if parents else None, pa.table(columns), history)


def _per_run(history: pa.Table, key: str, how: str) -> dict[str, float]:
    """``how`` ("max" / "min") of a metric's non-NaN values, per run id."""
    rows = history.filter(pc.and_(pc.equal(history["key"], key), pc.invert(pc.is_nan(history["value"]))))
    column = "step" if how == "last_step" else "value"
    aggregate = "max" if how in ("max", "last_step") else "min"
    grouped = rows.group_by("run_id").aggregate([(column, aggregate)])
    return dict(zip(grouped["run_id"].to_pylist(), grouped[f"{column}_{aggregate}"].to_pylist()))
