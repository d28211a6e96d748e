"""The README and ``docs/``: the README fits on a few screens, every link between them and to the
repository's files resolves (anchors included), and every module or script they tell a user to run
exists."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings (lower case, punctuation dropped, spaces as dashes)."""
    text, found, in_code = page.read_text(), set(), False
    for line in text.splitlines():
        in_code ^= line.startswith("```")
        if not in_code and re.match(r"^#{1,6} ", line):
            found.add(re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-"))
    return found


def test_the_readme_fits_on_a_few_screens():
    assert len((ROOT / "README.md").read_text().splitlines()) < 250


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(target)
    assert broken == [], f"{page.name}: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_names_a_module_or_script_that_exists(page):
    """``python -m X`` names a module of this repository (or an installed tool), ``python PATH.py``
    an existing script."""
    text, missing = page.read_text(), []
    for module in re.findall(r"python -m ([\w.]+)", text):
        top = module.split(".")[0]
        if (ROOT / top).is_dir() and not ((ROOT / module.replace(".", "/")).with_suffix(".py").exists()
                                          or (ROOT / module.replace(".", "/") / "__main__.py").exists()):
            missing.append(module)
    for script in re.findall(r"python ((?:benchmarks|lock|analysis|study|trainers)/[\w/]+\.py)", text):
        if not (ROOT / script).exists():
            missing.append(script)
    assert missing == [], f"{page.name}: {missing}"


# Every program the README and docs/ tell a user to run, and how the suite runs it. RUN_BY: the
# test that runs its command end to end (its CLI, in a smoke size where the documented size takes
# minutes to hours). SMALL_RUNS: run below, end to end at a small size, with the arguments a
# function of the test's folder and fixtures gives, and a phrase its output must hold.
# Adding a command to the docs without a line here fails ``test_every_documented_program_is_accounted_for``.
RUN_BY = {
    "study.run": "test_study_run.py::test_default_study_smoke_test_end_to_end_in_mlflow",
    "trainers.train": "test_train_cli.py::test_smoke_test_runs_end_to_end_and_writes_its_outputs",
    "trainers.evaluate": "test_math_task.py::test_evaluate_cli_end_to_end_and_resume",
    "analysis.report": "test_analysis_report.py::test_report_of_a_smoke_study",
    "analysis.replay_spec": "test_replay_spec.py::test_the_best_member_s_schedule_against_psi_on_new_seeds",
    "study.sequential": "test_sequential.py::test_the_boundary_table_recalibrated_on_fewer_draws_is_the_checked_in_one",
    "lock/lock.py": "test_lock.py::test_a_lock_for_other_dependencies_is_one_line_naming_it_and_exit_2",
    "benchmarks/ui_screenshots.py": "test_analysis_report.py::test_ui_screenshots_of_the_smoke_study",  # needs Chromium
    "make test": "CI (.ci/run)",
}


def tiny_config_file(tmp_path: Path, request) -> str:
    """The tests' small run config over the tiny test model (``conftest.tiny_config``), as a YAML file."""
    import yaml

    from tests.conftest import tiny_config

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(request.getfixturevalue("cache_dir")).model_dump(mode="json")))
    return str(path)


def answers_folder(tmp_path: Path, request) -> str:
    """A data folder laid out as ``../shared/data``: one benchmark file, the tests' math problems."""
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "fixture.jsonl").write_text((ROOT / "tests/fixtures/math_problems.jsonl").read_text())
    return str(tmp_path)


def with_study_cache(args: list[str]):
    """``args``, run with the study tests' model cache (``LEAD_STUDY_CACHE``: the smoke base model is built once)."""

    def arguments(tmp_path: Path, request) -> list[str]:
        request.getfixturevalue("study_cache")  # sets LEAD_STUDY_CACHE for the session
        return args

    return arguments


SMALL_RUNS = {  # program: (its arguments, from the test's folder and fixtures; a phrase its output holds)
    "benchmarks.stats_coverage": (lambda *_: ["--repetitions", "5", "--suite", "designs"], "holds the true difference"),
    "benchmarks.sequential_coverage": (lambda *_: ["--repetitions", "20"], "Gaussian, true difference 0 sd"),
    "benchmarks/import_graph.py": (lambda *_: ["--longest", "3"], "Import cycles: none"),
    "benchmarks/lead_step.py": (lambda *_: ["--repeats", "1"], "lead_step ms"),
    "benchmarks/grpo_step.py": (lambda tmp, request: [tiny_config_file(tmp, request), "--steps", "4"], "step seconds"),
    "benchmarks/base_model.py": (lambda tmp, request: [tiny_config_file(tmp, request)], "pass@1"),
    "benchmarks/analysis_load.py": (lambda *_: ["--trials", "2", "--metrics", "3", "--steps", "10"], "load_study"),
    "benchmarks/grading_real_data.py": (lambda tmp, request: ["--data-dir", answers_folder(tmp, request), "--workers", "1"],
                                        "timeouts: 0, errors: 0"),
    "trainers.models.tiny_chat": (lambda tmp, _: [str(tmp / "model"), "--corpus", str(ROOT / "tests/fixtures/math_problems.jsonl")],
                                  "model"),
    "benchmarks.trial_speed": (with_study_cache(["--smoke-test"]), "smoke-test trial (psi, seed 0)"),
    "benchmarks.shipping": (lambda *_: ["--mib", "1", "--storage-only"], "first trial on a node: download"),
    "benchmarks/gpu_check.py": (lambda *_: ["--tiny"], "policy update (single backend)"),  # its CPU check
}
SLOW_RUNS = {"benchmarks.trial_speed", "benchmarks.shipping"}  # a trial in a fresh process; an S3 server
NOT_RUN = {  # make targets the suite cannot run inside itself
    "make run": "the default study, 57 minutes; its smoke test is RUN_BY study.run",
    "make setup": "builds the environment the suite runs in", "make setup-gpu": "CUDA machines only",
    "make lock": "resolves against the package index", "make test-fast": "a subset of make test",
}
PROGRAM = re.compile(r"(?:python -m ([a-z_][\w.]*)|python ((?:benchmarks|lock)/[\w/]+\.py)|(make [a-z][\w-]*))")


def documented_programs() -> set[str]:
    return {next(g for g in match if g) for page in PAGES for match in PROGRAM.findall(page.read_text())}


def test_every_documented_program_is_accounted_for():
    unknown = documented_programs() - set(RUN_BY) - set(SMALL_RUNS) - set(NOT_RUN)
    assert unknown == set(), f"add these to RUN_BY, SMALL_RUNS or NOT_RUN: {sorted(unknown)}"


def test_every_run_by_test_exists():
    for program, where in RUN_BY.items():
        if "::" in where:
            file, name = where.split("::")
            assert f"def {name}(" in (ROOT / "tests" / file).read_text(), (program, where)


def run_program(program: str, args: list[str], monkeypatch) -> int | None:
    """``python -m PROGRAM ARGS`` or ``python PROGRAM ARGS``, in this process; its exit code (None:
    it returned). Torch's thread count and the environment, which a benchmark may set, are restored
    after it (threads change numbers in the tests that follow)."""
    import os
    import runpy

    import torch

    monkeypatch.setattr("sys.argv", [program, *args])
    threads, environment = torch.get_num_threads(), dict(os.environ)
    try:
        if program.endswith(".py"):
            monkeypatch.syspath_prepend(str(ROOT))
            runpy.run_path(str(ROOT / program), run_name="__main__")
        else:
            runpy.run_module(program, run_name="__main__", alter_sys=True)
    except SystemExit as done:
        return done.code
    finally:
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(environment)
    return None


@pytest.mark.parametrize(
    "program", [pytest.param(p, marks=[pytest.mark.slow] if p in SLOW_RUNS else []) for p in sorted(SMALL_RUNS)]
)
def test_every_small_run_program_runs_end_to_end(program, tmp_path, request, monkeypatch, capsys):
    arguments, phrase = SMALL_RUNS[program]
    assert run_program(program, arguments(tmp_path, request), monkeypatch) in (0, None)
    assert phrase in capsys.readouterr().out
