"""study.shipping without Ray: what the driver ships through a study's storage and what a node's
trial takes from there into its own cache."""

from pathlib import Path

from study.shipping import SHIPPED, fetch, ship
from study.storage import open_storage
from tests.conftest import tiny_config
from trainers.io.fingerprint import weights_digest
from trainers.loop.base_model import base_evaluation_key, prepare
from trainers.loop.evaluation import evaluation_folder
from trainers.runtime.process import torch_threads
from trainers.settings import deep_merge


def prepared(cache_dir: Path, tmp_path: Path):
    plugin = tmp_path / "mine.py"
    plugin.write_text("VALUE = 1\n")
    config = tiny_config(cache_dir, plugins=[str(plugin)])
    with torch_threads(1):
        model_path, _ = prepare(config, log=lambda _: None)
    return config, model_path


def test_a_node_takes_the_model_evaluation_and_plugins_from_storage_into_its_own_cache_once(
    cache_dir, tmp_path, monkeypatch
):
    config, model_path = prepared(cache_dir, tmp_path)
    study = open_storage(tmp_path / "bucket").child("study")
    logged = []
    with torch_threads(1):
        shipped = ship(study, model_path, config, logged.append)
    digest = weights_digest(model_path, tmp_path / "digests")
    assert shipped["model"] == digest and study.exists(f"models/{digest}/.complete") and len(logged) == 1
    with torch_threads(1):
        assert ship(study, model_path, config, logged.append) == shipped and len(logged) == 1  # uploaded once

    node_cache = tmp_path / "node-cache"
    monkeypatch.setenv("LEAD_STUDY_CACHE", str(node_cache))
    fetched = fetch(shipped, config.model_dump(mode="json"), logged.append)
    model = node_cache / SHIPPED / digest
    assert fetched["model"] == {**fetched["model"], "path": str(model), "cache_dir": str(node_cache)}
    assert weights_digest(model, tmp_path / "digests") == digest and not (model / ".complete").exists()
    assert Path(fetched["plugins"][0]).read_text() == "VALUE = 1\n" and Path(fetched["plugins"][0]).parent == node_cache / "plugins"
    assert len(logged) == 2 and fetch(shipped, config.model_dump(mode="json"), logged.append) == fetched
    assert len(logged) == 2  # downloaded once per node
    # the node finds the driver's evaluation under its own key: same weights, another path
    node_config = config.model_validate(fetched)
    with torch_threads(1):
        node_folder = evaluation_folder(*base_evaluation_key(model, node_config))
        driver_folder = evaluation_folder(*base_evaluation_key(model_path, config))
    assert node_folder.name == driver_folder.name and node_folder.parent == node_cache / "evaluations"
    assert (node_folder / "result.json").read_text() == (driver_folder / "result.json").read_text()


def test_a_model_on_every_node_is_not_shipped(cache_dir, tmp_path, monkeypatch):
    """``ship_model: false``: the evaluation and plugins still travel, the model path stays as it is."""
    config, model_path = prepared(cache_dir, tmp_path)
    study = open_storage(tmp_path / "bucket").child("study")
    with torch_threads(1):
        shipped = ship(study, model_path, config, print, model_too=False)
    assert shipped["model"] is None and not study.exists("models")
    monkeypatch.setenv("LEAD_STUDY_CACHE", str(tmp_path / "node-cache"))
    fetched = fetch(shipped, deep_merge(config.model_dump(mode="json"), {"model": {"path": str(model_path)}}), print)
    assert fetched["model"]["path"] == str(model_path) and (tmp_path / "node-cache/evaluations").is_dir()


def test_a_model_path_in_object_storage_is_downloaded_once_into_the_cache(s3_env, tiny_model_dir, tmp_path):
    """``model.path: s3://...``: kept as a URI by the config, fetched once into the cache by the
    run (the same weights), and one line for a URI that holds no model."""
    import boto3
    import pytest

    from trainers.loop.base_model import base_model_path

    boto3.client("s3").create_bucket(Bucket="models")
    open_storage("s3://models").child("tiny").upload(tiny_model_dir)
    config = tiny_config(tmp_path / "cache", model={"path": "s3://models/tiny"})
    assert config.model.path == "s3://models/tiny"
    logged = []
    local = base_model_path(config, log=logged.append)
    assert local.parent == tmp_path / "cache/remote" and len(logged) == 1
    assert weights_digest(local, tmp_path / "digests") == weights_digest(tiny_model_dir, tmp_path / "digests")
    assert base_model_path(config, log=logged.append) == local and len(logged) == 1  # downloaded once
    with pytest.raises(ValueError, match=r"^model.path: s3://models/none is not a model directory \(no config.json\)$"):
        base_model_path(tiny_config(tmp_path / "cache", model={"path": "s3://models/none"}), log=logged.append)
