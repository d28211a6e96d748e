"""``mlflow server`` on loopback over a study's store, for as long as a ``with`` block lasts.

    with local_server("sqlite:///mlflow.db") as url:   # http://127.0.0.1:<free port>
        ...
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

from trainers.runtime.process import free_port


@contextlib.contextmanager
def local_server(backend_uri: str, timeout_s: float = 120.0, artifacts_destination: str | None = None) -> Iterator[str]:
    """Start the server, wait until ``/health`` answers, yield its URL, stop it on exit. With
    ``artifacts_destination`` (``s3://bucket/prefix``: credentials and endpoint from the
    environment, ``MLFLOW_S3_ENDPOINT_URL`` for an S3-compatible server) it serves the artifacts
    from there, so its clients need no shared disk."""
    port = free_port()
    where = ["--artifacts-destination", artifacts_destination] if artifacts_destination else []
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri, *where,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],  # one user: one worker starts faster
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=1).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server for {backend_uri} did not start") from None
                time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        server.wait()
