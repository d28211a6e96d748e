"""Imports point one way: trainers -> nothing of ours, stores -> trainers, study -> analysis only
for the report it writes at the end; no cycle anywhere."""

from benchmarks.import_graph import cycles, imports


def targets(package: str) -> set[str]:
    return {name for names in imports(package).values() for name in names}


def test_imports_point_one_way():
    assert {name.split(".")[0] for name in targets("trainers")} == set()
    assert {name.split(".")[0] for name in targets("stores")} <= {"trainers"}
    assert {name.split(".")[0] for name in targets("analysis")} <= {"trainers", "stores"}
    assert {name for name in targets("study") if name.startswith("analysis")} <= {"analysis.report"}


def test_no_import_cycle_between_any_two_modules():
    """Type-only imports count: a weighting owns its state, so weightings import nothing of lead."""
    assert cycles() == []


def test_no_function_in_the_packages_is_over_80_lines():
    from benchmarks.import_graph import longest_functions

    assert [where for lines, where in longest_functions(5) if lines > 80] == []
