"""A spec that sets a population member's replayed schedule against PSI on other seeds."""

import yaml
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from analysis.replay_spec import main
from study.mlflow_runs import log_yaml
from study.plan import plan_trials
from study.spec import load_spec
from tests.conftest import run_main, tiny_config
from trainers import contract as M
from trainers.settings import deep_merge


def member_and_psi_store(tmp_path, cache_dir) -> str:
    """A study as the runner leaves it: two members (their train_config.yaml is their replay) and PSI."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("pop", artifact_location=(tmp_path / "mlruns").as_uri())
    parent = client.create_run(exp, run_name="pop", tags={M.TAG_ROLE: M.ROLE_STUDY}).info.run_id
    base = tiny_config(cache_dir).model_dump(mode="json")
    runs = {
        "pbt-wc0.3-s0": (0.4, {"lead": {"weighting": {"kind": "schedule", "points": [[0, 0.9], [2, 0.72]]}}}, M.SEARCHED),
        "pbt-wc0.9-s0": (0.7, {"lead": {"weighting": {"kind": "schedule", "points": [[0, 0.9]]}}, "train": {"lr": 2e-4}},
                         M.SEARCHED),
        "psi-s0": (0.5, {"lead": {"weighting": {"kind": "psi"}}}, M.ADAPTIVE),
    }
    for name, (aes, settings, motion) in runs.items():
        config = deep_merge(base, settings)
        config["lead"]["weighting"] = settings["lead"]["weighting"]
        config["lead"]["advantage"] = {"kind": "decoupled", "whiten": True}
        tags = {M.TAG_STUDY_RUN: parent, M.TAG_ARM: name.split("-")[0], M.TAG_VARIANT: name, M.TAG_SEED: "0",
                **M.method_tags(config, motion)}
        run = client.create_run(exp, run_name=name, tags=tags).info.run_id
        client.log_batch(run, metrics=[Metric(M.TRAIN_ACCURACY, 0.5, 0, 1), Metric(M.EVAL_AES, aes, 0, 1)])
        log_yaml(client, run, M.TRAIN_CONFIG_ARTIFACT, config)
        client.set_terminated(run)
    return uri


def test_the_best_member_s_schedule_against_psi_on_new_seeds(tmp_path, cache_dir):
    uri = member_and_psi_store(tmp_path, cache_dir)
    out = tmp_path / "replay.yaml"
    result = run_main(main, "--study", "pop", "--tracking-uri", uri, "--seeds", "3", "4", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "pbt-wc0.9-s0's schedule against psi-s0 on seeds [3, 4]" in result.stdout  # the best by final AES
    plans = {(p.arm, p.seed): p for p in plan_trials(load_spec(out))}
    assert sorted(plans) == [("psi", 3), ("psi", 4), ("replay", 3), ("replay", 4)]
    replay, psi = plans[("replay", 3)].config, plans[("psi", 3)].config
    assert replay["lead"]["weighting"]["points"] == [[0, 0.9]] and replay["train"]["lr"] == 2e-4
    assert psi["lead"]["weighting"]["kind"] == "psi" and psi["train"]["lr"] == tiny_config(tmp_path).train.lr  # as it ran
    assert (plans[("replay", 3)].motion, plans[("psi", 3)].motion) == ("scheduled", "adaptive")
    named = run_main(main, "--study", "pop", "--tracking-uri", uri, "--member", "pbt-wc0.3-s0", "--out", out)
    assert named.returncode == 0
    assert yaml.safe_load(out.read_text())["arms"][0]["weighting"]["points"] == [[0, 0.9], [2, 0.72]]


def test_a_study_without_a_population_or_a_named_member_is_one_line(tmp_path, cache_dir):
    uri = member_and_psi_store(tmp_path, cache_dir)
    missing = run_main(main, "--study", "pop", "--tracking-uri", uri, "--member", "nobody", "--out", tmp_path / "x.yaml")
    assert missing.returncode == 2 and "--member: no member named 'nobody'" in missing.stderr
    assert missing.stderr.count("\n") == 1 and not (tmp_path / "x.yaml").exists()
    unknown = run_main(main, "--study", "nope", "--tracking-uri", uri)
    assert unknown.returncode == 2 and "no study named 'nope'" in unknown.stderr
