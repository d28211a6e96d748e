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
# minutes to hours). SMALL_RUNS: run below, at a small size. HELP_ONLY: the suite parses its
# arguments (--help, below) and tests the code it drives, not the command itself, for the reason given. Adding a command to the docs without a
# line here fails ``test_every_documented_program_is_accounted_for``.
RUN_BY = {
    "study.run": "test_study_run.py::test_default_study_smoke_test_end_to_end_in_mlflow",
    "trainers.train": "test_train_cli.py::test_smoke_test_runs_end_to_end_and_writes_its_outputs",
    "trainers.evaluate": "test_math_task.py::test_evaluate_cli_end_to_end_and_resume",
    "analysis.report": "test_analysis_report.py::test_report_of_a_smoke_study",
    "analysis.replay_spec": "test_replay_spec.py::test_the_best_member_s_schedule_against_psi_on_new_seeds",
    "lock/lock.py": "test_lock.py::test_a_lock_for_other_dependencies_is_one_line_naming_it_and_exit_2",
    "make test": "CI (.ci/run)",
}
SMALL_RUNS = {  # run here end to end, at a small size (the documented size takes minutes)
    "benchmarks.stats_coverage": ["--repetitions", "5", "--suite", "designs"],
    "benchmarks.sequential_coverage": ["--repetitions", "20"],
    "benchmarks/import_graph.py": ["--longest", "3"],
    "benchmarks/lead_step.py": ["--repeats", "1"],
}
HELP_ONLY = {
    "benchmarks.trial_speed": "runs the default trial twice (minutes)",
    "benchmarks.shipping": "needs object storage and a cluster; test_shipping.py runs the shipping",
    "study.sequential": "--write-table recalibrates for minutes; test_sequential.py reproduces a table entry",
    "trainers.models.tiny_chat": "builds a model from a corpus; test_math_task.py builds one through the same code",
    "benchmarks/grpo_step.py": "a timing benchmark (minutes)",
    "benchmarks/base_model.py": "evaluates the full base model (minutes)",
    "benchmarks/analysis_load.py": "a timing benchmark over a 50-trial store",
    "benchmarks/grading_real_data.py": "grades every real row (minutes); test_grading.py grades them without load",
    "benchmarks/ui_screenshots.py": "needs a headless Chromium",
    "benchmarks/gpu_check.py": "needs a GPU",
}
NOT_RUN = {  # make targets the suite cannot run inside itself
    "make run": "the default study, 57 minutes; its smoke test is RUN_BY study.run",
    "make setup": "builds the environment the suite runs in", "make setup-gpu": "CUDA machines only",
    "make lock": "resolves against the package index", "make test-fast": "a subset of make test",
}
PROGRAM = re.compile(r"(?:python -m ([a-z_][\w.]*)|python ((?:benchmarks|lock)/[\w/]+\.py)|(make [a-z][\w-]*))")


def documented_programs() -> set[str]:
    return {next(g for g in match if g) for page in PAGES for match in PROGRAM.findall(page.read_text())}


def test_every_documented_program_is_accounted_for():
    unknown = documented_programs() - set(RUN_BY) - set(SMALL_RUNS) - set(HELP_ONLY) - set(NOT_RUN)
    assert unknown == set(), f"add these to RUN_BY, SMALL_RUNS, HELP_ONLY or NOT_RUN: {sorted(unknown)}"


def test_every_run_by_test_exists():
    for program, where in RUN_BY.items():
        if "::" in where:
            file, name = where.split("::")
            assert f"def {name}(" in (ROOT / "tests" / file).read_text(), (program, where)


def run_program(program: str, args: list[str], monkeypatch) -> int | None:
    """``python -m PROGRAM ARGS`` or ``python PROGRAM ARGS``, in this process; its exit code (None:
    it returned). Torch's thread count, which a benchmark may set, is restored after it (threads
    change numbers in the tests that follow)."""
    import runpy

    import torch

    monkeypatch.setattr("sys.argv", [program, *args])
    threads = torch.get_num_threads()
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
    return None


@pytest.mark.parametrize("program", sorted(SMALL_RUNS))
def test_every_small_run_program_runs_end_to_end(program, monkeypatch, capsys):
    assert run_program(program, SMALL_RUNS[program], monkeypatch) in (0, None)
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("program", sorted(HELP_ONLY))
def test_every_help_only_program_parses_its_arguments(program, monkeypatch, capsys):
    """``PROGRAM --help`` exits 0 and prints its usage (in this process)."""
    assert run_program(program, ["--help"], monkeypatch) in (0, None)
    assert "usage:" in capsys.readouterr().out
