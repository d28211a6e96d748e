"""A population member's replay: the config that trains, from scratch, what its final weights
were trained under.

PBT and PB2 move a member's settings as it trains, and an exploit hands it another member's
weights, so the settings a member's run started with say little about its result. Its replay
config folds the lineage of its final weights (``trainers.io.lineage``) into one plain trainer config:

- ``lead.weighting.w_corr``, when searched, becomes a schedule of points (``kind: schedule``,
  each value held from the step it took effect), so the w_corr curriculum PBT found can be run
  again, on other seeds, or against PSI;
- every other searched setting (``train.lr``, ...) takes its final value (a trainer setting has
  no schedule);
- ``seed`` is the seed of the run that trained the lineage's first steps.

With the ``hf`` engine, and only ``w_corr`` searched, the replay repeats the member's weights
bit for bit up to its first exploit (and beyond it, where donor and member share a seed).
"""

from __future__ import annotations

from typing import Any

from trainers import contract as M
from trainers.config import TrainConfig
from trainers.io.lineage import schedule_points
from trainers.settings import deep_merge, dotted

W_CORR = M.W_CORR_SETTING
HEADER = ("# The replay of {trial}, a member of the {arm} population: its final weights' lineage as one config.\n"
          "# w_corr as schedule points (when searched), other searched settings at their final values,\n"
          "# the seed of the run that trained the first steps. python -m trainers.train THIS_FILE\n")


def replay_config(start: dict[str, Any], final_search: dict[str, Any], w_corr_lineage: list[tuple[int, float, str]] | None,
                  root_seed: int) -> dict[str, Any]:
    """The replay of a member whose run started from ``start`` (a trial config), whose searched
    settings ended at ``final_search`` and whose final weights' w_corr lineage is
    ``w_corr_lineage`` ((step, value, run) per step; None when w_corr was not searched)."""
    config = deep_merge(start, {"seed": root_seed})
    for key, value in final_search.items():
        if key != W_CORR or not w_corr_lineage:
            config = deep_merge(config, dotted(key, value))
    if w_corr_lineage:
        config["lead"] = {**config["lead"], "weighting": {
            "kind": "schedule", "points": schedule_points([(step, value) for step, value, _ in w_corr_lineage])}}
    return TrainConfig.of(config).model_dump(mode="json")
