"""A study on a Ray cluster whose nodes share no disk, on this one machine: the session's Ray head
is the driver's node, and a second node is started with ``ray start --address`` in its own process
group, with its own HOME, TMPDIR, Ray temp folder and model cache, and a custom resource that
every trial asks for; results go to a real S3-compatible server on 127.0.0.1. Python's audit hook
(a ``sitecustomize`` on the node's PYTHONPATH) records every file a process of the node opens
under the driver's folders or the checkout's packages (a read-only probe of a path that does not
exist, as a traceback's source lookup makes, reads nothing and is not recorded)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tests.conftest import own_stderr
from tests.test_study_run import ROOT, bucket_keys, child_runs, history_artifact_matches, make_bucket, small_spec, steps_of

AUDIT_HOOK = '''\
import os, sys
_forbidden = tuple(p for p in os.environ.get("LEAD_TEST_FORBIDDEN", "").split(os.pathsep) if p)
_log = os.environ.get("LEAD_TEST_OPENED")
def _hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.abspath(os.fsdecode(args[0]))
        writes = any(c in args[1] for c in "wax+") if args[1] else args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        reads_nothing = not os.path.exists(path) and not writes
        if path.startswith(_forbidden) and not reads_nothing:  # a failed probe (a traceback's source lookup) reads nothing
            with open(_log, "a") as out:
                out.write(f"{os.getpid()} {path}\\n")
if _forbidden and _log:
    sys.addaudithook(_hook)
    with open(_log + ".processes", "a") as out:
        out.write(f"{os.getpid()}\\n")
'''


@contextlib.contextmanager
def ray_node(address: str, home: Path, forbidden: list[Path], site: str = ""):
    """A Ray node joined to ``address``, in its own process group and folders, with 2 CPUs and the
    custom resource ``far``; stopped (its process group killed) when the block ends, unless the
    test killed it first. ``site``: more code for its processes' ``sitecustomize``. Yields the
    ``ray start`` process."""
    import ray

    (home / "tmp").mkdir()
    (home / "site").mkdir()
    (home / "site/sitecustomize.py").write_text(AUDIT_HOOK + site)
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(home / "tmp"), "LEAD_STUDY_CACHE": str(home / "cache"),
           "PYTHONPATH": str(home / "site"), "LEAD_TEST_FORBIDDEN": os.pathsep.join(map(str, forbidden)),
           "LEAD_TEST_OPENED": str(home / "opened.log"),
           "RAY_AUTH_TOKEN_PATH": str(Path("~/.ray/auth_token").expanduser())}  # the cluster's token, as on any node
    command = [str(Path(sys.executable).with_name("ray")), "start", "--address", address, "--num-cpus", "2",
               "--resources", json.dumps({"far": 1}), "--temp-dir", str(home / "tmp/ray"), "--block",
               "--disable-usage-stats"]
    with (home / "node.log").open("w") as log:
        node = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not any(n["Alive"] and n["Resources"].get("far") for n in ray.nodes()):
            assert node.poll() is None and time.time() < deadline, (home / "node.log").read_text()[-2000:]
            time.sleep(0.2)
        yield node
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGKILL)
        node.wait(timeout=30)
        while far_node_alive():  # gone from the cluster before the next test looks at it
            time.sleep(0.2)


def kill_node(node: subprocess.Popen, home: Path) -> None:
    """SIGKILL the node's process group, and its workers (Ray gives each its own process group)."""
    import psutil

    workers = [p for p in psutil.process_iter(["cmdline"]) if str(home) in " ".join(p.info["cmdline"] or ())]
    os.killpg(node.pid, signal.SIGKILL)
    for process in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def far_node_alive() -> bool:
    import ray

    return any(n["Alive"] and n["Resources"].get("far") for n in ray.nodes())


def test_trials_on_a_node_that_shares_no_disk_survive_the_loss_of_that_node(
    ray_cluster, s3_env, tiny_model_dir, cache_dir, study_cache, tmp_path, fresh_registries
):
    """Two trials (PSI, and a plugin's weighting) run on the second node only; they take the base
    model, its evaluation, the plugin and the project's code through the bucket and Ray, never from
    the driver's folders or the checkout. Once the first checkpoint is in the bucket the node is
    killed (its whole process group); a fresh node joins and Tune restarts the trials there from
    their checkpoints in the bucket: every step in MLflow once, none missing, the report, Tune's
    experiment state and the checkpoints in the bucket, no local folder named after the URI, the
    lock object gone at the end, and --resume finds the finished study there."""

    make_bucket("far")
    shutil.copy(ROOT / "examples/plugins/my_method.py", tmp_path / "my_method.py")
    spec = small_spec(
        tmp_path, cache_dir, name="cluster", max_failures=2, plugins=["my_method.py"],
        resources={"bundles": [{"CPU": 1, "far": 1}]},
        arms=[{"name": "psi", "weighting": {"kind": "psi"}},
              {"name": "gate", "reward": {"kind": "budget_linear", "budget": 40},
               "weighting": {"kind": "accuracy_gate", "threshold": 0.6, "high": 0.9, "low": 0.4}}],
    )
    data = yaml.safe_load(spec.read_text())
    data["base"]["train"]["steps"] = 40  # a step takes a fraction of a second: room to kill the node mid-trial
    data["base"]["eval"] = {"every": 20, "num_problems": 12}
    data["base"]["checkpoint"] = {"every": 4}
    spec.write_text(yaml.safe_dump(data))
    # short folders: a Ray node's socket paths must stay under 108 bytes
    first, second = (Path(tempfile.mkdtemp(prefix=f"lead-{name}-")) for name in ("node1", "node2"))
    try:
        check_two_nodes(ray_cluster, spec, tmp_path, tiny_model_dir, first, second,
                        [tmp_path, cache_dir, study_cache] + [ROOT / p for p in ("study", "trainers", "analysis", "stores")])
    finally:
        shutil.rmtree(first, ignore_errors=True)
        shutil.rmtree(second, ignore_errors=True)


def check_two_nodes(ray_cluster, spec, tmp_path, tiny_model_dir, first, second, driver_folders):
    from study.run import main
    from trainers.io.fingerprint import weights_digest

    args = [str(spec), "--output-dir", "s3://far/studies", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--address", ray_cluster]
    with ray_node(ray_cluster, first, driver_folders) as node, (tmp_path / "driver.log").open("w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "study.run", *args], cwd=tmp_path, stdout=log,
                                  stderr=subprocess.STDOUT)
        checkpointed = lambda: any(k.endswith("/report.json") for k in bucket_keys("far", "studies/cluster/"))  # noqa: E731
        deadline = time.time() + 400
        while not checkpointed() and driver.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        kill_node(node, first)  # the node and every trial on it, mid-run
        killed_at = {k for k in bucket_keys("far", "studies/cluster/") if k.endswith("/report.json")}
    assert killed_at and driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
    with ray_node(ray_cluster, second, driver_folders):
        assert driver.wait(timeout=400) == 0, (tmp_path / "driver.log").read_text()[-3000:]

    digest = weights_digest(tiny_model_dir, tmp_path / "digests")
    for home in (first, second):  # both nodes fetched the model and the plugin into their own cache
        assert weights_digest(home / "cache/shipped" / digest, tmp_path / "digests") == digest
        assert [p.name.endswith("-my_method.py") for p in (home / "cache/plugins").iterdir()] == [True]
        assert (home / "opened.log.processes").read_text(), "the audit hook never ran on the node"
        opened = (home / "opened.log").read_text() if (home / "opened.log").exists() else ""
        assert opened == "", f"a process of the node opened the driver's files:\n{opened[:2000]}"
    client, parents, children = child_runs(tmp_path, "cluster")
    assert parents[0].info.status == "FINISHED" and sorted(r.data.tags["arm"] for r in children) == ["gate", "psi"]
    for run in children:  # the restarted trials: no gaps, no doubled steps
        assert run.info.status == "FINISHED" and steps_of(client, run) == list(range(1, 41)), steps_of(client, run)
        assert steps_of(client, run, "eval/accuracy") == [20, 40] and history_artifact_matches(client, run)
    keys = bucket_keys("far", "studies/")
    assert "studies/cluster/report/report.html" in keys and "studies/cluster/report/report.md" in keys
    assert any(k.startswith("studies/cluster/experiment_state-") for k in keys), keys
    assert "studies/.cluster.lock" not in keys and not (tmp_path / "s3:").exists() and not (tmp_path / "runs").exists()
    assert parents[0].data.tags["lead_study.study_dir"] == "s3://far/studies/cluster"
    shipped = {Path(k).name for k in keys if k.startswith(f"studies/cluster/models/{digest}/")}
    assert shipped >= {"model.safetensors", "config.json", ".complete"}, keys
    evaluations = {k.split("/")[3] for k in keys if k.startswith("studies/cluster/evaluations/")}
    for home in (first, second):  # the driver's evaluation, found under the node's own key: not computed again
        assert {p.name for p in (home / "cache/evaluations").glob("eval-*")} == evaluations and len(evaluations) == 1
    # each trial with a checkpoint in the bucket when its node died went on from it on the new node
    checkpointed_trials = {k.split("/")[2] for k in killed_at}
    restored = {p.parent.name for p in second.glob("tmp/ray/**/restored-checkpoint_*")}
    assert checkpointed_trials and checkpointed_trials <= restored, (checkpointed_trials, restored)
    assert main([*args, "--resume"]) == 0  # found in the bucket, every trial already done: nothing runs again
    assert all(steps_of(client, r) == list(range(1, 41)) for r in child_runs(tmp_path, "cluster")[2])


def test_a_cluster_node_that_lacks_a_dependency_is_one_line_and_exit_2_before_any_trial(
    ray_cluster, cache_dir, tmp_path, capsys
):
    """A node whose Python cannot import math-verify: the study names the node and the module and
    stops with exit 2 before it builds anything or starts a trial."""
    from study.run import main

    spec = small_spec(tmp_path, cache_dir, resources={"bundles": [{"CPU": 1, "far": 1}]})
    home = Path(tempfile.mkdtemp(prefix="lead-node3-"))
    try:
        with ray_node(ray_cluster, home, [], site='sys.modules["math_verify"] = None  # as if not installed\n'):
            code = main([str(spec), "--output-dir", str(tmp_path / "runs"), "--tracking-uri",
                         f"sqlite:///{tmp_path}/mlflow.db", "--address", ray_cluster])
    finally:
        shutil.rmtree(home, ignore_errors=True)
    err = own_stderr(capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: --address: node ") and "cannot import math_verify (import of math_verify halted" in err
    assert not (tmp_path / "runs/fault").exists() and not (tmp_path / "mlflow.db").exists()  # (the lock files stay)
