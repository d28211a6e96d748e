"""``python -m analysis.report`` and the notebook against a real smoke-test study; the MLflow server's
REST API over the same store; partial, failed and missing trials; bad input."""

import json
import os
import re
import urllib.parse
import urllib.request
from pathlib import Path

import nbclient
import nbformat
import pyarrow.parquet as pq
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis.load import load_study
from trainers.contract import TAG_LOGGED_STEP as LOGGED_STEP_TAG, TAG_STUDY_RUN as STUDY_RUN_TAG
from analysis.report import main
from analysis.server import local_server
from tests.conftest import run_main
from study.mlflow_runs import log_json, write_history_artifact

ROOT = Path(__file__).resolve().parents[1]
FIGURES = {"pareto.png", "w_corr.png", "eval_curves.png", "lstar.png", "lstar_per_problem.png"}
TABLES = {"runs", "history", "problems", "exploits", "arm_summary", "weight_shape", "lstar_vs_minimal",
          "compute_per_trial", "compute_per_arm"}


def test_report_of_a_smoke_study(smoke_study, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["--study", smoke_study.name, "--tracking-uri", smoke_study.uri, "--out", str(out)]) == 0
    assert f"Report: {out / 'report.html'}" in capsys.readouterr().out
    assert {p.name for p in (out / "figures").iterdir()} == FIGURES
    for png in (out / "figures").iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
    tables = {name: pq.read_table(out / f"{name}.parquet") for name in TABLES}
    assert tables["runs"].num_rows == 7 and set(tables["runs"]["status"].to_pylist()) == {"FINISHED"}
    assert tables["arm_summary"].num_rows == 7  # psi + six static ratios, one seed each
    assert tables["weight_shape"]["trial"].to_pylist() == ["psi-s0"]  # only weights that move
    assert tables["problems"].num_rows == 7 * 16 and set(tables["problems"]["step"].to_pylist()) == {2}
    assert tables["lstar_vs_minimal"].num_rows == 7

    markdown = (out / "report.md").read_text()
    assert "7 of 7 planned trials have runs: 7 finished." in markdown
    assert "different versions or CPU kernel levels" not in markdown  # one machine, one level
    for heading in ("psi (the arm under test) against the best other arm", "Per arm, over seeds", "Accuracy against length",
                    "Where PSI's weights went", "Evaluation over training", "Target lengths over training",
                    "Target lengths per problem against the minimal length", "Compute spent"):
        assert f"## {heading}" in markdown
    assert "never on the numbers that chose them" in markdown  # the selection protocol
    assert "Power: a true difference smaller than the one stated" in markdown and "AES detectable (80%)" in markdown
    assert "Both rest on one seed: no interval over seeds can be given" in markdown
    assert re.search(r"AES [-+][\d.e+-]+ \[[-+][\d.e+-]+, [-+][\d.e+-]+\], P [\d.]+: "
                     r"(psi ahead|psi behind|not distinguishable)", markdown)
    assert tables["compute_per_arm"]["arm"].to_pylist() == ["psi", "static"]
    assert min(tables["compute_per_trial"]["rollout_tokens"].to_pylist()) > 0
    assert re.search(r"\| psi \| psi \| lead \| psi \| adaptive \| decoupled \| 1 \|", markdown)
    # PSI's regret against the best fixed weight, beside one run's compute against the whole grid's
    cost = re.search(r"\| psi \| 1 \| [\d.]+ \| static/ratio[\d.]+ \| [\d.]+ \| .* \| (\d+) \| (\d+) \|", markdown)
    per_trial = tables["compute_per_trial"].to_pylist()
    spent = {r["trial"]: r["rollout_tokens"] + r["train_tokens"] for r in per_trial}
    assert cost and int(cost.group(1)) == spent["psi-s0"]
    assert int(cost.group(2)) == sum(v for t, v in spent.items() if t.startswith("static-"))
    for figure in FIGURES:
        assert f"(figures/{figure})" in markdown

    page = (out / "report.html").read_text()
    sources = re.findall(r"src='([^']*)'", page)
    assert len(sources) == len(FIGURES) and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "href=" not in page  # nothing outside the file

    client = MlflowClient(smoke_study.uri)
    parent = load_study(smoke_study.uri, smoke_study.name).parent_run_id
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/report.html", "report/report.md", "report/figures", "report/runs.parquet"} <= logged


def test_the_notebook_runs_against_a_smoke_study(smoke_study):
    """Executed as a user would (a fresh kernel); every figure cell renders a PNG; the file in git
    carries no outputs."""
    path = ROOT / "analysis/notebooks/psi_vs_static.ipynb"
    notebook = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") and not cell.get("execution_count") for cell in notebook.cells if cell.cell_type == "code")
    env = {"LEAD_STUDY_TRACKING_URI": smoke_study.uri, "LEAD_STUDY_NAME": smoke_study.name}
    saved = {key: os.environ.get(key) for key in (*env, "PYTHONPATH")}
    os.environ.update(env, PYTHONPATH=str(ROOT))
    try:
        nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(smoke_study.folder)}}).execute()
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 6  # five report figures and the custom one
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stdout")
    assert "7 trials" in printed and "arm under test: psi" in printed and "best other arm: static/ratio" in printed


def rest(url: str, endpoint: str, **params):
    query = urllib.parse.urlencode(params, doseq=True)
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/{endpoint}?{query}", timeout=30) as response:
        return json.loads(response.read())


def test_an_mlflow_server_shows_the_smoke_study(smoke_study):
    """What the MLflow UI reads, through a real ``mlflow server``'s REST API: the parent run, its
    child runs and their metric histories."""
    with local_server(smoke_study.uri) as url:
        experiment = rest(url, "experiments/get-by-name", experiment_name=smoke_study.name)["experiment"]
        search = json.dumps({"experiment_ids": [experiment["experiment_id"]], "max_results": 100}).encode()
        request = urllib.request.Request(f"{url}/api/2.0/mlflow/runs/search", data=search,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            runs = json.loads(response.read())["runs"]
        tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs]
        parents = [run for run, tag in zip(runs, tags) if tag.get("lead_study.role") == "study"]
        children = [(run, tag) for run, tag in zip(runs, tags) if "arm" in tag]
        assert len(parents) == 1 and len(children) == 7
        for run, tag in children:
            assert tag[STUDY_RUN_TAG] == parents[0]["info"]["run_id"]
            run_id = run["info"]["run_id"]
            history = rest(url, "metrics/get-history", run_id=run_id, metric_key="train/accuracy")["metrics"]
            assert sorted(m["step"] for m in history) == [1, 2]
            weights = rest(url, "metrics/get-history", run_id=run_id, metric_key="lead/w_corr")["metrics"]
            assert all(0 <= m["value"] <= 1 for m in weights) and len(weights) == 2
        artifacts = rest(url, "artifacts/list", run_id=parents[0]["info"]["run_id"])["files"]
        assert {"report", "spec", "summary.json"} <= {f["path"] for f in artifacts}


@pytest.fixture()
def partial_study(tmp_path):
    """A study as the runner leaves it mid-way: four planned trials; one finished, one failed after
    a step, one still running with a history artifact behind its last logged step, one never started."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("partial", artifact_location=(tmp_path / "mlruns").as_uri())
    parent = client.create_run(exp, run_name="partial", tags={"lead_study.role": "study"}).info.run_id
    log_json(client, parent, "planned_trials.json", ["psi-s0", "static-wc0.5-s0", "psi-s1", "static-wc0.5-s1"])
    for name, arm, status, steps in (("psi-s0", "psi", "FINISHED", 4), ("static-wc0.5-s0", "static", "FAILED", 1),
                                     ("psi-s1", "psi", "RUNNING", 3)):
        run = client.create_run(exp, run_name=name, tags={STUDY_RUN_TAG: parent, "arm": arm, "weighting": arm,
                                                          "weight_motion": "adaptive" if arm == "psi" else "fixed",
                                                          "variant": "psi" if arm == "psi" else "wc0.5", "seed": name[-1]}).info.run_id
        metrics = [Metric(k, v, 0, s) for s in range(1, steps + 1)
                   for k, v in (("train/accuracy", 0.1 * s), ("lead/w_corr", 1 - 0.1 * s), ("lead/target_w_corr", 0.5),
                                ("lead/lstar_mean", 60 - s))]
        if steps >= 2:
            metrics += [Metric(k, v, 0, 2) for k, v in (("eval/accuracy", 0.5), ("eval/response_length", 40.0), ("eval/aes", 0.3))]
        client.log_batch(run, metrics=metrics, params=[Param("lead.weighting.kind", arm)])
        written = metrics if status != "RUNNING" else [m for m in metrics if m.step <= 2]
        write_history_artifact(client, run, [(m.key, m.step, m.value) for m in written], max(m.step for m in written))
        client.set_tag(run, LOGGED_STEP_TAG, str(steps))
        if status != "RUNNING":
            client.set_terminated(run, status=status)
    return uri


def test_ui_screenshots_of_the_smoke_study(smoke_study, tmp_path, monkeypatch, capsys):
    """``python benchmarks/ui_screenshots.py`` on the smoke study: two PNG pages from headless
    Chromium (skipped where none is installed); without Chromium, one line and exit code 2."""
    import shutil

    from benchmarks.ui_screenshots import main as screenshots

    args = ["--tracking-uri", smoke_study.uri, "--study", smoke_study.name, "--out", str(tmp_path / "ui")]
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with monkeypatch.context() as bare:
        bare.setenv("PATH", str(tmp_path))
        assert screenshots(args) == 2
    assert capsys.readouterr().err == "error: no chromium on PATH (Debian: apt-get install chromium)\n"
    if chromium is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium); its absence is tested above")
    assert screenshots(args) == 0
    for page in ("trials_chart.png", "experiment.png"):
        assert (tmp_path / "ui" / page).read_bytes().startswith(b"\x89PNG")


def test_a_partial_study_reports_missing_running_and_failed_trials(partial_study, tmp_path):
    data = load_study(partial_study, "partial")
    assert data.missing == ["static-wc0.5-s1"]
    steps = {(r["trial"], r["key"]): r["step"] for r in data.history.to_pylist()}
    assert steps[("psi-s1", "train/accuracy")] == 3  # its stale artifact was not used: the API was
    assert main(["--study", "partial", "--tracking-uri", partial_study, "--out", str(tmp_path / "out"), "--no-log"]) == 0
    markdown = (tmp_path / "out/report.md").read_text()
    assert "3 of 4 planned trials have runs: 1 failed, 1 finished, 1 running." in markdown
    assert "Missing (not started or never logged): static-wc0.5-s1." in markdown
    assert "| static-wc0.5-s0 | static | wc0.5 | 0 | FAILED | 1 |" in markdown
    assert "| psi-s1 | psi | psi | 1 | RUNNING | 3 |" in markdown
    assert "| static-wc0.5-s1 | – | – | – | MISSING | 0 |" in markdown
    assert "No comparison" in markdown  # the static arm never evaluated


def run_cli(*args, cwd):
    """``python -m analysis.report ARGS``, in this process."""
    return run_main(main, *args, cwd=cwd)


def test_bad_input_is_one_line_and_exit_code_2_with_nothing_written(partial_study, tmp_path):
    out = tmp_path / "never"
    client = MlflowClient(partial_study)
    client.create_experiment("empty", artifact_location=(tmp_path / "mlruns").as_uri())
    cases = [
        (["--study", "nope", "--tracking-uri", partial_study], "error: no study named 'nope' in"),
        (["--study", "empty", "--tracking-uri", partial_study], "error: study 'empty' has no trials yet"),
        (["--study", "x", "--tracking-uri", f"sqlite:///{tmp_path}/absent.db"], f"error: no MLflow store at {tmp_path}/absent.db"),
        (["--study", "x", "--tracking-uri", "http://127.0.0.1:9"], "error: cannot reach the MLflow server at http://127.0.0.1:9"),
    ]
    empty, corrupt = tmp_path / "empty.db", tmp_path / "corrupt.db"
    empty.write_bytes(b"")
    corrupt.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    cases += [
        (["--study", "x", "--tracking-uri", f"sqlite:///{empty}"], f"error: no MLflow store at {empty}"),
        (["--study", "x", "--tracking-uri", f"sqlite:///{corrupt}"], f"error: {corrupt} is not a readable MLflow store"),
        (["--study", "x", "--tracking-uri", str(tmp_path / "plain")], "error: '"),
    ]
    for args, message in cases:
        proc = run_cli(*args, "--out", str(out), cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(message), proc.stderr
        assert not out.exists()
    assert not (tmp_path / "absent.db").exists()  # MLflow was not allowed to create a store
    assert empty.read_bytes() == b""  # a reader never turns an empty file into a store


def test_the_report_never_replaces_a_folder_it_did_not_make(partial_study, tmp_path, monkeypatch):
    """``--out .``, ``--out ~`` and ``--study ..`` (reports/..) used to delete those folders whole."""
    home = tmp_path / "home"
    (home / "work").mkdir(parents=True)
    (home / "work" / "thesis.tex").write_text("years of work")
    monkeypatch.setenv("HOME", str(home))
    for args in (["--out", "."], ["--out", "~"], ["--study", "..", "--out", "reports/.."]):
        study = [] if "--study" in args else ["--study", "partial"]
        proc = run_cli(*study, "--tracking-uri", partial_study, *args, cwd=home / "work")
        assert proc.returncode == 2 and "is not a report folder of lead-study" in proc.stderr, proc.stderr
    assert (home / "work" / "thesis.tex").read_text() == "years of work"
    report = home / "work" / "reports" / "partial"
    assert main(["--study", "partial", "--tracking-uri", partial_study, "--out", str(report), "--no-log"]) == 0
    assert main(["--study", "partial", "--tracking-uri", partial_study, "--out", str(report), "--no-log"]) == 0  # its own: replaced
