"""``python -m study.run`` end to end on the session's Ray: every shipped spec in smoke mode, MLflow
contents, a trial killed mid-run and retried, a driver killed and resumed, and GPU placement."""

import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from trainers.contract import HISTORY_ARTIFACT, TAG_HISTORY_STEP as HISTORY_STEP_TAG, TAG_LOGGED_STEP as LOGGED_STEP_TAG, TAG_STUDY_RUN as STUDY_RUN_TAG
from trainers.contract import TAG_OVERRIDES as OVERRIDES_TAG
from study.run import main
from tests.conftest import TINY, own_stderr
from trainers.config import TrainConfig
from trainers.runtime import kernels
from trainers.settings import deep_merge

ROOT = Path(__file__).resolve().parents[1]


def study_args(spec, tmp_path, *extra):
    return [str(spec), "--output-dir", str(tmp_path / "runs"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", *extra]


def quiet_args(spec, tmp_path, *extra):
    """A study without the report at its end (tests that look at training, not at reports)."""
    return study_args(spec, tmp_path, "--no-report", *extra)


def child_runs(tmp_path, experiment):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("lead_study.role") == "study"]
    children = [r for r in runs if "arm" in r.data.tags]
    return client, parents, children


def steps_of(client, run, key="train/accuracy"):
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


def test_default_study_smoke_test_end_to_end_in_mlflow(smoke_study):
    assert smoke_study.code == 0
    client, parents, children = child_runs(smoke_study.folder, smoke_study.name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert "base/accuracy" in parents[0].data.metrics
    parent_artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert parent_artifacts == {"spec", "planned_trials.json", "summary.json", "report"}
    assert parents[0].data.tags["version.transformers"] != "not installed"
    experiment = client.get_experiment_by_name(smoke_study.name)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not a GenAI overview
    assert json.loads(experiment.tags["mlflow.sharedViewState.lead-study-trials"])["runsHiddenMode"] == "SHOW_ALL"
    names = ["psi-s0"] + [f"static-ratio{r}-s0" for r in ("0", "0.25", "0.5", "1", "2", "4")]
    assert sorted(r.info.run_name for r in children) == sorted(names)
    planned = client.download_artifacts(parents[0].info.run_id, "planned_trials.json", str(smoke_study.folder))
    assert sorted(json.loads(Path(planned).read_text())) == sorted(names)
    for run in children:
        assert run.data.tags[STUDY_RUN_TAG] == parents[0].info.run_id
        assert run.data.tags["version.torch"] == torch.__version__ and "version.lead-study" in run.data.tags
        assert run.data.tags["version.cpu-kernels"] == kernels.level()  # recorded by the trial's own process
        assert run.data.tags["study"] == "psi_vs_static-smoke" and run.info.status == "FINISHED"
        assert run.data.tags["threads"] == "1"  # the spec's resources.cpus: the trial's torch threads
        assert steps_of(client, run) == [1, 2] and steps_of(client, run, "eval/aes") == [2]
        assert run.data.tags["weighting"] in ("psi", "static")
        assert run.data.params["lead.weighting.kind"] == run.data.tags["weighting"]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval_problems")}
        assert artifacts == {"eval_problems/step_000002.parquet"}
        assert history_artifact_matches(client, run)
        config_file = client.download_artifacts(run.info.run_id, "train_config.yaml", str(smoke_study.folder))
        config = TrainConfig.model_validate(yaml.safe_load(Path(config_file).read_text()))
        assert Path(config.model.path).is_dir()  # re-runnable alone with python -m trainers.train
        assert run.info.artifact_uri.startswith((smoke_study.folder / "mlruns").as_uri())  # beside the store
    assert (smoke_study.folder / "runs" / smoke_study.name / "report" / "report.html").is_file()


def history_artifact_matches(client, run) -> bool:
    """The trial's history artifact is current and holds exactly what MLflow's metric API holds."""
    run = client.get_run(run.info.run_id)
    assert run.data.tags[HISTORY_STEP_TAG] == run.data.tags[LOGGED_STEP_TAG]
    with tempfile.TemporaryDirectory() as tmp:
        table = pq.read_table(client.download_artifacts(run.info.run_id, HISTORY_ARTIFACT, tmp))
    stored = sorted((r["key"], r["step"], repr(r["value"])) for r in table.to_pylist())
    api = sorted(
        (key, m.step, repr(m.value)) for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key)
    )
    assert stored == api, (len(stored), len(api))
    return True


COMBINED = ("aggregator_ablation", "lstar_mode_ablation", "schedule_vs_psi", "length_rewards", "psi_vs_pbt",
            "efficiency_methods", "plugin_study")
SPEC_FILES = {**{name: ROOT / f"search_spaces/{name}.yaml" for name in COMBINED}, "plugin_study": ROOT / "examples/plugin_study.yaml"}


def combined_spec(tmp_path) -> Path:
    """The arms of several shipped specs and of the example plugin's spec as one study (one base
    model, one Ray Tune run per phase): each arm renamed ``spec.arm``, carrying its spec's ``base``
    as overrides; their smoke settings are the same; the plugin file is named from where the
    example names it. The psi_vs_pbt population stays a population."""
    specs = {name: yaml.safe_load(SPEC_FILES[name].read_text()) for name in COMBINED}
    smoke = {json.dumps(spec["smoke"], sort_keys=True) for spec in specs.values()}
    assert len(smoke) == 1, "the combined specs must share their smoke settings"
    arms = [{**arm, "name": f"{name}.{arm['name']}", "overrides": deep_merge(spec["base"], arm.get("overrides", {}))}
            for name, spec in specs.items() for arm in spec["arms"]]
    search = specs["psi_vs_pbt"]["search"]
    plugins = [str(SPEC_FILES["plugin_study"].parent / p) for p in specs["plugin_study"]["plugins"]]
    combined = {"name": "shipped", "plugins": plugins, "smoke": specs["psi_vs_pbt"]["smoke"], "seeds": [0], "arms": arms,
                "focus": "plugin_study.gate",  # a user's own weighting as the arm under test
                "search": {**search, "population": {**search["population"], "arm": "psi_vs_pbt.pbt"}}}
    path = tmp_path / "shipped.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(combined))))  # copies: no YAML aliases for shared bases
    return path


def test_every_shipped_grid_and_population_spec_runs_in_smoke_mode(ray_cluster, study_cache, tmp_path, fresh_registries):
    assert main(study_args(combined_spec(tmp_path), tmp_path, "--smoke-test")) == 0
    client, parents, children = child_runs(tmp_path, "shipped-smoke")
    counts = {name: sum(r.data.tags["arm"].startswith(f"{name}.") for r in children) for name in COMBINED}
    assert counts == {"aggregator_ablation": 4, "lstar_mode_ablation": 3, "schedule_vs_psi": 4, "length_rewards": 14,
                      "psi_vs_pbt": 1 + 4, "efficiency_methods": 7, "plugin_study": 2}  # one seed each here
    # the example plugin's reward and weighting trained in their trials' own processes, and name their method
    gate = next(r for r in children if r.data.tags["arm"] == "plugin_study.gate")
    assert (gate.data.tags["reward"], gate.data.tags["weighting"], gate.data.tags["weight_motion"]) == (
        "budget_linear", "accuracy_gate", "adaptive")
    assert steps_of(client, gate, "lead/gate_open") == [1, 2] and gate.data.params["lead.length_params.budget"] == "120"
    assert len(parents) == 1 and all(r.info.status == "FINISHED" for r in children)
    assert (tmp_path / "runs/shipped-smoke/population/psi_vs_pbt.pbt-wc0.2-s0").is_dir()  # the population's own run
    check_method_tags(children, prefix="length_rewards.")
    check_efficiency_methods(client, children)
    motions = {r.data.tags["arm"]: r.data.tags["weight_motion"] for r in children if r.data.tags["arm"].startswith("psi_vs_pbt.")}
    assert motions == {"psi_vs_pbt.psi": "adaptive", "psi_vs_pbt.pbt": "searched"}
    report = (tmp_path / "runs/shipped-smoke/report/report.md").read_text()
    assert "## plugin_study.gate (the arm under test) against the best other arm" in report
    assert "Chosen: plugin_study.gate/accuracy_gate (selection AES" in report and "plugin_study.gate minus the other" in report
    assert "## Population (PBT / PB2) against plugin_study.gate" in report and "## Compute spent" in report
    assert "python -m analysis.replay_spec --study shipped-smoke" in report  # the question the replays ask


def test_the_optuna_spec_runs_in_smoke_mode(ray_cluster, study_cache, tmp_path):
    assert main(quiet_args(ROOT / "search_spaces/psi_tuning_optuna.yaml", tmp_path, "--smoke-test")) == 0
    client, parents, children = child_runs(tmp_path, "psi_tuning_optuna-smoke")
    assert len(parents) == 1 and len(children) == 8 and all(r.info.status == "FINISHED" for r in children)
    assert len({r.data.params["lead.weighting.lambda_min"] for r in children}) == 8  # distinct samples


def check_efficiency_methods(client, children):
    """The efficiency methods' trials name their filter and loss aggregation, and report every step
    what their filter kept and how many rounds it drew (GFPO: its kept share of 2 per prompt)."""
    runs = {r.data.tags["arm"].removeprefix("efficiency_methods."): r for r in children
            if r.data.tags["arm"].startswith("efficiency_methods.")}
    tags = {arm: (r.data.tags["advantage"], r.data.tags["group_filter"], r.data.tags["loss_aggregation"])
            for arm, r in runs.items()}
    assert tags == {"psi": ("decoupled", "none", "token_mean"), "grpo": ("combined", "none", "token_mean"),
                    "dler": ("centered", "dynamic_sampling", "token_mean"), "dr_grpo": ("centered", "none", "budget"),
                    "gfpo": ("combined", "gfpo", "token_mean"), "dapo": ("combined", "dynamic_sampling", "token_mean"),
                    "psi-gfpo": ("decoupled", "gfpo", "token_mean")}
    for arm, run in runs.items():
        rounds = [m.value for m in client.get_metric_history(run.info.run_id, "filter/rounds")]
        kept = [m.value for m in client.get_metric_history(run.info.run_id, "filter/kept_rollouts")]
        assert len(rounds) == len(kept) == 2, arm
        assert all(1 <= r <= 3 for r in rounds) and (max(rounds) == 1 or tags[arm][1] == "dynamic_sampling"), arm
        if tags[arm][1] == "gfpo":  # smoke: 2 prompts x 2 rollouts, keep 1 of each
            assert kept == [2.0, 2.0], arm
        if tags[arm][1] == "none":
            assert kept == [4.0, 4.0] and rounds == [1.0, 1.0], arm


def check_method_tags(children, prefix=""):
    """Each trial's run names its method in tags: the arm's reward, weighting, how its weight moves,
    advantage estimator, whitening."""
    names = ("reward", "weighting", "weight_motion", "advantage", "whiten")
    tags = {r.data.tags["arm"].removeprefix(prefix): tuple(r.data.tags[t] for t in names)
            for r in children if r.data.tags["arm"].startswith(prefix)}
    assert tags["psi"] == ("lead", "psi", "adaptive", "decoupled", "true")
    assert tags["kimi"] == ("kimi", "static", "fixed", "combined", "false")
    assert tags["psi-kimi"] == ("kimi", "psi", "adaptive", "decoupled", "true")
    assert tags["grpo-threshold"] == ("threshold", "static", "fixed", "combined", "false")
    assert tags["thinkprune"] == ("lead", "static", "fixed", "combined", "false")


def test_the_paper_scale_comparison_runs_in_smoke_mode_on_a_tiny_chat_model(ray_cluster, study_cache, tmp_path, monkeypatch):
    """search_spaces/paper_table2_r1_1p5b.yaml end to end on CPU: its smoke settings shrink the
    budgets over every arm's own (the ThinkPrune schedule included); a tiny chat model stands in for R1."""
    from tests.test_math_task import FIXTURE, verl_parquet
    from trainers.models.tiny_chat import build_tiny_chat_model

    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    (tmp_path / "data" / "math").mkdir(parents=True)
    for name in ("train", "test"):
        verl_parquet(tmp_path / "data" / "math" / f"{name}.parquet", rows)
    monkeypatch.setenv("LEAD_MODEL_PATH", str(build_tiny_chat_model(tmp_path / "chat", [FIXTURE])))
    monkeypatch.setenv("LEAD_DATA_DIR", str(tmp_path / "data"))
    assert main(quiet_args(ROOT / "search_spaces/paper_table2_r1_1p5b.yaml", tmp_path, "--smoke-test")) == 0
    client, parents, children = child_runs(tmp_path, "paper_table2_r1_1p5b-smoke")
    assert len(children) == 21 and all(r.info.status == "FINISHED" for r in children)
    check_method_tags(children)
    params = {r.data.tags["arm"]: r.data.params for r in children}
    assert (params["psi"]["train.lr"], params["psi"]["train.clip_ratio_high"]) == ("2e-06", "0.2")
    assert (params["kimi"]["train.lr"], params["kimi"]["train.clip_ratio_high"]) == ("1e-06", "0.28")
    assert params["thinkprune"]["rollout.max_new_tokens"] == "24"  # the smoke budget wins over the schedule


def small_spec(tmp_path, cache_dir, steps: int = 6, eval_every: int = 3, **changes):
    spec = {
        "name": "fault",
        "base": {
            "model": {"cache_dir": str(cache_dir), "tiny": TINY},
            "task": {"max_terms": 5, "eval_size": 24},
            "rollout": {"n": 4, "max_new_tokens": 48},
            "train": {"steps": steps, "prompts_per_step": 4, "mini_batch_size": 16, "micro_batch_size": 8},
            "eval": {"every": eval_every, "num_problems": 12},
            "checkpoint": {"every": 1},
        },
        "arms": [{"name": "psi", "weighting": {"kind": "psi"}}],
        **changes,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def wait_for(predicate, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_a_killed_driver_is_resumed_and_finished_trials_are_not_rerun(ray_cluster, tiny_model_dir, cache_dir, tmp_path):
    spec = small_spec(
        tmp_path, cache_dir,
        arms=[{"name": "psi", "weighting": {"kind": "psi"}}, {"name": "static", "weighting": {"kind": "static", "w_corr": [0.5]}}],
        max_concurrent_trials=1,
    )
    spec_data = yaml.safe_load(spec.read_text())
    spec_data["base"]["train"]["steps"] = 5  # long enough to be interrupted mid-trial
    spec.write_text(yaml.safe_dump(spec_data))
    args = quiet_args(spec, tmp_path, "--address", ray_cluster)
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "study.run", *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    first = tmp_path / "runs/fault/psi-s0"
    second = tmp_path / "runs/fault/static-s0"
    try:
        # a second driver of the same study stops at once (it used to add duplicate trial runs)
        assert wait_for(lambda: (tmp_path / "runs/.fault.lock").is_file() and (tmp_path / "runs/.fault.lock").read_text())
        rival = subprocess.run([sys.executable, "-m", "study.run", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert rival.returncode == 2 and "study 'fault' is already running (pid" in rival.stderr, rival.stderr
        started = wait_for(lambda: (second / "checkpoint_000000").exists())
        assert started, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        driver.send_signal(signal.SIGINT)  # Ctrl-C
        driver.wait(timeout=300)
    assert driver.returncode == 130, (tmp_path / "driver.log").read_text()[-3000:]
    client, parents, _ = child_runs(tmp_path, "fault")
    assert [p.info.status for p in parents] == ["KILLED"]
    finished_result_lines = len((first / "result.json").read_text().splitlines())
    assert main([*args, "--set", "max_failures=1", "--resume"]) == 2  # not the overrides the study started with
    assert main([*args, "--resume"]) == 0
    assert len((first / "result.json").read_text().splitlines()) == finished_result_lines  # not re-run
    client, parents, children = child_runs(tmp_path, "fault")
    assert len(parents) == 1 and len(children) == 2
    for run in children:
        assert steps_of(client, run) == list(range(1, 6)), run.info.run_name
        assert run.info.status == "FINISHED"
        assert history_artifact_matches(client, run)
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags[OVERRIDES_TAG] == "[]"


def test_trials_see_the_gpus_ray_assigned(ray_cluster, tiny_model_dir, cache_dir, tmp_path):
    """On the session's Ray (4 GPUs, as far as Ray knows): fractional trials share one; bundle trials get one each."""
    cases = {"fractional": ({"cpus": 0.25, "gpus": 0.5}, 1),
             "bundles": ({"bundles": [{"CPU": 0.25, "GPU": 1}, {"CPU": 0.25, "GPU": 1}]}, 4)}
    for name, (resources, max_distinct) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        spec = small_spec(folder, cache_dir, seeds=[0, 1], resources=resources)
        spec_data = yaml.safe_load(spec.read_text())
        spec_data["base"]["train"]["steps"] = 2
        spec.write_text(yaml.safe_dump(spec_data))
        assert main(quiet_args(spec, folder)) == 0
        seen = {result.parent.name: json.loads(result.read_text().splitlines()[-1])["cuda_visible_devices"]
                for result in (folder / "runs").glob("*/*/result.json")}
        assert len(seen) == 2, (name, seen)
        for trial, devices in seen.items():
            ids = devices.split(",")
            assert len(ids) == 1 and set(ids) <= {"0", "1", "2", "3"}, (name, trial, devices)
        assert len(set(seen.values())) <= max_distinct  # fractional trials share a GPU


def test_a_trial_the_cluster_cannot_hold_is_refused_before_anything_starts(ray_cluster, cache_dir, tmp_path, capsys):
    """A trial asking for more GPUs than the cluster has would stay pending forever: one line, exit 2."""
    spec = small_spec(tmp_path, cache_dir, resources={"cpus": 1, "gpus": 8})
    assert main(quiet_args(spec, tmp_path)) == 2
    err = own_stderr(capsys)
    assert err.startswith("error: resources: a trial asks for 8 GPUs (the cluster has 4)") and err.count("\n") == 1
    assert not (tmp_path / "runs" / "fault").exists()


def test_a_trial_with_vllm_rollouts_and_one_with_two_deepspeed_workers_one_of_them_killed(
    ray_cluster, cache_dir, tmp_path
):
    """A trial samples with vLLM (CPU build), a trial trains over two ZeRO-2 workers on gloo; one
    of those workers is killed mid-run, the trial fails and Tune restarts it from its last
    checkpoint, without gaps or doubled steps in MLflow."""
    import importlib.util

    import psutil

    missing = [name for name in ("vllm", "deepspeed") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (make setup installs it from the lock: lock/cpu.txt, lock/cpu-build.txt)")
    from tests.test_vllm import VLLM_TINY

    spec = small_spec(
        tmp_path, cache_dir, name="scale", max_failures=1, max_concurrent_trials=2, focus="vllm",
        arms=[
            {"name": "vllm", "weighting": {"kind": "psi"}, "overrides": {"rollout": {"engine": "vllm"}}},
            {"name": "zero2", "weighting": {"kind": "psi"},
             "overrides": {"train": {"backend": "deepspeed", "workers": 2, "zero_stage": 2}}},
        ],
    )
    data = yaml.safe_load(spec.read_text())
    data["base"]["model"]["tiny"] = VLLM_TINY
    data["base"]["train"]["steps"] = 3
    data["base"]["eval"]["every"] = 2
    spec.write_text(yaml.safe_dump(data))
    trial_dir = tmp_path / "runs/scale/zero2-s0"
    killed = []

    def kill_a_training_worker():
        if wait_for(lambda: (trial_dir / "checkpoint_000000").exists() and (trial_dir / "worker.pid").exists(), 600):
            trial = psutil.Process(int((trial_dir / "worker.pid").read_text()))
            workers = [p for p in trial.children() if "multiprocessing" in " ".join(p.cmdline())]
            if workers:
                workers[-1].kill()
                killed.append(workers[-1].pid)

    killer = threading.Thread(target=kill_a_training_worker)
    killer.start()
    assert main(quiet_args(spec, tmp_path)) == 0
    killer.join()
    assert killed, "no training worker was found to kill"
    assert list(trial_dir.glob("restored-checkpoint_*")), "the retry did not restore a checkpoint"
    client, _, children = child_runs(tmp_path, "scale")
    runs = {r.data.tags["arm"]: r for r in children}
    assert all(r.info.status == "FINISHED" for r in children) and set(runs) == {"vllm", "zero2"}
    for run in runs.values():  # the retried trial too: no gaps, no doubled steps
        assert steps_of(client, run) == [1, 2, 3]
        assert steps_of(client, run, "eval/accuracy") == [2, 3]
        assert steps_of(client, run, "eval/aes") == [2, 3]  # NaN here (base accuracy 0), still logged
        assert history_artifact_matches(client, run)
    gaps = [m.value for m in client.get_metric_history(runs["vllm"].info.run_id, "perf/sampler_logp_gap")]
    assert len(gaps) == 3 and max(gaps) < 1e-3  # vLLM followed every update
    assert runs["zero2"].data.params["train.workers"] == "2"


def test_a_pbt_population_exploits_with_changed_settings_and_keeps_its_lineage_in_mlflow(
    ray_cluster, tiny_model_dir, cache_dir, tmp_path
):
    """Two members, ranked at step 2: the worse continues from the better one's step-2 checkpoint
    with a perturbed w_corr. Its weights at step 3 are what the trainer makes from the donor's
    checkpoint with the new w_corr; MLflow holds each step once, the exploit record and its mark."""
    from analysis.load import load_study
    from analysis.population import effective_schedules
    from trainers.loop.checkpoint import CHECKPOINT_FILE
    from trainers.loop.grpo import train

    spec = small_spec(
        tmp_path, cache_dir,
        arms=[{"name": "pbt", "weighting": {"kind": "static", "w_corr": [0.3, 0.9]}}],
        search={"mode": "pbt", "metric": "eval/response_length", "direction": "min",  # (the tiny model's AES is NaN)
                "population": {"arm": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.5,
                                              "mutations": {"lead.weighting.w_corr": {"uniform": [0.1, 1.0]}}}},
        steps=3, eval_every=2,
    )
    assert main(quiet_args(spec, tmp_path, "--address", ray_cluster)) == 0
    client, parents, children = child_runs(tmp_path, "fault")
    runs = {r.info.run_name: r for r in children}
    assert sorted(runs) == ["pbt-wc0.3-s0", "pbt-wc0.9-s0"] and parents[0].info.status == "FINISHED"
    data = load_study(f"sqlite:///{tmp_path}/mlflow.db", "fault")
    assert data.exploits.num_rows == 1
    exploit = data.exploits.to_pylist()[0]
    receiver, donor = exploit["trial"], exploit["donor"]
    assert {receiver, donor} == set(runs) and exploit["step"] == 2
    new_w = json.loads(exploit["new"])["lead.weighting.w_corr"]
    donor_w = json.loads(exploit["donor_settings"])["lead.weighting.w_corr"]
    assert json.loads(exploit["old"])["lead.weighting.w_corr"] == (0.3 if receiver.startswith("pbt-wc0.3") else 0.9)
    assert new_w != donor_w and 0.1 <= new_w <= 1.0
    for run in runs.values():  # one value per step, nothing overwritten or doubled
        assert steps_of(client, run) == [1, 2, 3] and steps_of(client, run, "eval/aes") == [2, 3]
        assert history_artifact_matches(client, run)
    assert steps_of(client, runs[receiver], "pbt/exploit") == [2]
    settings = [m.value for m in sorted(client.get_metric_history(runs[receiver].info.run_id, "setting/lead.weighting.w_corr"),
                                        key=lambda m: m.step)]
    assert settings[2] == pytest.approx(new_w) and settings[0] != pytest.approx(new_w)
    schedule = effective_schedules(data.history, data.exploits, "setting/lead.weighting.w_corr")[receiver]
    assert schedule == ([1, 2, 3], [pytest.approx(donor_w)] * 2 + [pytest.approx(new_w)])

    # the receiver's step-3 weights: the donor's step-2 checkpoint, one step with the new w_corr
    def checkpoints(trial: str) -> dict[int, Path]:
        """A trial's Tune checkpoints by step (an exploited member numbers on from its donor's)."""
        folders = (tmp_path / "runs/fault/population" / trial).glob("checkpoint_*")
        return {json.loads((p / "report.json").read_text())["step"]: p for p in folders}

    assert 2 in checkpoints(donor) and 3 in checkpoints(receiver), (checkpoints(donor), checkpoints(receiver))
    donor_config = client.download_artifacts(runs[donor].info.run_id, "train_config.yaml", str(tmp_path))
    settings = yaml.safe_load(Path(donor_config).read_text())  # its replay: never exploited, one point
    assert settings["lead"]["weighting"]["points"] == [[0, pytest.approx(donor_w)]]
    settings["lead"]["weighting"] = {"kind": "static", "w_corr": new_w}
    config = TrainConfig.model_validate(settings)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trial ran
    try:
        train(config, tmp_path / "again", resume_from=checkpoints(donor)[2], log=lambda _: None,
              changeable=("lead.weighting.w_corr",))
    finally:
        torch.set_num_threads(threads)
    again = torch.load(tmp_path / "again/checkpoints/step_000003" / CHECKPOINT_FILE, weights_only=True)
    ran = torch.load(checkpoints(receiver)[3] / CHECKPOINT_FILE, weights_only=True)
    assert all(torch.equal(ran["model"][k], v) for k, v in again["model"].items())

    # the receiver's run ends with the replay of its lineage: w_corr as points, from scratch
    assert runs[receiver].data.tags["lead_study.params_are"] == "starting values"
    replay_file = Path(client.download_artifacts(runs[receiver].info.run_id, "train_config.yaml", str(tmp_path / "replay")))
    assert replay_file.read_text().startswith(f"# The replay of {receiver}, a member of the pbt population")
    replay = TrainConfig.model_validate(yaml.safe_load(replay_file.read_text()))
    assert replay.lead.weighting.points == [(0, pytest.approx(donor_w)), (2, pytest.approx(new_w))] and replay.seed == 0
    replay = replay.model_validate(deep_merge(replay.model_dump(), {"checkpoint": {"every": 1, "keep_last": 5}}))
    torch.set_num_threads(1)
    try:
        train(replay, tmp_path / "replayed", log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    replayed = {step: torch.load(tmp_path / f"replayed/checkpoints/step_{step:06d}" / CHECKPOINT_FILE, weights_only=True)
                for step in (2, 3)}
    first_exploit = torch.load(checkpoints(donor)[2] / CHECKPOINT_FILE, weights_only=True)  # the receiver's weights at step 2
    assert all(torch.equal(first_exploit["model"][k], v) for k, v in replayed[2]["model"].items())
    assert all(torch.equal(ran["model"][k], v) for k, v in replayed[3]["model"].items())  # donor and receiver share seed 0


def last_step(result_json: Path) -> int:
    """The last step a Tune trial folder's result.json reports (0 before any)."""
    lines = result_json.read_text().splitlines() if result_json.is_file() else []
    return json.loads(lines[-1])["step"] if lines else 0


def test_an_interrupted_population_resumes_to_the_end_with_its_lineage(ray_cluster, tiny_model_dir, cache_dir, tmp_path):
    """A 2-member PBT population (9 steps, synchronized and perturbed at 2, 4, 6 and 8), interrupted
    with Ctrl-C once a member has reached step 5: --resume finishes the study (a restored scheduler
    used to take every member for one at step 0, pause them at a step past the next perturbation and
    never choose them again), each member's steps recorded once, in order (a gap only where it
    continued from a donor's later checkpoint), and exploits only at the perturbation steps, once each."""
    from analysis.load import load_study

    spec = small_spec(
        tmp_path, cache_dir, max_concurrent_trials=1,  # not applied to a population: its members run together
        arms=[{"name": "pbt", "weighting": {"kind": "static", "w_corr": [0.3, 0.9]}}],
        search={"mode": "pbt", "metric": "eval/response_length", "direction": "min",
                "population": {"arm": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.5,
                               "mutations": {"lead.weighting.w_corr": {"uniform": [0.1, 1.0]}}}},
    )
    spec_data = yaml.safe_load(spec.read_text())
    spec_data["base"]["train"]["steps"] = 9
    spec_data["base"]["eval"]["every"] = 2
    spec_data["base"]["checkpoint"]["every"] = 2
    spec.write_text(yaml.safe_dump(spec_data))
    args = quiet_args(spec, tmp_path, "--address", ray_cluster)
    members = [tmp_path / f"runs/fault/population/pbt-wc{w}-s0/result.json" for w in ("0.3", "0.9")]
    with (tmp_path / "driver.log").open("w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "study.run", *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            reached = wait_for(lambda: max(last_step(m) for m in members) >= 5, timeout=400)
        finally:
            driver.send_signal(signal.SIGINT)
            driver.wait(timeout=300)
    steps_then = [last_step(m) for m in members]
    # the members may run on a few steps before Tune stops them; at least one is left unfinished
    assert reached and driver.returncode == 130 and min(steps_then) < 9, (tmp_path / "driver.log").read_text()[-3000:]
    with (tmp_path / "resume.log").open("w") as log:
        resumed = subprocess.run([sys.executable, "-m", "study.run", *args, "--resume"], cwd=ROOT, stdout=log,
                                 stderr=subprocess.STDOUT, timeout=300)
    assert resumed.returncode == 0, (tmp_path / "resume.log").read_text()[-3000:]
    client, parents, children = child_runs(tmp_path, "fault")
    assert parents[0].info.status == "FINISHED" and len(children) == 2, steps_then
    data = load_study(f"sqlite:///{tmp_path}/mlflow.db", "fault")
    exploits = data.exploits.to_pylist()
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/accuracy")]
        assert sorted(set(steps)) == sorted(steps) and max(steps) == 9, (run.info.run_name, steps, steps_then)
        # every step it trained itself, in order; a gap only where it continued from a donor's later checkpoint
        taken = {e["step"] for e in exploits if e["trial"] == run.info.run_name}
        steps = sorted(steps)
        assert steps[0] == 1 and all(b == a + 1 or b - 1 in taken for a, b in zip(steps, steps[1:])), (steps, taken)
        assert run.info.status == "FINISHED", (run.info.run_name, steps_then)
        assert history_artifact_matches(client, run)
    assert len({(e["trial"], e["step"]) for e in exploits}) == len(exploits)  # none recorded twice
    for e in exploits:  # only where the population was ranked, never at a step the restore made up
        run = next(r for r in children if r.info.run_name == e["trial"])
        assert e["step"] in (2, 4, 6, 8) and steps_of(client, run, "pbt/exploit").count(e["step"]) == 1, (e, steps_then)


def make_bucket(name: str) -> None:
    import boto3

    boto3.client("s3").create_bucket(Bucket=name)


def bucket_keys(bucket: str, prefix: str = "") -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.mark.parametrize("uri, message", [
    ("s3://no-such-bucket/studies", "--output-dir: s3://no-such-bucket/studies: the bucket 'no-such-bucket' does not exist"),
    ("nope://bucket/studies", "--output-dir: nope://bucket/studies: not a storage URI pyarrow can open"),
])
def test_unusable_object_storage_is_one_line_and_exit_2_before_anything_starts(s3_env, cache_dir, tmp_path, capsys, uri,
                                                                                message):
    spec = small_spec(tmp_path, cache_dir)
    assert main([str(spec), "--output-dir", uri, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 2
    err = own_stderr(capsys)
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "mlflow.db").exists()


def test_an_mlflow_server_keeps_the_studys_artifacts_in_the_object_store(
    ray_cluster, s3_env, tiny_model_dir, cache_dir, tmp_path, monkeypatch
):
    """The cluster setup without shared disks, on one machine: results in one bucket, MLflow a real
    server on 127.0.0.1 whose artifacts live in another (``--artifacts-destination s3://...``).
    The driver writes runs, configs, histories, per-problem tables and the report through the
    server; they land in the bucket, and nothing lands on a local disk beside the store."""
    from analysis.server import local_server

    make_bucket("mlart")
    make_bucket("results")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_env)
    monkeypatch.chdir(tmp_path)
    spec = small_spec(tmp_path, cache_dir)
    spec_data = yaml.safe_load(spec.read_text())
    spec_data["base"]["train"]["steps"] = 2
    spec.write_text(yaml.safe_dump(spec_data))
    with local_server(f"sqlite:///{tmp_path}/server.db", artifacts_destination="s3://mlart/artifacts") as url:
        assert main([str(spec), "--output-dir", "s3://results/studies", "--tracking-uri", url,
                     "--address", ray_cluster]) == 0
        client = MlflowClient(url)
        runs = client.search_runs([client.get_experiment_by_name("fault").experiment_id])
        assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    keys = bucket_keys("mlart", "artifacts/")
    for name in ("train_config.yaml", "history/metrics.parquet", "eval_problems/step_000002.parquet",
                 "report/report.html", "spec/spec.yaml"):
        assert any(k.endswith(name) for k in keys), (name, keys)
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()
