"""Shared fixtures: a tiny base model built once per session in a private cache."""

import contextlib
import io
import os
import re
import subprocess
from pathlib import Path

import pytest

from trainers.config import TrainConfig

# Tests that use these need a Ray cluster, a server (S3, MLflow), a vLLM engine or a whole study:
# marked ``slow``, left out by ``make test-fast`` (``pytest -m "not slow"``); a test may mark itself too.
SLOW_FIXTURES = frozenset({"ray_cluster", "s3_server", "smoke_study", "partial_study", "engines"})


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


# A few SFT steps: enough for a real, loadable model that emits EOS; far from a good one.
TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "sft_steps": 60}


def run_main(main, *args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """A CLI's ``main(argv)`` run in this process (no interpreter start-up per case): its exit code,
    stdout and stderr, as ``subprocess.run`` would give them."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(cwd or os.getcwd()):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


# A line Ray's log monitor streams to the driver from one of its processes: "(raylet) ...",
# "(pid=12) ...", "(TrainWorker pid=12, ip=10.0.0.2) ...", coloured or not.
RAY_STREAMED_LINE = re.compile(r"^(\x1b\[[0-9;]*m)*\((raylet|gcs_server|autoscaler|[^)]*\bpid=\d+)[^)]*\)")


def own_stderr(capsys) -> str:
    """What the study's own code wrote to stderr: the captured text less the lines Ray streamed in
    from its processes meanwhile (a raylet's full-disk warning arrives whenever the disk is full)."""
    err = capsys.readouterr().err
    return "".join(line for line in err.splitlines(keepends=True) if not RAY_STREAMED_LINE.match(line))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lead-cache")


def tiny_config(cache_dir: Path, **overrides) -> TrainConfig:
    """A small, fast run config over the tiny test model; ``overrides`` merge section by section."""
    from trainers.settings import deep_merge

    base = {
        "model": {"cache_dir": str(cache_dir), "tiny": TINY},
        "task": {"max_terms": 5, "eval_size": 24},
        "rollout": {"n": 4, "max_new_tokens": 48},
        "train": {"steps": 4, "prompts_per_step": 4, "mini_batch_size": 8, "micro_batch_size": 4},
        "eval": {"every": 2, "num_problems": 12},
        "checkpoint": {"every": 2, "keep_last": 5},
    }
    return TrainConfig.of(deep_merge(base, overrides))


@pytest.fixture(scope="session")
def tiny_model_dir(cache_dir) -> Path:
    from trainers.loop.base_model import base_model_path

    return base_model_path(tiny_config(cache_dir), log=lambda _: None)


@pytest.fixture(scope="session")
def ray_cluster(study_cache):
    """The one local Ray of the test session. It says it has 4 GPUs, so GPU placement is tested on
    CPU machines too (a trial that asks for none is placed as before). Its workers' own model cache
    (``LEAD_STUDY_CACHE``) is ``study_cache``, never the home folder's."""
    import ray

    # a lost node (tests/test_cluster.py) is declared dead after about 3 s, not Ray's default 15-30
    health_checks = {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}
    ray.init(num_cpus=2, num_gpus=4, include_dashboard=False, _system_config=health_checks)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto in server mode) on 127.0.0.1, in its own process group;
    yields its endpoint URL. Buckets are made by the tests that need them."""
    import os
    import signal
    import socket
    import sys
    import time

    from trainers.runtime.process import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                raise RuntimeError("the S3 test server did not start")
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


@pytest.fixture()
def s3_env(s3_server, monkeypatch):
    """The environment a user sets for object storage, pointing at the test server."""
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(scope="session")
def study_cache(tmp_path_factory) -> Path:
    """The model cache the study tests share (the specs' smoke base model is built once)."""
    import os

    path = tmp_path_factory.mktemp("study-cache")
    os.environ["LEAD_STUDY_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def smoke_study(ray_cluster, study_cache, tmp_path_factory):
    """The default study's smoke test, run once: its folder, MLflow URI, study name and exit code."""
    from types import SimpleNamespace

    from study.run import main

    folder = tmp_path_factory.mktemp("smoke-study")
    uri = f"sqlite:///{folder}/mlflow.db"
    spec = Path(__file__).resolve().parents[1] / "search_spaces/psi_vs_static.yaml"
    code = main([str(spec), "--smoke-test", "--output-dir", str(folder / "runs"), "--tracking-uri", uri])
    return SimpleNamespace(folder=folder, uri=uri, name="psi_vs_static-smoke", code=code)


@contextlib.contextmanager
def registries_restored():
    """Whatever a test registers (a plugin's rewards, weightings, ...) is gone after it: the
    registries and the imported plugins are as they were before."""
    from study.search_modes import SEARCH_MODES
    from trainers import plugins
    from trainers.actor import BACKENDS
    from trainers.actor.aggregation import LOSS_AGGREGATIONS
    from trainers.actor.losses import POLICY_LOSSES
    from trainers.loop.group_filters import GROUP_FILTERS
    from trainers.method.advantages import ADVANTAGES
    from trainers.method.rewards import LENGTH_REWARDS
    from trainers.rollout import ENGINES
    from trainers.tasks import TASKS
    from trainers.method.weightings import WEIGHTINGS

    registries = (LENGTH_REWARDS, WEIGHTINGS, ADVANTAGES, TASKS, ENGINES, BACKENDS, SEARCH_MODES, GROUP_FILTERS,
                  LOSS_AGGREGATIONS, POLICY_LOSSES)
    saved = [set(r.registered()) for r in registries], dict(plugins._LOADED)
    try:
        yield
    finally:  # built-in entries imported meanwhile (a lazily imported engine or task) stay
        for registry, names in zip(registries, saved[0]):
            for name in set(registry.registered()) - names - set(registry.modules):
                del registry[name]
        plugins._LOADED.clear()
        plugins._LOADED.update(saved[1])


@pytest.fixture()
def fresh_registries():
    with registries_restored():
        yield
