"""Seconds to load a large study (50 trials x 30 metrics x 500 steps) with ``analysis.load``.

    python benchmarks/analysis_load.py [--trials 50] [--metrics 30] [--steps 500] [--server]

Writes a study of that shape into a fresh SQLite MLflow store (laid out as the study runner
writes it), then times ``load_study`` on it; with ``--server`` it also starts ``mlflow server`` on
127.0.0.1 against the same store and times the load over HTTP.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from analysis.load import load_study


def write_study(uri: str, trials: int, metrics: int, steps: int) -> None:
    client = MlflowClient(uri)
    exp = client.create_experiment("bench")
    parent = client.create_run(exp, run_name="bench", tags={"lead_study.role": "study"}).info.run_id
    keys = [f"train/m{i}" for i in range(metrics - 2)] + ["train/accuracy", "eval/aes"]
    for t in range(trials):
        run = client.create_run(
            exp, run_name=f"t{t}", tags={"mlflow.parentRunId": parent, "arm": "psi", "variant": "psi", "seed": str(t)}
        ).info.run_id
        batch = [Metric(k, (t + s) % 7 / 7, 0, s) for k in keys for s in range(1, steps + 1)]
        for i in range(0, len(batch), 1000):
            client.log_batch(run, metrics=batch[i : i + 1000])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--metrics", type=int, default=30)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--server", action="store_true", help="also load through a local mlflow server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        start = time.perf_counter()
        write_study(uri, args.trials, args.metrics, args.steps)
        print(f"wrote {args.trials} x {args.metrics} x {args.steps} metric values in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        data = load_study(uri, "bench")
        print(f"load_study (SQLite): {time.perf_counter() - start:.2f} s, {data.history.num_rows:,} history rows")
        if args.server:
            port = free_port()
            server = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            try:
                url = f"http://127.0.0.1:{port}"
                for _ in range(120):
                    try:
                        urllib.request.urlopen(url + "/health", timeout=1)
                        break
                    except OSError:
                        time.sleep(0.5)
                start = time.perf_counter()
                data = load_study(url, "bench")
                print(f"load_study (HTTP):   {time.perf_counter() - start:.2f} s, {data.history.num_rows:,} history rows")
            finally:
                server.terminate()
                server.wait()


if __name__ == "__main__":
    main()
