"""Seconds to load a large study (50 trials x 30 metrics x 500 steps) with ``analysis.load``.

    python benchmarks/analysis_load.py [--trials 50] [--metrics 30] [--steps 500] [--server] [--api]

Writes a study of that shape into a fresh SQLite MLflow store, laid out as the study runner writes
it (metrics, tags and each trial's history artifact, through the runner's own writer), then times
``load_study`` on it; with ``--server`` also through ``mlflow server`` on 127.0.0.1 against the same
store. ``--api`` also times the path a trial without a current history artifact takes (a running
trial): MLflow's metric-history API.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from analysis.load import load_study
from trainers import contract as M
from analysis.server import local_server
from study.mlflow_runs import write_history_artifact


def write_study(uri: str, trials: int, metrics: int, steps: int) -> None:
    client = MlflowClient(uri)
    exp = client.create_experiment("bench", artifact_location=(Path(uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri())
    parent = client.create_run(exp, run_name="bench", tags={M.TAG_ROLE: M.ROLE_STUDY}).info.run_id
    keys = [f"train/m{i}" for i in range(metrics - 2)] + ["train/accuracy", "eval/aes"]
    for t in range(trials):
        run = client.create_run(
            exp, run_name=f"t{t}", tags={M.TAG_PARENT_RUN: parent, M.TAG_ARM: "psi", M.TAG_VARIANT: "psi", M.TAG_SEED: str(t)}
        ).info.run_id
        batch = [Metric(k, (t + s) % 7 / 7, 0, s) for k in keys for s in range(1, steps + 1)]
        for i in range(0, len(batch), 1000):
            client.log_batch(run, metrics=batch[i : i + 1000])
        client.set_tag(run, M.TAG_LOGGED_STEP, str(steps))
        write_history_artifact(client, run, [(m.key, m.step, m.value) for m in batch], steps)


def drop_history_tags(uri: str) -> None:
    """Make every trial look like a running one, whose history artifact is behind."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bench")
    for run in client.search_runs([exp.experiment_id], filter_string="tags.arm = 'psi'", max_results=50_000):
        client.delete_tag(run.info.run_id, M.TAG_HISTORY_STEP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--metrics", type=int, default=30)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--server", action="store_true", help="also load through a local mlflow server")
    parser.add_argument("--api", action="store_true", help="also time the metric-history API path (slow)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        start = time.perf_counter()
        write_study(uri, args.trials, args.metrics, args.steps)
        print(f"wrote {args.trials} x {args.metrics} x {args.steps} metric values in {time.perf_counter() - start:.1f} s")
        passes = [("history artifacts", lambda: None)] + ([("metric-history API", lambda: drop_history_tags(uri))] if args.api else [])
        for label, prepare in passes:
            prepare()
            timed_load(uri, f"SQLite, {label}")
            if args.server:
                with local_server(uri) as url:
                    timed_load(url, f"HTTP,   {label}")


def timed_load(uri: str, label: str) -> None:
    start = time.perf_counter()
    data = load_study(uri, "bench")
    print(f"load_study ({label}): {time.perf_counter() - start:.2f} s, {data.history.num_rows:,} history rows")


if __name__ == "__main__":
    main()
