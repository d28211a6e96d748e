"""What a cluster whose nodes share no disk adds to a study: the seconds a base model takes through
the study's object storage, and the seconds Ray's runtime environment adds to a trial's start.

    python -m benchmarks.shipping [--mib 16 256 1024] [--storage-only]

For each size, a model folder of that many MiB goes through a real S3-compatible server (moto)
on 127.0.0.1 as ``study.shipping`` moves it: the driver's upload, a node's first download into its
own cache, the weights digest the node computes there once (its base evaluation's key), and a
later trial on that node (nothing to download). Then the first task on a fresh Ray worker that
imports a trial's code, with and without the project shipped as ``py_modules`` (what
``--address`` does): the difference is what shipping the code adds to the first trial on a node.
``--storage-only`` leaves out the Ray workers (three fresh local Rays, most of a minute). Loopback
figures: a real bucket adds the network's time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from study.run import project_code
from study.shipping import download, upload_once
from study.storage import open_storage
from trainers.io.fingerprint import weights_digest
from trainers.runtime.process import free_port


def s3_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("moto did not start")


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def model_through_storage(mib: int, root: Path) -> None:
    model = root / f"model-{mib}"
    model.mkdir()
    with (model / "model.safetensors").open("wb") as out:
        for _ in range(mib):
            out.write(os.urandom(2**20))
    (model / "config.json").write_text("{}")
    target = open_storage("s3://bench/study").child("models", f"m{mib}")
    upload = upload_once(model, target)
    node_cache = root / f"node-{mib}"
    first = download(target, node_cache / "shipped" / f"m{mib}")
    digest = timed(lambda: weights_digest(node_cache / "shipped" / f"m{mib}", node_cache / "digests"))
    again = timed(lambda: download(target, node_cache / "shipped" / f"m{mib}"))
    again += timed(lambda: weights_digest(node_cache / "shipped" / f"m{mib}", node_cache / "digests"))
    print(f"{mib:>6} MiB: upload {upload:6.2f} s | first trial on a node: download {first:6.2f} s + digest "
          f"{digest:5.2f} s | later trials there: {again:5.3f} s")


FIRST_TASK = """
import json, sys, time
import ray
runtime_env = json.loads(sys.argv[1])
ray.init(num_cpus=1, include_dashboard=False, runtime_env=runtime_env or None, log_to_driver=False)

@ray.remote
def load_trial_code():
    import study.trial
    return study.trial.__file__

start = time.perf_counter()
where = ray.get(load_trial_code.remote())
print(json.dumps([time.perf_counter() - start, where]))
"""


def first_task_seconds(runtime_env: dict) -> float:
    """A fresh local Ray in a fresh process (outside the checkout, so the driver's own folder is not
    on the workers' path); the seconds of the first task that imports a trial's code."""
    with tempfile.TemporaryDirectory() as elsewhere:
        out = subprocess.run([sys.executable, "-c", FIRST_TASK, json.dumps(runtime_env)], cwd=elsewhere,
                             capture_output=True, text=True, check=True).stdout
    seconds, where = json.loads(out.strip().splitlines()[-1])
    assert ("runtime_resources" in where) == bool(runtime_env), where  # the code came from where it should
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, nargs="+", default=[16, 256, 1024])
    parser.add_argument("--storage-only", action="store_true", help="only the model through object storage")
    args = parser.parse_args()
    server, endpoint = s3_server()
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": endpoint})
    try:
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory() as tmp:
            for mib in args.mib:
                model_through_storage(mib, Path(tmp))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    if args.storage_only:
        return
    first_task_seconds({})  # warms the disk cache for both
    plain, shipped = first_task_seconds({}), first_task_seconds(project_code())
    print(f"first task importing a trial's code on a fresh worker: {plain:.2f} s from the installed project, "
          f"{shipped:.2f} s with the project shipped as py_modules (+{shipped - plain:.2f} s)")


if __name__ == "__main__":
    main()
