"""A population member's lineage: which run trained its final weights at each step, and the
schedule of a setting those weights were trained under (pure Python; the study's tracker writes
a member's replay config from it, the analysis draws it).

A member's own series holds the steps it trained itself (1-based: step ``s`` is the ``s``-th
update, logged with the value it used). After an exploit at step ``t`` its weights are the
donor's at ``t``: the weights' history is the donor's (itself possibly inherited) up to ``t``, then
the member's own.
"""

from __future__ import annotations

Series = tuple[list[int], list[float]]  # (steps, values), steps increasing
Links = dict[str, list[tuple[int, str]]]  # trial -> its (step, donor) exploits, in step order


def lineage(own: dict[str, Series], links: Links, trial: str, upto: int | None = None) -> list[tuple[int, float, str]]:
    """(step, value, the run that trained that step) for every step of ``trial``'s final weights
    (up to step ``upto``, default its last)."""
    steps, values = own.get(trial, ([], []))
    upto = max(steps, default=0) if upto is None else upto
    cuts = [(step, donor) for step, donor in links.get(trial, []) if step <= upto]
    start, inherited = 0, []
    if cuts:
        start, donor = cuts[-1]
        inherited = lineage(own, links, donor, start)
    return inherited + [(s, v, trial) for s, v in zip(steps, values) if start < s <= upto]


def schedule_points(series: list[tuple[int, float]]) -> list[list]:
    """A per-step series (1-based steps, each with the value it trained under) as schedule points
    ``[[step, value], ...]`` over 0-based training steps, a point wherever the value changes."""
    points: list[list] = []
    for step, value in sorted(series):
        if not points or points[-1][1] != value:
            points.append([step - 1, value])
    return points
