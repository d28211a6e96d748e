"""Caches are keyed by what produced them: a base model or an evaluation made by other code or
another library version is built anew (it used to be reused silently); runs record the versions."""

import shutil
from pathlib import Path

import torch

from trainers.io import fingerprint
from trainers.models.tiny import TinyModelConfig, settings_hash
from trainers.tasks.synthetic import SyntheticTaskConfig

ROOT = Path(__file__).resolve().parents[1]


def test_the_base_model_key_changes_with_the_sft_code_and_with_transformers(tmp_path, monkeypatch):
    task, model = SyntheticTaskConfig(), TinyModelConfig()
    key = settings_hash(task, model)
    assert settings_hash(task, model) == key  # stable

    copy = tmp_path / "checkout"
    shutil.copytree(ROOT / "trainers", copy / "trainers")
    monkeypatch.setattr(fingerprint, "PACKAGE_ROOT", copy)
    assert settings_hash(task, model) == key  # the same code elsewhere: the same key
    tiny = copy / "trainers/models/tiny.py"
    tiny.write_text(tiny.read_text().replace("sft_lr", "sft_lr ", 1))  # any edit of the SFT code
    assert settings_hash(task, model) != key
    monkeypatch.setattr(fingerprint, "PACKAGE_ROOT", ROOT)

    real = fingerprint.library_version
    monkeypatch.setattr(fingerprint, "library_version", lambda name: "9.9.9" if name == "transformers" else real(name))
    assert settings_hash(task, model) != key


def test_the_evaluation_fingerprint_covers_rollout_and_grading_code():
    parts = fingerprint.EVALUATION_CODE
    assert {"trainers/rollout", "trainers/tasks", "trainers/models"} <= set(parts)  # tasks/ holds grading.py
    assert fingerprint.fingerprint(parts) == fingerprint.fingerprint(parts)
    assert fingerprint.fingerprint(parts) != fingerprint.fingerprint(parts, libraries=("math-verify",))


def test_versions_name_the_project_and_its_libraries():
    found = fingerprint.versions()
    assert found["torch"] == torch.__version__
    assert found["lead-study"].startswith("0.1.0")
    assert set(fingerprint.LIBRARIES) <= set(found)
