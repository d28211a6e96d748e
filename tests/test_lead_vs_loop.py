"""The vectorized core and the benchmark's per-group loop compute the same numbers."""

import pytest

from benchmarks.lead_step import loop_lead_step, make_batch
from trainers.method.lead import LeadConfig, LeadState, lead_step


@pytest.mark.parametrize("aggregator", ["mean_correct", "min_correct", "median_correct", "mean_all"])
@pytest.mark.parametrize("lstar_mode", ["sym", "asym", "upper_only"])
@pytest.mark.parametrize(
    "weighting, normalization", [("psi", "decoupled"), ("static", "combined"), ("schedule", "decoupled")]
)
def test_loop_and_vectorized_agree(aggregator, lstar_mode, weighting, normalization):
    config = LeadConfig(
        aggregator=aggregator,
        lstar_mode=lstar_mode,
        weighting={"kind": weighting, **{"static": {"w_corr": 0.3}, "schedule": {"schedule_steps": 100}}.get(weighting, {})},
        advantage={"kind": normalization},
        short_guard=900,
        floor=1000,
        bmax=8000,
    )
    lengths, correctness, group_ids = make_batch(16, 8, seed=3)
    state = LeadState(step=7, weighting={"w_corr_ema": 0.62, "w_eff_ema": 0.38})
    fast = lead_step(lengths, correctness, group_ids, config=config, state=state)
    slow = loop_lead_step(lengths, correctness, group_ids, config=config, state=state, as_floats=True)
    assert fast.targets.tolist() == pytest.approx(slow["targets"], rel=1e-6)
    assert fast.r_eff.tolist() == pytest.approx(slow["r_eff"], rel=1e-6, abs=1e-9)
    assert fast.advantages.tolist() == pytest.approx(slow["advantages"], rel=1e-6, abs=1e-9)
    assert fast.w_corr == pytest.approx(slow["w_corr"], rel=1e-9)
