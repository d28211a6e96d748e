"""Study specs: validation with key paths, planning, and the CLI's one-line errors (exit 2)."""

import os
import re
from pathlib import Path

import pytest
import yaml

from study.plan import plan_trials
from study.run import main
from study.spec import load_spec
from tests.conftest import own_stderr
from trainers.settings import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "search_spaces").glob("*.yaml"))


def write(tmp_path, data) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def minimal(**changes):
    return {"name": "t", "arms": [{"name": "psi", "weighting": {"kind": "psi"}}], **changes}


def pbt(mode="pbt", population=None, arms=None, steps=10):
    """A PSI arm beside a PBT population of two static members, ranked every 3 of 10 steps."""
    moves = {"mutations": {"lead.weighting.w_corr": {"uniform": [0.1, 1.0]}}} if mode == "pbt" else {}
    return minimal(
        base={"train": {"steps": steps}, "eval": {"every": 3}, "checkpoint": {"every": 3}},
        arms=arms or [{"name": "psi", "weighting": {"kind": "psi"}},
                      {"name": "pbt", "weighting": {"kind": "static", "w_corr": [0.3, 0.7]}}],
        search={"mode": mode, "population": {"arm": "pbt", "perturbation_interval": 3, **moves, **(population or {})}},
    )


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_every_shipped_spec_is_valid_and_plans(spec, monkeypatch, tmp_path):
    from trainers.settings import files_unchecked

    monkeypatch.setenv("LEAD_MODEL_PATH", str(tmp_path / "model"))  # GPU specs name machine paths
    monkeypatch.setenv("LEAD_DATA_DIR", str(tmp_path / "data"))
    with files_unchecked():
        plans = plan_trials(load_spec(spec))
    assert plans and len({p.name for p in plans}) == len(plans)
    assert all(Path(p.config["model"]["cache_dir"]).is_absolute() for p in plans)


def test_the_default_study_is_psi_against_the_paper_ratio_grid():
    spec = load_spec(ROOT / "search_spaces/psi_vs_static.yaml")
    plans = plan_trials(spec)
    static = sorted({p.config["lead"]["weighting"]["w_corr"] for p in plans if p.arm == "static"})
    assert static == pytest.approx([0.2, 1 / 3, 0.5, 2 / 3, 0.8, 1.0])
    assert [p.config["lead"]["weighting"]["kind"] for p in plans if p.arm == "psi"] == ["psi"] * 5
    assert sorted({p.seed for p in plans}) == [0, 1, 2, 3, 4] and len(plans) == 35
    smoke = plan_trials(spec, smoke=True)  # --smoke-test: one seed of each arm
    assert len(smoke) == 7 and {p.seed for p in smoke} == {0}
    assert {p.config["lead"]["length_reward"] for p in plans} == {"lead"}


def test_arms_expand_over_grids_and_seeds_with_overrides(tmp_path):
    spec = load_spec(
        write(
            tmp_path,
            minimal(
                seeds=[1, 2],
                focus="sched",
                arms=[
                    {"name": "grpo", "weighting": {"kind": "combined", "w_corr": [0.5, 0.8]}},
                    {
                        "name": "sched",
                        "weighting": {"kind": "schedule", "w_corr_start": 1.0, "w_corr_end": 0.4},
                        "overrides": {"lead": {"aggregator": "min_correct"}, "train": {"steps": 40}},
                    },
                ],
            ),
        )
    )
    plans = plan_trials(spec)
    assert [p.name for p in plans] == [
        "grpo-wc0.5-s1", "grpo-wc0.5-s2", "grpo-wc0.8-s1", "grpo-wc0.8-s2", "sched-s1", "sched-s2",
    ]
    grpo = plans[0].config
    weighting, advantage = grpo["lead"]["weighting"], grpo["lead"]["advantage"]
    assert (advantage["kind"], weighting["kind"], advantage["whiten"], grpo["seed"]) == ("combined", "static", True, 1)
    sched = plans[-1].config
    assert sched["lead"]["aggregator"] == "min_correct"
    assert sched["lead"]["weighting"]["schedule_steps"] == 40  # a schedule spans the run unless told


def test_a_grid_over_any_dotted_settings_expands_to_every_combination(tmp_path):
    arms = [{"name": "psi", "weighting": {"kind": "psi"}, "grid": {"lead.weighting.beta": [0.9, 0.99], "train.lr": [1e-4, 3e-4]}},
            {"name": "fixed", "weighting": {"kind": "static"}, "advantage": {"kind": "combined"},
             "grid": {"lead.weighting.w_corr": [0.2, 0.8]}, "labels": ["low", "high"]},
            {"name": "steps", "weighting": {"kind": "schedule", "points": [[0, 0.2], [7, 0.64], [14, 0.7]]}}]
    plans = plan_trials(load_spec(write(tmp_path, minimal(arms=arms))))
    assert [p.name for p in plans] == ["psi-beta0.9-lr0.0001-s0", "psi-beta0.9-lr0.0003-s0", "psi-beta0.99-lr0.0001-s0",
                                       "psi-beta0.99-lr0.0003-s0", "fixed-low-s0", "fixed-high-s0", "steps-s0"]
    assert [(p.config["lead"]["weighting"]["beta"], p.config["train"]["lr"]) for p in plans[:4]] == [
        (0.9, 1e-4), (0.9, 3e-4), (0.99, 1e-4), (0.99, 3e-4)]
    assert [(p.config["lead"]["weighting"]["w_corr"], p.variant) for p in plans[4:6]] == [(0.2, "low"), (0.8, "high")]
    assert plans[6].config["lead"]["weighting"]["points"] == [[0, 0.2], [7, 0.64], [14, 0.7]]
    assert plans[6].variant == "points3" and plans[6].motion == "scheduled"


def test_shorthands_compile_to_the_trainers_own_settings(tmp_path):
    """``kind: combined``, a list of ``w_corr`` and ``ratios`` plan exactly as their long forms."""
    short = [{"name": "a", "weighting": {"kind": "combined", "ratios": [0.25, 1]}, "advantage": {"whiten": False}}]
    long = [{"name": "a", "weighting": {"kind": "static"}, "advantage": {"kind": "combined", "whiten": False},
             "grid": {"lead.weighting.w_corr": [0.8, 0.5]}, "labels": ["ratio0.25", "ratio1"]}]
    plan = lambda arms, name: plan_trials(load_spec(write(tmp_path / name, minimal(arms=arms))))  # noqa: E731
    (tmp_path / "short").mkdir(), (tmp_path / "long").mkdir()
    assert plan(short, "short") == plan(long, "long")


def test_arms_name_a_length_reward_whose_lead_settings_land_in_lead(tmp_path):
    arms = [
        {"name": "kimi", "reward": {"kind": "kimi"}, "weighting": {"kind": "static", "w_corr": [0.5]}},
        {"name": "psi-dapo", "reward": {"kind": "overlong", "max_len": 150, "cache_len": 40}, "weighting": {"kind": "psi"}},
        {"name": "sb", "reward": {"kind": "shorter_better", "bmax": 120}, "weighting": {"kind": "combined", "w_corr": 0.5},
         "advantage": {"whiten": False}},
        {"name": "min", "reward": {"kind": "lead", "aggregator": "min_correct"}, "weighting": {"kind": "psi"}},
    ]
    kimi, dapo, sb, minimum = (p.config["lead"] for p in plan_trials(load_spec(write(tmp_path, minimal(arms=arms, focus="min")))))
    assert (kimi["length_reward"], kimi["length_params"], kimi["weighting"]["kind"]) == ("kimi", {}, "static")
    assert (dapo["length_reward"], dapo["length_params"]) == ("overlong", {"max_len": 150, "cache_len": 40})
    assert (sb["length_params"], sb["bmax"], sb["advantage"]["whiten"]) == ({}, 120, False)  # bmax is lead's field
    assert (minimum["length_reward"], minimum["aggregator"]) == ("lead", "min_correct")


@pytest.mark.parametrize(
    "data, message",
    [
        (minimal(arms=[{"name": "a", "weighting": {"kind": "psi"}}, {"name": "b", "weighting": {"kind": "static", "w_corr": 1.5}}]),
         "arms[1].weighting.w_corr: Input should be less than or equal to 1"),
        (minimal(arms=[{"name": "b", "weighting": {"kind": "static", "w_corr": [0.5, 1.5]}}]),
         "arms[0].lead.weighting.w_corr: Input should be less than or equal to 1"),
        (minimal(arms=[{"name": "s", "weighting": {"kind": "static", "ratios": [-1]}}]),
         "arms[0]: weighting.ratios: each ratio is a number >= 0, got [-1]"),
        (minimal(arms=[{"name": "s", "weighting": {"kind": "psi"}, "grid": {"lead.weighting.betta": [0.5]}}]),
         "arms[0].lead.weighting.betta: unknown key"),
        (minimal(arms=[{"name": "s", "weighting": {"kind": "psi"}, "grid": {"lead.weighting.beta": [0.5, 0.9]}, "labels": ["a"]}]),
         "arms[0]: labels: 1 names for 2 grid variants"),
        (minimal(arms=[{"name": "s", "weighting": {"kind": "psi"}, "grid": {"train.lr": []}}]),
         "arms[0].grid: train.lr: give at least one value"),
        (minimal(arms=[{"name": "s", "weighting": {"kind": "combined"}, "advantage": {"kind": "decoupled"}}]),
         "arms[0]: advantage.kind: weighting kind combined is combine-then-normalize; use weighting kind static"),
        (minimal(arms=[{"name": "s", "weighting": {"kind": "static", "whiten": False}}]),
         "arms[0].weighting: whiten: moved to lead.advantage.whiten"),
        (minimal(arms=[{"name": "s", "weighting": {"kind": "schedule", "points": [[1, 0.5]]}}]),
         "arms[0].weighting.points: points start at step 0 and their steps increase, got steps [1]"),
        (minimal(arms=[{"name": "s", "weighting": {"kind": "schedule", "points": [[0, 0.5]], "w_corr_end": 0.2}}]),
         "arms[0].weighting: points: give either points or w_corr_end, not both"),
        (minimal(arms=[{"name": "s", "weighting": {"kind": "fancy"}}]),
         "arms[0].weighting: unknown weighting 'fancy' (known: psi, schedule, static)"),
        (minimal(arms=[{"name": "a", "reward": {"kind": "kimmy"}, "weighting": {"kind": "psi"}}]),
         "arms[0].reward: kind: unknown length reward 'kimmy'"),
        (minimal(arms=[{"name": "a", "reward": {"kind": "overlong", "max_len": 100}, "weighting": {"kind": "psi"}}]),
         "arms[0].reward: cache_len: required by length reward overlong"),
        (minimal(arms=[{"name": "a", "reward": {"kind": "kimi", "scale": 2}, "weighting": {"kind": "psi"}}]),
         "arms[0].reward: scale: unknown key (length reward kimi takes: nothing)"),
        (minimal(arms=[{"name": "a", "reward": {"kind": "threshold", "threshold": -3}, "weighting": {"kind": "psi"}}]),
         "arms[0].lead: length_params.threshold: Input should be greater than 0 (length reward threshold)"),
        (minimal(base={"rollout": {"max_new_tokens": [[5, 100]]}}), "base.rollout.max_new_tokens"),
        (minimal(arms=[{"name": "a", "weighting": {"kind": "psi", "lamda_min": 0.2}}]), "arms[0].weighting.lamda_min: unknown key"),
        (minimal(colour="red"), "colour: unknown key"),
        (minimal(base={"train": {"backend": "deepspeed", "workers": 4}}, resources={"gpus": 2}),
         "arms[0].train.workers: 4 workers take one GPU each, a trial gets 2 (resources: {CPU: 1, GPU: 2})"),
        (minimal(base={"train": {"workers": 2}}), "base.train: workers: the single backend trains in one process (got 2)"),
        (minimal(base={"rollout": {"engine": "vllm"}}, resources={"gpus": 0.5}),
         "arms[0].rollout.engine: vllm needs whole GPUs (it assumes it is alone on its memory), a trial gets 0.5 "
         "(resources: {CPU: 1, GPU: 0.5})"),
        (minimal(base={"rollout": {"engine": "sglang"}}), "base.rollout.engine: unknown rollout engine 'sglang' (known: hf, vllm)"),
        (minimal(seeds=[0, 0]), "seeds: must be distinct, got [0, 0]"),
        (minimal(arms=[{"name": "s", "weighting": {"kind": "static", "ratios": [1, 1.0]}}]),
         "arms[0]: grid: variants must be distinct, got ['ratio1', 'ratio1']"),
        (minimal(name=".."), "name: String should match pattern"),
        (minimal(name="."), "name: String should match pattern"),
        (minimal(arms=[{"name": "..", "weighting": {"kind": "psi"}}]), "arms[0].name: String should match pattern"),
        (minimal(base={"train": {"lr": "fast"}}), "base.train.lr: Input should be a valid number"),
        (minimal(arms=[{"name": "a", "weighting": {"kind": "psi"}, "overrides": {"lead": {"aggregator": "max"}}}]),
         "arms[0].lead.aggregator"),
        (minimal(base={"model": {"path": "/no/such/model"}}), "base.model.path: /no/such/model is not a model directory"),
        (minimal(arms=[{"name": "a", "weighting": {"kind": "static", "w_corr": [0.5], "ratios": [1]}}]), "exactly one of w_corr"),
        (minimal(search={"mode": "optuna", "space": {"lead.weighting.beta": {"uniform": [0.8, 0.9]}}}, seeds=[0, 1]), "exactly one arm and one seed"),
        (minimal(search={"mode": "optuna", "space": {"lead.weighting.betta": {"uniform": [0.8, 0.9]}}}), "search.space.lead.weighting.betta"),
        (minimal(search={"mode": "pbt"}), "search.population: Field required"),
        (pbt(population={"arm": "nope"}), "search.population.arm: no arm named 'nope' (arms: psi, pbt)"),
        (minimal(focus="nope"), "focus: no arm named 'nope' (arms: psi)"),
        (minimal(arms=[{"name": "a", "weighting": {"kind": "psi"}}, {"name": "b", "weighting": {"kind": "static"}}]),
         "focus: name the arm under test (the study has 2 arms and none is called 'psi'): one of a, b"),
        (pbt(population={"mutations": {}}), "population.mutations: pbt needs at least one setting to move"),
        (pbt(mode="pb2"), "population.bounds: pb2 needs at least one setting to move"),
        (pbt(population={"bounds": {"train.lr": [1e-4, 1e-3]}}), "population.bounds: not used by pbt (it takes mutations)"),
        (pbt(population={"perturbation_interval": 4}),
         "search.population.perturbation_interval: 4 is not a multiple of eval.every (3)"),
        (pbt(steps=9), "search.population.perturbation_interval: 3 divides train.steps (9): an exploit at the last step"),
        (pbt(population={"mutations": {"lead.weighting.w_corr": {"uniform": [0.5, 1.5]}}}),
         "search.population.mutations.lead.weighting.w_corr = 1.5: lead.weighting.w_corr: Input should be less than or equal to 1"),
        (pbt(arms=[{"name": "pbt", "seeds": [0], "weighting": {"kind": "static", "w_corr": [0.5]}}]),
         "search.population.arm: 'pbt' has 1 trial; a population needs at least 2"),
        (pbt(arms=[{"name": "pbt", "seeds": [1, 1], "weighting": {"kind": "static", "w_corr": [0.5]}}]),
         "arms[0].seeds: must be distinct, got [1, 1]"),
        (minimal(search={"population": {"arm": "psi", "perturbation_interval": 3}}),
         "search.population: only used with search mode pbt or pb2 (mode is grid)"),
    ],
)
def test_bad_specs_name_the_key_path(tmp_path, data, message):
    with pytest.raises(ConfigError) as info:
        load_spec(write(tmp_path, data))
    assert message in str(info.value) and "\n" not in str(info.value)


def run_cli(*args, capsys):
    code = main([str(a) for a in args])
    return code, own_stderr(capsys)


def test_cli_errors_are_one_line_exit_2_and_create_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    bad = write(tmp_path, minimal(colour="red"))
    assert run_cli(bad, "--output-dir", out, capsys=capsys) == (2, f"error: {bad}: colour: unknown key\n")
    good = write(tmp_path, minimal())
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    code, err = run_cli(good, "--output-dir", a_file / "out", capsys=capsys)
    assert code == 2 and err.startswith("error: --output-dir:") and err.count("\n") == 1
    code, err = run_cli(good, "--output-dir", out, "--tracking-uri", "http://127.0.0.1:9", capsys=capsys)
    assert code == 2 and "--tracking-uri: cannot reach the MLflow server" in err and err.count("\n") == 1
    code, err = run_cli(good, "--output-dir", out, "--tracking-uri", f"sqlite:///{tmp_path}/t.db", "--address", "127.0.0.1:9", capsys=capsys)
    assert code == 2 and err.startswith("error: --address: cannot connect") and err.count("\n") == 1
    code, err = run_cli(tmp_path / "missing.yaml", capsys=capsys)
    assert code == 2 and "missing.yaml: cannot read" in err
    # every problem at once, one line each: the spec's, the output folder's, the store's
    both = write(tmp_path, minimal(base={"train": {"lr": -1}}, search={"metric": "eval/acc"}))
    code, err = run_cli(both, "--output-dir", "/proc/lead-study", "--tracking-uri", str(tmp_path / "plain"), capsys=capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 4 and all(line.startswith("error: ") for line in lines), err
    assert "base.train.lr" in lines[0] and "search.metric" in lines[1]
    assert "--output-dir: cannot write in /proc" in lines[2] and "--tracking-uri: '" in lines[3]
    assert not out.exists() and not (tmp_path / "t.db").exists()


def table_rows(out: str) -> dict[str, dict[str, str]]:
    """The dry run's trial table as {trial: {column: value}} (columns are separated by 2+ spaces)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("trial "))
    columns = [(m.start(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", lines[start])]
    bounds = [(begin, columns[i + 1][0] if i + 1 < len(columns) else None, name) for i, (begin, name) in enumerate(columns)]
    rows = {}
    for line in lines[start + 1:]:
        if line.startswith("resources per trial:"):
            break
        row = {name: line[begin:end].strip() for begin, end, name in bounds}
        rows[row["trial"]] = row
    return rows


def test_dry_run_prints_a_table_of_what_differs_between_trials(capsys):
    assert main([str(ROOT / "search_spaces/psi_vs_static.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "\n35 trials; seeds per arm: psi [0, 1, 2, 3, 4]; static [0, 1, 2, 3, 4]\n" in out
    assert "\nthe arm under test: psi (the report sets every other arm against it)\n" in out
    assert "\nresources per trial: {CPU: 1}\n" in out
    rows = table_rows(out)
    assert len(rows) == 35 and max(len(line) for line in out.splitlines()) < 250  # not a config per line
    static = rows["static-ratio0.25-s3"]
    assert (static["seed"], static["motion"], static["engine"], static["backend"], static["advantage"]) == (
        "3", "fixed", "hf", "single x1", "decoupled")
    assert static["weighting.w_corr"] == "0.8" and rows["psi-s0"]["weighting.beta"] == "0.95"
    assert "train.lr" not in static  # the same in every trial: not repeated
    assert out.strip().splitlines()[-1].startswith("expected wall time: ")
    assert f"35 trials, {min(os.cpu_count(), 35)} at a time on {os.cpu_count()} CPUs" in out
    assert main([str(ROOT / "search_spaces/psi_vs_static.yaml"), "--dry-run", "--show-configs"]) == 0
    assert capsys.readouterr().out.count("\n--- ") == 35


def test_set_overrides_a_spec_setting_and_bad_ones_are_named(capsys):
    spec = str(ROOT / "search_spaces/psi_vs_static.yaml")
    assert main([spec, "--dry-run", "--set", "seeds=[0, 1]", "--set", "base.train.steps=7"]) == 0
    out = capsys.readouterr().out
    assert "\n14 trials; seeds per arm: psi [0, 1]; static [0, 1]\n" in out
    assert main([spec, "--dry-run", "--set", "base.train.steps=7", "--show-configs"]) == 0
    assert "\n  steps: 7\n" in capsys.readouterr().out
    assert main([spec, "--dry-run", "--set", "base.train.stepz=7"]) == 2
    assert "base.train.stepz: unknown key" in capsys.readouterr().err
    assert main([spec, "--dry-run", "--set", "seeds", "--set", "seeds=[0"]) == 2
    err = own_stderr(capsys).splitlines()
    assert err == ["error: override 'seeds': expected KEY=VALUE with a dotted key, e.g. train.steps=30",
                   "error: override seeds: the value is not YAML: while parsing a flow sequence"]


def test_the_expected_wall_time_places_trials_on_the_first_free_slot():
    from study.estimate import makespan, trial_seconds
    from trainers.config import TrainConfig

    assert makespan([3, 3, 3], 2) == 6 and makespan([5, 1, 1, 1], 2) == 5 and makespan([2, 2], 8) == 2
    short, long = (TrainConfig.model_validate({"train": {"steps": steps}}) for steps in (10, 20))
    assert trial_seconds(short) < trial_seconds(long)


R1_SPEC = Path(__file__).resolve().parents[1] / "search_spaces/psi_vs_static_r1_1p5b.yaml"


def test_the_r1_spec_resolves_on_a_machine_without_the_model(monkeypatch, tmp_path, capsys):
    """--dry-run validates every trial of the paper's GPU setting on CPU; the model directory and the
    data files it cannot see are listed, not required."""
    from study.run import main

    monkeypatch.setenv("LEAD_MODEL_PATH", str(tmp_path / "r1-1.5b"))
    monkeypatch.setenv("LEAD_DATA_DIR", str(tmp_path / "data"))
    assert main([str(R1_SPEC), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "7 trials" in out and "expected wall time: not estimated for GPU trials" in out
    assert f"not found on this machine (a dry run does not require it): {tmp_path / 'r1-1.5b' / 'config.json'}" in out
    assert f"{tmp_path / 'data' / 'math' / 'train.parquet'}" in out
    rows = table_rows(out)
    assert len(rows) == 7 and "\nresources per trial: {CPU: 4, GPU: 1}\n" in out
    psi = rows["psi-s0"]
    assert (psi["engine"], psi["backend"], psi["advantage"], psi["group_filter"]) == ("vllm", "single x1", "decoupled", "none")
    assert main([str(R1_SPEC), "--dry-run", "--show-configs"]) == 0
    configs = capsys.readouterr().out.split("\n--- ")
    psi_config = yaml.safe_load(next(c for c in configs if c.startswith("psi-s0\n")).split("\n", 1)[1])
    assert (psi_config["train"]["prompts_per_step"], psi_config["rollout"]["n"], psi_config["rollout"]["max_new_tokens"],
            psi_config["train"]["lr"], psi_config["train"]["steps"], psi_config["task"]["kind"],
            psi_config["eval"]["n_samples"], psi_config["eval"]["temperature"], psi_config["eval"]["top_p"]) == (
        128, 8, 4096, 2e-06, 462, "math", 3, 0.8, 0.9)
    assert main([str(R1_SPEC)]) == 2
    assert "base.task.train_files: " in capsys.readouterr().err  # a real run needs the files
    # the same study over four GPUs a trial: one bundle, four DeepSpeed workers
    assert main([str(R1_SPEC.with_name("psi_vs_static_r1_1p5b_deepspeed.yaml")), "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert len(rows) == 7 and "\nresources per trial: {CPU: 16, GPU: 4}\n" in out
    assert all((row["engine"], row["backend"]) == ("vllm", "deepspeed x4") for row in rows.values())


def test_unset_environment_variables_are_named(monkeypatch, capsys):
    from study.run import main

    monkeypatch.delenv("LEAD_MODEL_PATH", raising=False)
    monkeypatch.setenv("LEAD_DATA_DIR", "/data")
    assert main([str(R1_SPEC), "--dry-run"]) == 2
    err = own_stderr(capsys).strip()
    assert err.endswith("base.model.path: environment variable LEAD_MODEL_PATH is not set") and "\n" not in err


def test_environment_defaults_expand(tmp_path, monkeypatch):
    from trainers.settings import expand_environment

    monkeypatch.setenv("A", "x")
    data = {"path": "${A}/y", "train_files": ["${B:-z}", 3], "r": {"cache_dir": "${A}${B:-}"}}
    assert expand_environment(data, tmp_path) == {"path": "x/y", "train_files": ["z", 3], "r": {"cache_dir": "x"}}


def test_environment_variables_expand_only_in_path_settings(tmp_path, monkeypatch):
    """A secret in the environment must not reach a prompt, and from there an MLflow param."""
    from trainers.settings import ConfigError, expand_environment

    monkeypatch.setenv("API_KEY", "s3cret")
    with pytest.raises(ConfigError, match=r"base.task.system_prompt: \$\{...\} expands only in path settings") as info:
        expand_environment({"base": {"task": {"system_prompt": "key ${API_KEY}"}}}, tmp_path)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    "text, message",
    [
        (b"name: \xff\xfe\n", "not UTF-8 text"),
        (b"a: &x [*x]\n", "line 1: YAML aliases (*x) are not supported"),
        (b"a: &a [1, 1]\nb: &b [*a, *a]\nc: &c [*b, *b]\nd: [*c, *c, *c]\n", "line 2: YAML aliases (*a)"),  # a bomb's start
        (b"name: [unclosed\n", "not valid YAML"),
    ],
)
def test_unreadable_yaml_is_one_line(tmp_path, text, message):
    path = tmp_path / "spec.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert message in str(info.value) and len(info.value.lines) == 1


def test_every_problem_of_a_spec_is_reported(tmp_path):
    data = minimal(base={"train": {"lr": -1, "steps": 0}}, search={"metric": "eval/aess"})
    with pytest.raises(ConfigError) as info:
        load_spec(write(tmp_path, data))
    text = str(info.value)
    assert len(info.value.lines) == 3, text
    assert "base.train.lr: Input should be greater than 0" in text and "base.train.steps:" in text
    assert "search.metric: 'eval/aess' is not a reported metric (did you mean 'eval/aes'?)" in text


def test_search_space_bounds_are_checked_at_both_ends(tmp_path):
    space = {"lead.weighting.beta": {"uniform": [0.5, 1.5]}}
    with pytest.raises(ConfigError) as info:
        load_spec(write(tmp_path, minimal(search={"mode": "optuna", "space": space})))
    assert info.value.lines == [f"{tmp_path / 'spec.yaml'}: search.space.lead.weighting.beta = 1.5: "
                                "lead.weighting.beta: Input should be less than or equal to 1"]
    space = {"train.lr": {"loguniform": [0.0, 1e-3]}}
    with pytest.raises(ConfigError, match=r"search.space.train.lr.loguniform.loguniform: needs bounds above 0"):
        load_spec(write(tmp_path, minimal(search={"mode": "optuna", "space": space})))


def test_a_population_plans_its_members_beside_the_other_arms_and_moves_only_them(tmp_path):
    from study.run import study_phases

    def population_scheduler(spec):
        return spec.search.scheduler(plan_trials(spec))

    spec = load_spec(write(tmp_path, pbt()))
    plans = plan_trials(spec)
    phases = study_phases(spec, plans)
    assert [(p.name, p.search.mode, [t.name for t in p.plans]) for p in phases] == [
        ("grid", "grid", ["psi-s0"]), ("population", "pbt", ["pbt-wc0.3-s0", "pbt-wc0.7-s0"])]
    from study.storage import open_storage

    output = open_storage(tmp_path)
    assert phases[1].folder(output).local == tmp_path / "population" and phases[0].folder(output).local == tmp_path
    scheduler = population_scheduler(spec)
    assert type(scheduler).__name__ == "ResumablePopulationBasedTraining" and scheduler._synch
    assert scheduler._perturbation_interval == 3 and scheduler._quantile_fraction == 0.25
    # a perturbed value stays inside the space
    assert scheduler._custom_explore_fn({"search": {"lead.weighting.w_corr": 1.4}})["search"] == {"lead.weighting.w_corr": 1.0}
    pb2 = population_scheduler(load_spec(write(tmp_path, pbt("pb2", {"bounds": {"lead.weighting.w_corr": [0.1, 1.0]}}))))
    assert type(pb2).__name__ == "ResumablePB2" and pb2._hyperparam_bounds == {"search": {"lead.weighting.w_corr": [0.1, 1.0]}}
    seeded = load_spec(write(tmp_path, pbt(arms=[{"name": "psi", "weighting": {"kind": "psi"}},
                                               {"name": "pbt", "seeds": [3, 4], "weighting": {"kind": "static", "w_corr": 0.5}}])))
    assert [p.name for p in plan_trials(seeded)] == ["psi-s0", "pbt-s3", "pbt-s4"]


def test_the_psi_against_pbt_study_is_a_population_of_four_beside_three_psi_seeds():
    spec = load_spec(ROOT / "search_spaces/psi_vs_pbt.yaml")
    plans = plan_trials(spec)
    assert sorted(p.name for p in plans if p.arm == "psi") == ["psi-s0", "psi-s1", "psi-s2"]
    members = [p for p in plans if p.arm == "pbt"]
    assert [p.config["lead"]["weighting"]["w_corr"] for p in members] == [0.2, 0.4, 0.6, 0.8]
    assert spec.search.mode == "pbt" and spec.search.population.keys == ("lead.weighting.w_corr",)
    assert all(p.config["train"]["steps"] == 30 for p in plans)


EXPECTED_MOTION = {"psi": "adaptive", "static": "fixed", "combined": "fixed", "schedule": "scheduled", "accuracy_gate": "adaptive"}


@pytest.mark.parametrize("spec", [*SPECS, ROOT / "examples/plugin_study.yaml"], ids=lambda p: p.stem)
def test_the_method_tags_label_every_arm_of_every_shipped_spec(spec, monkeypatch, tmp_path, fresh_registries):
    """What the tracker tags each trial with, against what the spec's YAML says of its arm: the
    length reward, the weighting (``combined`` is static weights), how the weight moves (a
    population member's is searched), the advantage estimator, the whitening, the group filter, the
    loss aggregation and the policy loss."""
    from trainers import contract as M
    from trainers.settings import files_unchecked

    monkeypatch.setenv("LEAD_MODEL_PATH", str(tmp_path / "model"))
    monkeypatch.setenv("LEAD_DATA_DIR", str(tmp_path / "data"))
    raw = yaml.safe_load(spec.read_text())
    arms = {arm["name"]: arm for arm in raw["arms"]}
    population = (raw.get("search") or {}).get("population", {}).get("arm")
    with files_unchecked():
        plans = plan_trials(load_spec(spec))
    for plan in plans:
        arm = arms[plan.arm]
        kind = arm["weighting"]["kind"]
        expected = {
            "reward": arm.get("reward", {}).get("kind", "lead"),
            "weighting": "static" if kind == "combined" else kind,
            "weight_motion": "searched" if plan.arm == population else EXPECTED_MOTION[kind],
            "advantage": "combined" if kind == "combined" else arm.get("advantage", {}).get("kind", "decoupled"),
            "whiten": str(arm.get("advantage", {}).get("whiten", True)).lower(),
            "group_filter": arm.get("overrides", {}).get("rollout", {}).get("group_filter", {}).get("kind", "none"),
            "loss_aggregation": arm.get("overrides", {}).get("train", {}).get("loss_aggregation", "token_mean"),
            "policy_loss": arm.get("overrides", {}).get("train", {}).get("policy_loss", "ppo_clip"),
        }
        assert M.method_tags(plan.config, plan.motion) == expected, plan.name


def test_the_arm_under_test_is_named_or_psi_or_the_only_arm():
    from study.spec import StudySpec

    two = [{"name": "a", "weighting": {"kind": "psi"}}, {"name": "psi", "weighting": {"kind": "static"}}]
    assert StudySpec.model_validate(minimal()).focus_arm == "psi"
    assert StudySpec.model_validate(minimal(arms=two)).focus_arm == "psi"  # by name, whatever its weighting
    assert StudySpec.model_validate(minimal(arms=two, focus="a")).focus_arm == "a"
    assert StudySpec.model_validate(minimal(arms=two[:1])).focus_arm == "a"


SHUFFLED_MODE = '''
from typing import Literal

from pydantic import Field

from study.search_modes import SearchMode, TuneSetup, register_search_mode


@register_search_mode("shuffled")
class Shuffled(SearchMode):
    """Every planned trial once, in an order drawn with ``order_seed``."""

    mode: Literal["shuffled"] = "shuffled"
    order_seed: int = Field(0, ge=0)

    def setup(self, spec, plans) -> TuneSetup:
        import random

        from ray import tune

        names = [p.name for p in plans]
        random.Random(self.order_seed).shuffle(names)
        return TuneSetup({"trial": tune.grid_search(names)})
'''


def test_a_search_mode_with_settings_of_its_own_is_one_class_in_a_plugin_file(tmp_path, fresh_registries):
    """A user's mode declares its settings as fields: they validate beside ``mode``, are refused
    under another mode with a line naming this one, and reach its Tuner setup; nothing in
    ``study/`` changes."""
    from study.run import study_phases

    (tmp_path / "shuffled.py").write_text(SHUFFLED_MODE)
    arms = [{"name": "psi", "weighting": {"kind": "psi"}}, {"name": "static", "weighting": {"kind": "static", "w_corr": [0.3, 0.7]}}]
    spec = load_spec(write(tmp_path, minimal(plugins=["shuffled.py"], arms=arms, search={"mode": "shuffled", "order_seed": 3})))
    assert spec.search.mode == "shuffled" and spec.search.order_seed == 3
    phases = study_phases(spec, plan_trials(spec))
    assert [(p.name, p.search.mode, len(p.plans)) for p in phases] == [("grid", "shuffled", 3)]
    order = phases[0].search.setup(spec, phases[0].plans).param_space["trial"]["grid_search"]
    assert sorted(order) == ["psi-s0", "static-wc0.3-s0", "static-wc0.7-s0"] and order != sorted(order)
    for search, message in (({"mode": "grid", "order_seed": 3}, "search.order_seed: only used with search mode shuffled (mode is grid)"),
                            ({"mode": "shuffled", "order_seed": -1}, "search.order_seed: Input should be greater than or equal to 0")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_spec(write(tmp_path, minimal(plugins=["shuffled.py"], search=search)))
