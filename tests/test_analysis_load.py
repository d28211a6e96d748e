"""Loading a study from a real MLflow store (SQLite) into pyarrow tables."""

import math

import pyarrow.parquet as pq
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis.load import StudyError, load_study
from stores.mlflow_store import StoreError
from trainers.contract import TAG_LOGGED_STEP as LOGGED_STEP_TAG, TAG_STUDY_RUN as STUDY_RUN_TAG
from analysis.server import local_server
from study.mlflow_runs import write_history_artifact


@pytest.fixture()
def store(tmp_path):
    """A study laid out as the study runner writes it: a parent run and two trial runs."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("demo", artifact_location=(tmp_path / "mlruns").as_uri())
    parent = client.create_run(exp, run_name="demo", tags={"lead_study.role": "study"}).info.run_id
    trials = {}
    for name, arm, aes_values in (("psi-s0", "psi", [0.2, 0.9, 0.7]), ("static-wc1-s0", "static", [0.1, float("nan"), 0.3])):
        run = client.create_run(
            exp, run_name=name, tags={STUDY_RUN_TAG: parent, "arm": arm, "variant": arm, "seed": "0",
                                      "reward": "lead", "weighting": arm, "normalization": "decoupled", "whiten": "true",
                                      "weight_motion": "adaptive" if arm == "psi" else "fixed"}
        ).info.run_id
        metrics = [Metric("train/accuracy", 0.1 * s, 0, s) for s in range(1, 31)]
        metrics += [Metric("eval/aes", v, 0, 10 * (i + 1)) for i, v in enumerate(aes_values)]
        metrics += [Metric("eval/response_length", 90 - 10 * i, 0, 10 * (i + 1)) for i in range(3)]
        client.log_batch(run, metrics=metrics, params=[Param("lead.weighting.kind", arm)])
        client.set_terminated(run)
        trials[name] = run
    client.create_experiment("empty", artifact_location=(tmp_path / "mlruns").as_uri())
    return uri, parent, trials


def test_find_run_takes_any_tag_value(tmp_path):
    """A study folder with an apostrophe used to break MLflow's filter string."""
    from study.mlflow_runs import find_run

    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    exp = client.create_experiment("x", artifact_location=(tmp_path / "a").as_uri())
    wanted = client.create_run(exp, tags={"lead_study.study_dir": "/home/o'brien/runs/x", "lead_study.role": "study"})
    client.create_run(exp, tags={"lead_study.study_dir": "/home/other/runs/x", "lead_study.role": "study"})
    found = find_run(client, exp, {"lead_study.study_dir": "/home/o'brien/runs/x", "lead_study.role": "study"})
    assert found == wanted.info.run_id
    assert find_run(client, exp, {"lead_study.study_dir": 'it\'s "quoted"', "lead_study.role": "study"}) is None


@pytest.mark.parametrize("uri, message", [
    ("postgresql://nobody@127.0.0.1:9/mlflow", "cannot use the MLflow store at postgresql://"),
    ("mlruns", "'mlruns' is a plain path: use sqlite:///"),
])
def test_store_uris_that_would_fail_later_fail_now(uri, message):
    from stores.mlflow_store import check_store

    with pytest.raises(StoreError, match=message):
        check_store(uri, writing=True)


def test_runs_and_history_tables(store, tmp_path):
    uri, parent, trials = store
    data = load_study(uri, "demo")
    assert data.parent_run_id == parent
    rows = {r["trial"]: r for r in data.runs.to_pylist()}
    psi, static = rows["psi-s0"], rows["static-wc1-s0"]
    assert (psi["arm"], psi["seed"], psi["status"], psi["steps"]) == ("psi", 0, "FINISHED", 30)
    assert psi["final/eval/aes"] == pytest.approx(0.7) and psi["best/eval/aes"] == pytest.approx(0.9)
    assert static["best/eval/aes"] == pytest.approx(0.3)  # NaN is not a best value
    assert psi["best/eval/response_length"] == 70  # shorter is better
    # the store predates issue 30: its advantage estimator is tagged "normalization"
    assert (psi["reward"], psi["weighting"], psi["advantage"], psi["whiten"]) == ("lead", "psi", "decoupled", "true")
    assert static["weighting"] == "static" and psi["param.lead.weighting.kind"] == "psi"
    assert (psi["weight_motion"], static["weight_motion"]) == ("adaptive", "fixed")
    assert data.history.num_rows == 2 * (30 + 3 + 3)
    nan_rows = [r for r in data.history.to_pylist() if r["trial"] == "static-wc1-s0" and r["key"] == "eval/aes"]
    assert [r["step"] for r in nan_rows] == [10, 20, 30] and math.isnan(nan_rows[1]["value"])
    written = data.write_parquet(tmp_path / "report")
    assert pq.read_table(written[0]).equals(data.runs)
    assert repr(pq.read_table(written[1]).to_pylist()) == repr(data.history.to_pylist())  # NaN-aware


def test_unknown_empty_and_unreachable_studies_are_clear_errors(store, tmp_path):
    uri, _, _ = store
    with pytest.raises(StudyError, match="no study named 'nope'"):
        load_study(uri, "nope")
    with pytest.raises(StudyError, match="study 'empty' has no trials yet"):
        load_study(uri, "empty")
    with pytest.raises(StoreError, match="cannot reach the MLflow server"):
        load_study("http://127.0.0.1:9", "demo")


@pytest.mark.slow  # a real mlflow server
def test_an_mlflow_server_serves_the_same_study(store, tmp_path):
    """A real ``mlflow server`` on loopback: the bulk HTTP path gives exactly the SQLite tables."""
    uri, _, _ = store
    with local_server(uri) as url:
        local, remote = load_study(uri, "demo"), load_study(url, "demo")
    assert remote.parent_run_id == local.parent_run_id
    assert repr(remote.history.to_pylist()) == repr(local.history.to_pylist())
    assert remote.runs.equals(local.runs)


def test_history_artifacts_give_the_same_tables_as_the_metric_api(store):
    """The fast path (one Parquet artifact per trial, as the study runner writes it) and the API path
    read the same study into identical tables; an artifact behind the run's last step is not used."""
    uri, _, trials = store
    through_api = load_study(uri, "demo")
    client = MlflowClient(uri)
    for name, run_id in trials.items():
        rows = [(r["key"], r["step"], r["value"]) for r in through_api.history.to_pylist() if r["trial"] == name]
        write_history_artifact(client, run_id, rows, 30)
        client.set_tag(run_id, LOGGED_STEP_TAG, "30")
    through_artifacts = load_study(uri, "demo")
    assert repr(through_artifacts.history.to_pylist()) == repr(through_api.history.to_pylist())
    assert through_artifacts.runs.equals(through_api.runs)

    client.log_metric(trials["psi-s0"], "train/accuracy", 3.1, step=31)  # logged after the artifact
    client.set_tag(trials["psi-s0"], LOGGED_STEP_TAG, "31")
    assert load_study(uri, "demo").history.num_rows == through_api.history.num_rows + 1
