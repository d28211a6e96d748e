"""Screenshots of a study in the MLflow UI, as a user opens it: a real ``mlflow server`` on
127.0.0.1 over the study's store, and headless Chromium on the URL the study prints.

    python benchmarks/ui_screenshots.py --tracking-uri sqlite:///mlflow.db --study psi_vs_static-smoke [--out ui/]

Writes ``trials_chart.png`` (the trials view: charts of every trial's metrics, grouped by arm) and
``experiment.png`` (the experiment page a user lands on), and prints their paths. Needs Chromium
(Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from analysis.server import local_server
from study.mlflow_runs import trials_view_url

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1900,1300", "--virtual-time-budget=25000")


def screenshot(chromium: str, url: str, path: Path, profile: Path) -> None:
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={path}", url],
                   check=True, capture_output=True, timeout=180)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--out", type=Path, default=Path("ui"))
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("error: no chromium on PATH (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    experiment = MlflowClient(args.tracking_uri).get_experiment_by_name(args.study)
    if experiment is None:
        print(f"error: no study named '{args.study}' in {args.tracking_uri}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with local_server(args.tracking_uri) as url:
        pages = {"trials_chart.png": trials_view_url(url, experiment.experiment_id),
                 "experiment.png": f"{url}/#/experiments/{experiment.experiment_id}"}
        for name, page in pages.items():
            screenshot(chromium, page, args.out / name, args.out / ".chromium-profile")
            print(f"{args.out / name}: {page}")
    shutil.rmtree(args.out / ".chromium-profile", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
