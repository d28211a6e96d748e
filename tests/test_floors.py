"""The optional engines' version floors: one line naming the installed version and the floor."""

import pytest

from trainers.runtime.floors import FLOORS, VersionTooOld, installed_version, require_floor


@pytest.mark.parametrize("name, old", [("vllm", "0.17.1"), ("deepspeed", "0.19.3")])
def test_a_release_older_than_the_floor_is_refused_in_one_line(name, old):
    with pytest.raises(VersionTooOld) as refused:
        require_floor(name, old)
    floor, needs = FLOORS[name]
    assert str(refused.value) == f"{name} {old} is installed; this project needs {name}>={floor} for {needs}"
    require_floor(name, floor)  # the floor itself is enough


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_what_make_setup_installs_is_at_or_above_the_floor(name):
    if installed_version(name) is None:
        pytest.skip(f"{name} is not installed (make setup installs it from the lock: lock/cpu.txt, lock/cpu-build.txt)")
    require_floor(name)
