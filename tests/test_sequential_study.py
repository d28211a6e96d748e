"""A sequential study on Ray Tune: its settings checked before anything runs, its looks in MLflow,
and a study interrupted after its first look resumed to the decisions an uninterrupted one makes."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import yaml
from mlflow.tracking import MlflowClient

from analysis.report import write_report
from stores.mlflow_store import read_json_artifact
from study.run import main
from tests.conftest import own_stderr
from tests.test_study_run import ROOT, child_runs, quiet_args, small_spec, study_args, wait_for
from trainers import contract as M

ARMS = [{"name": "psi", "weighting": {"kind": "psi"}},
        {"name": "static", "weighting": {"kind": "static", "w_corr": [0.5, 1.0]}}]
TWO_ARMS = [ARMS[0], {"name": "static", "weighting": {"kind": "static", "w_corr": [1.0]}}]  # one comparison


def sequential_spec(tmp_path, cache_dir, design=None, steps=3, **changes):
    changes = {"arms": ARMS, "seeds": [0, 1, 2, 3], "search": {"metric": M.EVAL_RESPONSE_LENGTH, "direction": "min"},
               "design": design or {"kind": "sequential", "min_seeds": 3, "max_seeds": 4}, **changes}
    return small_spec(tmp_path, cache_dir, steps=steps, eval_every=steps, **changes)


@pytest.mark.parametrize("design, changes, message", [
    ({"min_seeds": 2}, {}, "design.min_seeds: 2 is below 3"),
    ({"min_seeds": 4, "max_seeds": 3}, {}, "design.max_seeds: 3 is below design.min_seeds (4)"),
    ({"max_seeds": 6}, {}, "seeds: 4 listed, design.max_seeds asks for 6"),
    ({"alpha": 0.5}, {}, "design.alpha: 0.5 is outside (0, 0.5)"),
    ({"max_trials": 8}, {}, "design.max_trials: 8 is less than one look of every arm (3 arms and variants x 3 seeds = 9)"),
    ({}, {"focus": "grpo"}, "focus: no arm named 'grpo'"),
    ({}, {"search": {"mode": "pbt", "population": {"arm": "static", "perturbation_interval": 2,
                                                    "mutations": {"lead.weighting.w_corr": {"uniform": [0.1, 1.0]}}}}},
     "design.kind: a sequential design drives the grid of arms; search.mode pbt"),
    ({}, {"arms": [ARMS[0], {**ARMS[1], "seeds": [0, 1, 2, 3]}]}, "arms.seeds: a sequential design takes every arm's seeds"),
])
def test_a_bad_sequential_design_is_one_line_and_exit_2(tmp_path, cache_dir, capsys, design, changes, message):
    spec = sequential_spec(tmp_path, cache_dir, {"kind": "sequential", "min_seeds": 3, "max_seeds": 4, **design}, **changes)
    assert main(quiet_args(spec, tmp_path)) == 2
    err = own_stderr(capsys)
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_fixed_design_takes_no_sequential_setting(tmp_path, cache_dir, capsys):
    spec = sequential_spec(tmp_path, cache_dir, {"kind": "fixed", "max_seeds": 4})
    assert main(quiet_args(spec, tmp_path)) == 2
    assert "design.max_seeds: only used with design sequential (kind is fixed)" in capsys.readouterr().err


def test_the_dry_run_prints_the_design_and_its_fewest_and_most_trials(tmp_path, cache_dir, capsys):
    spec = sequential_spec(tmp_path, cache_dir, {"kind": "sequential", "min_seeds": 3, "max_seeds": 4, "max_trials": 11})
    assert main([str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "design: sequential, the arm under test against 2 others on the seeds [0, 1, 2, 3]" in out
    assert "looks at 3..4 seeds" in out and "at most 11 trials" in out
    assert "fewest trials 9 (every comparison decided at the first look): expected wall time" in out
    assert "most trials 11: expected wall time" in out


def decision_path(tmp_path, study="fault"):
    client, parents, children = child_runs(tmp_path, study)
    assert len(parents) == 1
    return read_json_artifact(client, parents[0].info.run_id, M.DECISION_PATH_ARTIFACT), parents[0], children


def test_a_sequential_study_interrupted_after_its_first_look_resumes_to_the_same_decisions(
        ray_cluster, tiny_model_dir, cache_dir, tmp_path):
    """The same study twice: straight through, and with Ctrl-C once its first look is on record,
    then --resume. Both record the same looks (each once), run the same trials and stop for the
    same reason; the trial runs in MLflow are exactly the trials the looks asked for."""
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    for folder in (whole, broken):
        folder.mkdir()
    design = {"kind": "sequential", "min_seeds": 3, "max_seeds": 4, "problems": "like these"}
    spec = sequential_spec(whole, cache_dir, design, steps=2, arms=TWO_ARMS)
    assert main(quiet_args(spec, whole, "--address", ray_cluster)) == 0
    expected, parent, children = decision_path(whole)
    assert all(look["problem_margin"] > 0 for look in expected)  # each trial's per-problem scores reached the searcher
    assert expected and {look["comparison"] for look in expected} == {"static"}
    assert len({(look["comparison"], look["seeds"]) for look in expected}) == len(expected)  # no look twice
    assert parent.data.tags[M.TAG_DESIGN_STOPPED] == "every comparison decided or at max_seeds"
    client = MlflowClient(f"sqlite:///{whole}/mlflow.db")
    for comparison in ("static",):  # the UI charts each comparison's interval against the seeds
        history = client.get_metric_history(parent.info.run_id, f"{M.SEQUENTIAL_PREFIX}{comparison}/high")
        assert sorted(m.step for m in history) == [look["seeds"] for look in expected if look["comparison"] == comparison]
    page = write_report(f"sqlite:///{whole}/mlflow.db", "fault", whole / "report", log_artifacts=False)
    report = page.with_suffix(".md").read_text()
    assert "## Verdicts of the sequential design (psi against each other arm)" in report and "## Decision path" in report
    assert "over RL seeds on base model" in report and (whole / "report/figures/repeated_intervals.png").is_file()

    spec = sequential_spec(broken, cache_dir, design, steps=2, arms=TWO_ARMS)
    args = quiet_args(spec, broken, "--address", ray_cluster)
    with (broken / "driver.log").open("w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "study.run", *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        # the driver made its store before the first trial's folder (reading it sooner races its migrations)
        assert wait_for(lambda: (broken / "runs/fault/psi-s0").exists(), timeout=400), (broken / "driver.log").read_text()[-3000:]
        assert wait_for(lambda: bool(decision_path(broken)[0]), timeout=400), (broken / "driver.log").read_text()[-3000:]
    finally:
        driver.send_signal(signal.SIGINT)
        driver.wait(timeout=300)
    assert driver.returncode in (0, 130), (broken / "driver.log").read_text()[-3000:]
    if driver.returncode == 130:
        assert main([*args, "--resume"]) == 0
    resumed, parent, again = decision_path(broken)
    keys = ("comparison", "seeds", "estimate", "low", "high", "problem_margin", "decision", "next")

    def looks(path):  # two trials at a time: the order in which looks come may differ, not the looks
        return sorted(tuple(look[k] for k in keys) for look in path)

    assert looks(resumed) == looks(expected)
    assert parent.data.tags[M.TAG_DESIGN_STOPPED] == "every comparison decided or at max_seeds"
    assert sorted(r.info.run_name for r in again) == sorted(r.info.run_name for r in children)
    assert all(r.info.status == "FINISHED" for r in again)
    assert min(look["seeds"] for look in expected) == 3


def test_each_seed_can_draw_its_own_base_model_and_the_report_says_so(ray_cluster, tiny_model_dir, cache_dir, tmp_path):
    """``base_model_per_seed``: seed s trains from the tiny model built with seed s (built at once,
    in parallel, cached by content); the report states the wider population and each base model's own result."""
    spec = small_spec(tmp_path, cache_dir, arms=TWO_ARMS, seeds=[0, 1], base_model_per_seed=True, steps=2, eval_every=2)
    assert main(study_args(spec, tmp_path, "--address", ray_cluster)) == 0
    client, _, children = child_runs(tmp_path, "fault")
    models = {r.data.params["model.tiny.seed"]: r.data.params["model.path"] for r in children}
    assert sorted(models) == ["0", "1"] and len(set(models.values())) == 2
    assert all(r.data.params["model.tiny.seed"] == r.data.tags["seed"] for r in children)
    report = (tmp_path / "runs/fault/report/report.md").read_text()
    assert "## Per base model" in report and "The trials started from 2 base models" in report


def test_a_base_model_per_seed_needs_the_tiny_model(tmp_path, cache_dir, tiny_model_dir, capsys):
    spec = small_spec(tmp_path, cache_dir, base_model_per_seed=True)
    data = yaml.safe_load(spec.read_text())
    data["base"]["model"]["path"] = str(tiny_model_dir)
    spec.write_text(yaml.safe_dump(data))
    assert main(quiet_args(spec, tmp_path)) == 2
    assert "base_model_per_seed: a base model is drawn per seed" in capsys.readouterr().err
