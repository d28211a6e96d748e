"""What produced a result: the project's code and the libraries it ran on.

``versions()`` is recorded in every MLflow run and every ``summary.json`` / ``results.json``;
``fingerprint(parts)`` is part of every cache key, so a base model or a base evaluation made by
other code or another library version is built anew, never reused silently.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from importlib import metadata
from pathlib import Path

from trainers import contract as M
from trainers.io.outputs import write_atomic
from trainers.runtime import kernels

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the checkout (or site-packages) holding trainers/
LIBRARIES = ("torch", "transformers", "tokenizers", "vllm", "ray", "mlflow", "math-verify")

# The code each cache depends on (paths under PACKAGE_ROOT; folders mean every .py file in them).
BASE_MODEL_CODE = ("trainers/models", "trainers/tasks/synthetic.py", "trainers/runtime/process.py")  # the tiny model, its SFT data
EVALUATION_CODE = ("trainers/models", "trainers/rollout", "trainers/tasks", "trainers/loop/evaluation.py",
                   "trainers/runtime/process.py")  # sampling, grading, and what an evaluation computes


def library_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


@functools.cache
def project_version() -> str:
    """The package version, with the git commit (``+dirty`` for uncommitted changes) where there is one."""
    version = library_version("lead-study")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=PACKAGE_ROOT, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PACKAGE_ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+{commit}{'.dirty' if dirty else ''}"


def versions() -> dict[str, str]:
    """``{"lead-study": "0.1.0+abc123", "torch": "2.13.0", ..., "cpu-kernels": "AVX2 (pinned)"}``:
    the project, ``LIBRARIES`` and the CPU kernel level this process computes at (``trainers.runtime.kernels``)."""
    return {"lead-study": project_version(), **{name: library_version(name) for name in LIBRARIES},
            M.CPU_KERNELS: kernels.level()}


def fingerprint(parts: tuple[str, ...], libraries: tuple[str, ...] = ("torch", "transformers", "tokenizers")) -> str:
    """A hash of the source files under ``parts``, of the versions of ``libraries`` and of the CPU
    kernel level (numbers made at another level are other numbers)."""
    digest = hashlib.blake2b(digest_size=12)
    for part in parts:
        path = PACKAGE_ROOT / part
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(str(file.relative_to(PACKAGE_ROOT)).encode() + b"\0" + file.read_bytes() + b"\0")
    for name in libraries:
        digest.update(f"{name}={library_version(name)}\0".encode())
    digest.update(f"{M.CPU_KERNELS}={kernels.level()}\0".encode())
    return digest.hexdigest()


def weights_digest(model_dir: Path, memo_dir: Path) -> str:
    """A hash of a model folder's weight files (their names and bytes): the same model has the
    same digest wherever it lies, so a cached evaluation of it is found on any node. Hashing a
    large model takes seconds per GB: the digest is kept in ``memo_dir`` under the folder's path,
    sizes and modification times, and recomputed only when one of them changes."""
    files = sorted(p for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    memo = Path(memo_dir) / hashlib.sha256(repr((str(Path(model_dir).resolve()), stamp)).encode()).hexdigest()[:24]
    if memo.is_file():
        return memo.read_text()
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as stream:
            while chunk := stream.read(1 << 24):
                digest.update(chunk)
    write_atomic(memo, digest.hexdigest())
    return digest.hexdigest()
