"""The lock: exact versions and hashes of every package ``make setup`` installs on a CPU machine.

    python lock/lock.py check                  # the lock matches pyproject.toml (else one line, exit 2)
    python lock/lock.py write --venv DIR        # write the lock from a venv built by its floors (``make lock``)

``cpu.txt`` holds every package (transitive ones, the CPU build of vLLM, pip itself) as
``name==version --hash=sha256:...``, installed by pip with ``--require-hashes --no-deps``, so nothing
is resolved at install time; ``cpu-build.txt`` holds what is built from source against it
(DeepSpeed, ``DS_BUILD_OPS=0``, no build isolation: its build imports the locked torch). Both start
with the digest of ``pyproject.toml``'s dependencies (the main list and the ``test`` extra) they were
made for: edit those and ``check`` refuses the lock until ``make lock`` writes it anew.

pip, not uv or poetry: torch 2.13.0+cpu comes from a wheel pip finds on these machines' disk (its
``find-links``), or from PyTorch's CPU index elsewhere (``PIP_EXTRA_INDEX_URL``); the other
installers would take a CUDA build of torch from the package index. Standard library only: it runs
before any venv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK, BUILD_LOCK = "lock/cpu.txt", "lock/cpu-build.txt"  # under the checkout
BUILT_FROM_SOURCE = {"deepspeed"}  # built against the locked torch, after everything else is installed
DIGEST_LINE = "# pyproject dependencies sha256: "


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependencies_digest(pyproject: Path) -> str:
    """The digest of what the lock must satisfy: the main dependencies and the ``test`` extra."""
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = {"dependencies": project["dependencies"], "test": project["optional-dependencies"]["test"]}
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()


def requirement_name(requirement: str) -> str:
    return canonical(re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0])


def locked(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` of a lock file's pins."""
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", path.read_text(), flags=re.MULTILINE)
    return {canonical(name): version for name, version in pins}


def check(root: Path = ROOT) -> list[str]:
    """Every way the lock under ``root`` fails to match its ``pyproject.toml``, one line each."""
    problems = []
    digest = dependencies_digest(root / "pyproject.toml")
    for name in (LOCK, BUILD_LOCK):
        if not (root / name).is_file():
            problems.append(f"{name}: missing; write it with `make lock`")
        elif f"{DIGEST_LINE}{digest}" not in (root / name).read_text():
            problems.append(f"{name}: made for other dependencies than pyproject.toml's "
                            "(its [project] dependencies or the test extra changed); write it anew with `make lock`")
    if problems:
        return problems
    pins = {**locked(root / LOCK), **locked(root / BUILD_LOCK)}
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
        if requirement_name(requirement) not in pins:
            problems.append(f"{LOCK}: pyproject.toml needs {requirement_name(requirement)}, "
                            "which the lock does not pin; write it anew with `make lock`")
    return problems


def archive_names(folder: Path) -> dict[str, Path]:
    """``{canonical name: file}`` of the wheels and source archives ``pip download`` left in ``folder``."""
    found = {}
    for file in folder.iterdir():
        if file.suffix == ".whl":
            name = file.name.split("-")[0]
        else:
            name = re.sub(r"\.(tar\.gz|zip|tar\.bz2)$", "", file.name).rsplit("-", 1)[0]
        found[canonical(name)] = file
    return found


def write(venv: Path) -> None:
    """The lock of ``venv``'s packages (the project itself left out), with the hash of each file."""
    python = str(venv / "bin/python")
    frozen = subprocess.run([python, "-m", "pip", "freeze", "--all", "--exclude-editable"], check=True,
                            capture_output=True, text=True).stdout
    pins = [line for line in frozen.splitlines() if "==" in line and canonical(line.split("==")[0]) != "lead-study"]
    header = [f"# Written by `make lock` (python lock/lock.py write) on Python {sys.version.split()[0]}, "
              "Linux x86-64; installed by `make setup`.", f"{DIGEST_LINE}{dependencies_digest(ROOT / 'pyproject.toml')}"]
    with tempfile.TemporaryDirectory() as scratch:
        requirements = Path(scratch) / "frozen.txt"
        requirements.write_text("\n".join(pins) + "\n")
        subprocess.run([python, "-m", "pip", "download", "--quiet", "--no-deps", "--no-build-isolation", "-d", scratch,
                        "-r", str(requirements)], check=True, env={**os.environ, "DS_BUILD_OPS": "0"})
        files = archive_names(Path(scratch))
        lines = {ROOT / LOCK: list(header), ROOT / BUILD_LOCK: list(header)}
        for pin in sorted(pins, key=str.lower):
            name = canonical(pin.split("==")[0])
            sha = hashlib.sha256(files[name].read_bytes()).hexdigest()
            lines[ROOT / (BUILD_LOCK if name in BUILT_FROM_SOURCE else LOCK)].append(f"{pin} --hash=sha256:{sha}")
    for path, content in lines.items():
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(content) + "\n")
        tmp.rename(path)
    print(f"wrote {LOCK} ({len(lines[ROOT / LOCK]) - 2} packages) and {BUILD_LOCK}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python lock/lock.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="the lock matches pyproject.toml")
    writer = sub.add_parser("write", help="write the lock from a venv built by the floors")
    writer.add_argument("--venv", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "write":
        write(args.venv)
        return 0
    problems = check()
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
