"""The CPU kernel level is pinned, so one spec gives one base model on any x86-64 machine: a build
at the pinned level equals one with the level forced by hand, whatever this machine would pick, and
the smoke base model's weights are the ones docs/reproducibility.md publishes."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from analysis.compute import differing_versions
from tests.conftest import run_main
from trainers.io.fingerprint import versions
from trainers.models.tiny import TinyModelConfig, ensure_base_model, settings_hash
from trainers.runtime import kernels
from trainers.tasks.synthetic import SyntheticTaskConfig

ROOT = Path(__file__).resolve().parents[1]
# The smoke base model (`python -m trainers.train trainers/configs/synthetic_psi.yaml --smoke-test`) built
# at the pinned level: the sha256 of its model.safetensors. docs/reproducibility.md states it.
PUBLISHED_SMOKE_SHA256 = "5dc84e42c497734046350047d0b59871439b4bbab23e14230b19991ca5b294e6"
BUILD = """
import hashlib, json, sys
from pathlib import Path
import trainers
from trainers.config import load_train_config
from trainers.loop.base_model import base_model_path
from trainers.runtime import kernels
from trainers.settings import deep_merge
config = load_train_config(Path("trainers/configs/synthetic_psi.yaml")).smoke()
config = config.model_validate(deep_merge(config.model_dump(), {"model": {"cache_dir": sys.argv[1]}}))
folder = base_model_path(config, log=lambda _: None)
import torch
print(json.dumps({"sha256": hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest(),
                  "level": kernels.level(), "torch": torch.backends.cpu.get_cpu_capability(), "folder": str(folder)}))
"""


def build(cache: Path, env: dict[str, str]) -> subprocess.Popen:
    """The smoke base model built in a fresh process with ``env`` (the pin's variables removed first)."""
    clean = {k: v for k, v in os.environ.items() if k not in kernels.PINNED_ENVIRONMENT and k != kernels.SETTING}
    return subprocess.Popen([sys.executable, "-c", BUILD, str(cache)], cwd=ROOT, env={**clean, **env},
                            stdout=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen) -> dict:
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_pinned_build_equals_one_forced_by_hand_and_the_published_digest(tmp_path):
    """Three builds side by side (one thread each): the pin as it comes, the pin off with the level
    forced by hand, and the machine's own level. The first two are bit-identical and equal the
    published digest; the third differs where the machine's level is above AVX2."""
    started = [build(tmp_path / "pinned", {}),
               build(tmp_path / "by-hand", {kernels.SETTING: kernels.NATIVE, **kernels.PINNED_ENVIRONMENT}),
               build(tmp_path / "native", {kernels.SETTING: kernels.NATIVE})]
    pinned, by_hand, native = (finished(process) for process in started)
    assert pinned["level"] == "AVX2 (pinned)" and pinned["torch"] == by_hand["torch"] == "AVX2"
    assert by_hand["level"] == "AVX2 (not pinned)"
    assert Path(pinned["folder"]).name != Path(by_hand["folder"]).name  # never one cache entry
    assert pinned["sha256"] == by_hand["sha256"]
    assert pinned["sha256"] == PUBLISHED_SMOKE_SHA256, "this machine does not reproduce the published smoke base model"
    assert PUBLISHED_SMOKE_SHA256 in (ROOT / "docs/reproducibility.md").read_text()
    if native["torch"] == "AVX2":
        pytest.skip("this machine's own level is AVX2: nothing above the pin to differ from it")
    assert native["sha256"] != pinned["sha256"]


def test_this_process_runs_at_the_pinned_level_and_records_it():
    assert torch.backends.cpu.get_cpu_capability() == "AVX2"
    assert kernels.level() == "AVX2 (pinned)" and versions()["cpu-kernels"] == "AVX2 (pinned)"
    assert {k: os.environ[k] for k in kernels.PINNED_ENVIRONMENT} == kernels.PINNED_ENVIRONMENT
    assert kernels.child_environment() == {kernels.SETTING: "avx2", **kernels.PINNED_ENVIRONMENT}


def test_the_level_is_in_the_base_model_key(monkeypatch):
    task, model = SyntheticTaskConfig(), TinyModelConfig()
    pinned = settings_hash(task, model)
    monkeypatch.setattr(kernels, "level", lambda: "AVX512 (not pinned)")
    assert settings_hash(task, model) != pinned


def test_the_pin_turned_off_is_recorded_as_such():
    code = "import trainers, torch, os; from trainers.runtime import kernels; print(kernels.level(), os.environ.get('MKL_CBWR'))"
    env = {k: v for k, v in os.environ.items() if k not in kernels.PINNED_ENVIRONMENT}
    out = subprocess.run([sys.executable, "-c", code], env={**env, kernels.SETTING: "native"}, cwd=ROOT,
                         capture_output=True, text=True, check=True)
    level, _, cbwr = out.stdout.strip().rpartition(" ")
    assert level.endswith(" (not pinned)") and level.split()[0] in ("DEFAULT", "AVX2", "AVX512") and cbwr == "None"


def test_a_cpu_without_avx2_is_one_line_and_exit_2(monkeypatch, tmp_path):
    from trainers.train import main

    monkeypatch.setattr(kernels, "cpu_flags", lambda: {"sse4_2", "avx"})
    result = run_main(main, ROOT / "trainers/configs/synthetic_psi.yaml", "--output-dir", tmp_path / "run")
    assert result.returncode == 2 and not (tmp_path / "run").exists()
    assert result.stderr.strip().splitlines() == [
        "error: LEAD_STUDY_CPU_LEVEL: the CPU kernel level avx2 is pinned, but this CPU lacks avx2, fma; set "
        "LEAD_STUDY_CPU_LEVEL=native to run at its own level (its numbers will differ from pinned machines')"]


def test_a_wrong_setting_is_one_line_and_exit_2(monkeypatch, tmp_path):
    from study.run import main

    monkeypatch.setenv(kernels.SETTING, "avx512")
    result = run_main(main, ROOT / "search_spaces/psi_vs_static.yaml", "--output-dir", tmp_path / "runs",
                      "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db")
    assert result.returncode == 2 and not (tmp_path / "runs").exists()
    assert result.stderr.strip().splitlines() == [
        "error: LEAD_STUDY_CPU_LEVEL='avx512': expected 'avx2' (the default) or 'native'"]


def test_a_cached_base_model_built_at_another_level_is_refused(tiny_model_dir, cache_dir, tmp_path):
    """Its key keeps levels apart, so only a copied folder or an edited record gets here: one line
    naming the folder, exit 2, and nothing built or trained into it."""
    from tests.conftest import TINY
    from trainers.train import main

    info_file = tiny_model_dir / "build_info.json"
    original = info_file.read_text()
    info = json.loads(original)
    info["versions"]["cpu-kernels"] = "AVX512 (not pinned)"
    info_file.write_text(json.dumps(info))
    try:
        with pytest.raises(kernels.KernelLevelError, match="built at CPU kernel level AVX512"):
            ensure_base_model(SyntheticTaskConfig(max_terms=5, eval_size=24), TinyModelConfig(**TINY), cache_dir)
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump({"model": {"cache_dir": str(cache_dir), "tiny": TINY},
                                          "task": {"max_terms": 5, "eval_size": 24}}))
        before = sorted(p.name for p in cache_dir.iterdir())
        result = run_main(main, config, "--output-dir", tmp_path / "run")
        assert result.returncode == 2
        assert re.findall(r"error: .*", result.stderr) == [  # after the progress bar's start
            f"error: {tiny_model_dir}: this cached base model was built at CPU kernel level AVX512 (not pinned), "
            "but this run computes at AVX2 (pinned): delete the folder to build it anew"]
        assert sorted(p.name for p in cache_dir.iterdir()) == before
    finally:
        info_file.write_text(original)


def test_the_report_names_versions_and_levels_that_differ():
    import pyarrow as pa

    runs = pa.table({"trial": ["a", "b", "c"], "version.torch": ["2.13.0", "2.13.0", "2.13.0"],
                     "version.cpu-kernels": ["AVX2 (pinned)", "AVX2 (pinned)", "AVX512 (not pinned)"]})
    assert differing_versions(runs) == {"cpu-kernels": {"AVX2 (pinned)": 2, "AVX512 (not pinned)": 1}}
    assert differing_versions(runs.drop_columns(["version.cpu-kernels"])) == {}
