"""MLflow stores, as the study runner (the writer) and the analysis (the reader) both reach them:
which store a URI names, whether it can be used, and reading a run's JSON artifacts.

Lives below ``study/`` and ``analysis/`` so that neither imports the other for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else ``./mlflow.db`` (what ``study.run`` writes to by default)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


class StoreError(ValueError):
    """A store that cannot be used or read (one line)."""


def check_store(uri: str, writing: bool) -> str:
    """The tracking URI, checked and with a SQLite path made absolute, or StoreError in one line.

    ``sqlite:///PATH``: an existing file must be an MLflow store (not a corrupted or foreign file);
    a reader (``writing=False``) never turns a missing or empty file into a new store. ``http(s)://``:
    the server must answer. Other database URIs (``postgresql://``...) must connect now, not after
    Ray and the base model started. A plain path is refused (MLflow 3 has no default file store)."""
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
        return uri
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
        if not db.is_file() or db.stat().st_size == 0:
            if not writing:
                raise StoreError(f"no MLflow store at {db}")
            if not os.access(db.parent, os.W_OK) or not db.parent.is_dir():
                raise StoreError(f"cannot write {db}")
            return f"sqlite:///{db}"
        try:
            with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as connection:
                tables = {row[0] for row in connection.execute("select name from sqlite_master where type = 'table'")}
        except sqlite3.Error as exc:
            raise StoreError(f"{db} is not a readable MLflow store ({exc})") from None
        if "experiments" not in tables:
            raise StoreError(f"{db} is a SQLite file but not an MLflow store (no experiments table)")
        return f"sqlite:///{db}"
    if "://" not in uri:
        raise StoreError(f"'{uri}' is a plain path: use sqlite:///{Path(uri).expanduser().resolve()}"
                         " (a SQLite store) or http://HOST:PORT (an MLflow server)")
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:  # a missing driver, a refused connection, bad credentials: all one line
        raise StoreError(f"cannot use the MLflow store at {uri}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    return uri


def _check_server(uri: str) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when a server does not answer."""
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).read()
    except OSError as exc:
        raise StoreError(f"cannot reach the MLflow server at {uri} ({exc})") from None


def read_json_artifact(client: MlflowClient, run_id: str, name: str):
    """The JSON artifact ``name`` of a run (``folder/file.json``), or None if the run has none."""
    folder = name.rpartition("/")[0] or None
    if not any(a.path == name for a in client.list_artifacts(run_id, folder)):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, name, tmp)).read_text())
