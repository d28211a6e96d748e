"""A PBT / PB2 population read back: each member's effective schedule and its exploits.

A member's run holds the steps it trained itself, each once. After an exploit at step ``t`` its
weights are the donor's at ``t``: the schedule that produced them is the donor's (itself possibly
inherited) up to ``t``, then the member's own. ``effective_schedules`` follows those links back
(``trainers.io.lineage``), so each member's series is the setting its final weights were trained
under, step by step.
"""

from __future__ import annotations

import pyarrow as pa

from analysis.compute import series
from trainers.io.lineage import lineage


def exploit_links(exploits: pa.Table) -> dict[str, list[tuple[int, str]]]:
    """trial -> its (step, donor) exploits, in step order."""
    links: dict[str, list[tuple[int, str]]] = {}
    for trial, step, donor in zip(*(exploits[c].to_pylist() for c in ("trial", "step", "donor"))):
        links.setdefault(trial, []).append((step, donor))
    return {trial: sorted(steps) for trial, steps in links.items()}


def effective_schedules(history: pa.Table, exploits: pa.Table, key: str) -> dict[str, tuple[list[int], list[float]]]:
    """Every trial that logged ``key`` (e.g. ``setting/lead.weighting.w_corr``): (steps, values) of
    the lineage of its final weights (``trainers.io.lineage``)."""
    own = series(history, key)
    links = exploit_links(exploits)
    out = {}
    for trial in own:
        points = lineage(own, links, trial)
        out[trial] = ([s for s, _, _ in points], [v for _, v, _ in points])
    return out
