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
