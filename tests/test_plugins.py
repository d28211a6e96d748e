"""Plugins: a user's own length reward and weighting from a file outside the package, named in a
spec or a trainer config; a plugin that cannot be used is one line naming it (exit 2)."""

import math
from pathlib import Path

import pytest
import torch

from study.plan import plan_trials
from study.spec import load_spec
from tests.conftest import run_main
from trainers.config import TrainConfig, load_train_config
from trainers.method.lead import lead_step
from trainers.settings import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples/plugins/my_method.py"
pytestmark = pytest.mark.usefixtures("fresh_registries")


def test_a_plugin_s_reward_and_weighting_are_selectable_from_a_config():
    config = TrainConfig.of({
        "plugins": [str(EXAMPLE)],
        "lead": {"length_reward": "budget_linear", "length_params": {"budget": 50},
                 "weighting": {"kind": "accuracy_gate", "threshold": 0.5, "high": 0.8, "low": 0.3}},
    })
    assert config.model_dump()["plugins"] == [str(EXAMPLE)]
    lengths, groups = torch.tensor([25.0, 100.0, 10.0, 40.0]), torch.tensor([0, 0, 1, 1])
    low_accuracy = lead_step(lengths, torch.tensor([1.0, 0.0, 0.0, 0.0]), groups, config=config.lead)
    assert low_accuracy.r_eff.tolist() == pytest.approx([-0.5, -1.0, -0.2, -0.8])
    assert (low_accuracy.w_corr, low_accuracy.metrics["gate_open"]) == (pytest.approx(0.8), 0.0)
    high_accuracy = lead_step(lengths, torch.tensor([1.0, 1.0, 1.0, 0.0]), groups, config=config.lead)
    assert (high_accuracy.w_corr, high_accuracy.metrics["gate_open"]) == (pytest.approx(0.3), 1.0)
    # imported once: validating again registers nothing twice
    assert TrainConfig.of(config.model_dump()) == config


def test_plugins_are_imported_before_validation_never_by_a_validator():
    """``model_validate`` has no side effect: a config naming a plugin's weighting fails until the
    plugin is imported; ``TrainConfig.of`` (and every YAML loader) imports it first."""
    from pydantic import ValidationError

    settings = {"plugins": [str(EXAMPLE)], "lead": {"weighting": {"kind": "accuracy_controller"}}}
    with pytest.raises(ValidationError, match="unknown weighting 'accuracy_controller'"):
        TrainConfig.model_validate(settings)
    assert TrainConfig.of(settings).lead.weighting.kind == "accuracy_controller"


def test_without_plugins_a_config_has_no_plugins_key():
    assert "plugins" not in TrainConfig().model_dump()


def test_a_trainer_config_names_a_plugin_relative_to_itself(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/plugin.py").write_text(EXAMPLE.read_text())
    (tmp_path / "run.yaml").write_text("plugins: [mine/plugin.py]\nlead: {length_reward: budget_linear}\n")
    config = load_train_config(tmp_path / "run.yaml")
    assert config.plugins == [str((tmp_path / "mine/plugin.py").resolve())]
    assert config.lead.reward_params == {"budget": 100.0}


def test_a_spec_s_plugins_reach_every_trial_and_name_its_methods(tmp_path):
    spec = load_spec(ROOT / "examples/plugin_study.yaml")
    plans = {p.arm: p for p in plan_trials(spec)}
    assert all(p.config["plugins"] == [str(EXAMPLE)] for p in plans.values())
    gate = plans["gate"].config["lead"]
    assert (gate["length_reward"], gate["weighting"]["kind"], plans["gate"].motion) == ("budget_linear", "accuracy_gate", "adaptive")


@pytest.mark.parametrize("plugin, message", [
    ("missing.py", "plugins[0]: {dir}/missing.py: no such file"),
    ("broken.py", "plugins[0]: {dir}/broken.py: cannot import: ZeroDivisionError: division by zero"),
    ("taken.py", "plugins[0]: {dir}/taken.py: cannot import: RegistryError: a length reward named 'kimi' is already registered"),
    ("no_such_module_anywhere", "plugins[0]: no_such_module_anywhere: cannot import: ModuleNotFoundError"),
])
def test_a_plugin_that_cannot_be_used_is_one_line_and_exit_2(tmp_path, plugin, message):
    from study.run import main

    (tmp_path / "broken.py").write_text("1 / 0\n")
    (tmp_path / "taken.py").write_text("from trainers.method.rewards import register_length_reward\n\n"
                                       "register_length_reward('kimi', low=0, high=1)(lambda batch: batch.lengths)\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: s\nplugins: [{plugin}]\narms: [{{name: a, weighting: {{kind: psi}}}}]\n")
    with pytest.raises(ConfigError) as info:
        load_spec(spec)
    assert str(info.value).startswith(f"{spec}: " + message.format(dir=tmp_path)) and "\n" not in str(info.value)
    result = run_main(main, spec, "--dry-run")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message.format(dir=tmp_path) in result.stderr


def test_every_unusable_plugin_is_named():
    from trainers.plugins import PluginError, load_plugins

    with pytest.raises(PluginError, match=r"plugins\[0\]: /nope/a.py: no such file; plugins\[1\]: /nope/b.py: no such file"):
        load_plugins(["/nope/a.py", "/nope/b.py"])


def test_a_weighting_that_does_not_fit_is_refused_at_registration():
    from typing import Literal

    from trainers.registry import RegistryError
    from trainers.method.weightings import Weighting, register_weighting

    with pytest.raises(RegistryError, match="declare kind"):
        register_weighting("nameless")(type("Nameless", (Weighting,), {}))
    with pytest.raises(RegistryError, match="set motion"):
        register_weighting("still")(type("Still", (Weighting,), {"__annotations__": {"kind": Literal["still"]}, "kind": "still"}))


def test_a_registered_engine_with_its_own_settings_is_selectable_and_trains(cache_dir, tiny_model_dir, tmp_path):
    """An engine registered outside the package (here: the transformers engine, counting its calls)
    is chosen by name from a config, gets its validated options, and runs a real training step."""
    from trainers.loop.grpo import train
    from trainers.rollout import register_engine
    from trainers.rollout.hf import HFRolloutEngine
    from trainers.settings import Strict

    from tests.conftest import tiny_config

    calls = []

    @register_engine("counting")
    class Counting(HFRolloutEngine):
        class Settings(Strict):
            label: str

        def __init__(self, model, tokenizer, spec):
            super().__init__(model, tokenizer, spec)
            self.label = self.Settings.model_validate(spec.options).label

        def generate(self, *args, **kwargs):
            calls.append(self.label)
            return super().generate(*args, **kwargs)

    config = tiny_config(cache_dir, rollout={"engine": "counting", "engine_options": {"label": "mine"}},
                         train={"steps": 1}, eval={"every": 5})
    assert config.model_dump()["rollout"]["engine_options"] == {"label": "mine"}
    train(config, tmp_path / "run", log=lambda _: None)
    assert calls and set(calls) == {"mine"}  # the base evaluation, one step's rollouts, the final evaluation
    from pydantic import ValidationError

    from trainers.settings import format_error

    with pytest.raises(ValidationError) as info:
        tiny_config(cache_dir, rollout={"engine": "counting", "engine_options": {"label": "x", "colour": 1}})
    assert format_error(info.value) == "rollout: engine_options.colour: unknown key"
    with pytest.raises(ValidationError) as info:
        tiny_config(cache_dir, train={"backend_options": {"fused": True}})
    assert format_error(info.value) == "train: backend_options: the training backend 'single' takes no options"


def test_a_users_group_filter_and_loss_aggregation_are_one_class_and_one_function(cache_dir, tiny_model_dir, tmp_path):
    """A group filter (here: keep each prompt's longest response) and a loss aggregation (a sum over
    the sequences) from a plugin file, named in a trainer config, train a real step and report."""
    from trainers import contract as M
    from trainers.loop.grpo import train

    from tests.conftest import tiny_config

    (tmp_path / "mine.py").write_text(
        "from typing import Literal\n"
        "import torch\n"
        "from trainers.actor.aggregation import register_loss_aggregation\n"
        "from trainers.loop.group_filters import GroupFilter, register_group_filter\n\n"
        "@register_group_filter('longest')\n"
        "class Longest(GroupFilter):\n"
        "    kind: Literal['longest'] = 'longest'\n\n"
        "    def select(self, first, draw, groups_wanted):\n"
        "        rows = [max((i for i in range(first.lengths.numel()) if int(first.group[i]) == g),\n"
        "                    key=lambda i: int(first.lengths[i])) for g in range(first.num_groups)]\n"
        "        return first.rows(torch.tensor(sorted(rows)))\n\n"
        "@register_loss_aggregation('sequence_sum')\n"
        "def sequence_sum(tokens, rows, budget):\n"
        "    return 1.0\n"
    )
    config = tiny_config(cache_dir, plugins=[str(tmp_path / "mine.py")], rollout={"group_filter": {"kind": "longest"}},
                         train={"steps": 1, "loss_aggregation": "sequence_sum"}, eval={"every": 5})
    reports = []
    train(config, tmp_path / "run", report=reports.append, log=lambda _: None)
    metrics = reports[0].metrics
    assert (metrics[M.FILTER_KEPT_GROUPS], metrics[M.FILTER_KEPT_ROLLOUTS], metrics[M.FILTER_ROUNDS]) == (4.0, 4.0, 1.0)
    assert metrics[M.PERF_ROLLOUT_TOKENS] > 0 and math.isfinite(metrics[M.LOSS_POLICY])
    tags = M.method_tags(config.model_dump(), M.ADAPTIVE)
    assert (tags["group_filter"], tags["loss_aggregation"]) == ("longest", "sequence_sum")
