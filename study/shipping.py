"""What a trial needs from the driver's disk, shipped through the study's object storage, so that a
trial on a node that shares no disk with the driver never opens the driver's folders.

When ``--output-dir`` is object storage, the driver uploads, once per study (``ship``):

- the base model folder it built or was given, to ``STUDY/models/<weights digest>/`` (unless the
  spec says ``ship_model: false``: ``model.path`` is then at the same path on every node);
- the base model's cached evaluation, to ``STUDY/evaluations/<its cache folder>/``;
- each plugin file, to ``STUDY/plugins/<digest>-<name>.py``;

and each trial downloads them (``fetch``) into its node's own cache (``LEAD_STUDY_CACHE``, else
``~/.cache/lead-study``): once per node, under a lock, through a temporary folder and a rename,
so trials starting together on one node download once and never see half a model. The
evaluation cache is keyed on the weights' content, so the downloaded evaluation is found and the
trial does not evaluate the base model again. With a local ``--output-dir`` nothing is shipped:
the cluster's nodes must then share that folder and the model cache at the same paths.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Callable

from study.storage import Storage
from trainers.config import TrainConfig
from trainers.io.outputs import write_atomic
from trainers.io.remote import COMPLETE, download_once
from trainers.loop.base_model import base_evaluation_key
from trainers.loop.evaluation import evaluation_folder
from trainers.models.tiny import default_cache_dir

MODELS, EVALUATIONS, PLUGINS = "models", "evaluations", "plugins"  # folders under the study's storage
SHIPPED = "shipped"  # the downloaded models' folder in a node's cache


def upload_once(folder: Path, target: Storage) -> float | None:
    """Upload ``folder`` to ``target`` unless a complete copy is there; the seconds it took (None: none needed)."""
    if target.exists(COMPLETE):
        return None
    start = time.perf_counter()
    target.upload(folder)
    target.write_text(COMPLETE, "")
    return time.perf_counter() - start


def ship(study: Storage, model_path: Path, config: TrainConfig, log: Callable[[str], None],
         model_too: bool = True) -> dict[str, Any]:
    """Upload the base model (unless ``model_too`` is false: it is at ``model_path`` on every
    node), its evaluation (already cached: call after ``prepare``, on the trials' threads) and the
    plugins; returns what a trial passes to ``fetch``."""
    evaluations, key = base_evaluation_key(model_path, config)
    digest = key["weights"]  # the weights' content, as the evaluation is keyed
    model = study.child(MODELS, digest)
    seconds = upload_once(model_path, model) if model_too else None
    if seconds is not None:
        size = sum(p.stat().st_size for p in model_path.iterdir() if p.is_file()) / 2**20
        log(f"base model {model_path} ({size:.1f} MiB) uploaded to {model} in {seconds:.2f} s")
    evaluation = evaluation_folder(evaluations, key)
    upload_once(evaluation, study.child(EVALUATIONS, evaluation.name))
    plugins = []
    for plugin in config.plugins:
        if plugin.endswith(".py"):
            text = Path(plugin).read_text()
            name = f"{hashlib.sha256(text.encode()).hexdigest()[:16]}-{Path(plugin).name}"
            study.child(PLUGINS).write_text(name, text)
            plugins.append(name)
        else:
            plugins.append(plugin)  # a module name: installed on every node
    return {"storage": study, "model": digest if model_too else None, "evaluation": evaluation.name,
            "plugins": plugins}


def download(source: Storage, target: Path) -> float | None:
    return download_once(source.filesystem, source.path, target)


def fetch(shipped: dict[str, Any], config: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """A trial's config with the shipped base model, evaluation and plugins in this node's cache."""
    study: Storage = shipped["storage"]
    cache_dir = default_cache_dir()
    if shipped["model"] is None:  # not shipped: a URI, or at the same path on every node
        model = config["model"]["path"]
    else:
        model = cache_dir / SHIPPED / shipped["model"]
        seconds = download(study.child(MODELS, shipped["model"]), model)
        if seconds is not None:
            log(f"base model downloaded from {study.child(MODELS, shipped['model'])} to {model} in {seconds:.2f} s")
    download(study.child(EVALUATIONS, shipped["evaluation"]), cache_dir / "evaluations" / shipped["evaluation"])
    plugins = []
    for name in shipped["plugins"]:
        if name.endswith(".py"):
            local = cache_dir / PLUGINS / name
            if not local.is_file():
                write_atomic(local, study.child(PLUGINS).read_text(name))
            name = str(local)
        plugins.append(name)
    return {**config, "model": {**config["model"], "path": str(model), "cache_dir": str(cache_dir)}, "plugins": plugins}
