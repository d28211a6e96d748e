"""Properties of the LEAD core that hold for every batch (hypothesis)."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainers.method.advantages import AdvantageSettings
from trainers.method.lead import LeadConfig, LeadState, PsiWeighting, ScheduleWeighting, StaticWeighting, lead_step

WEIGHTINGS = st.one_of(
    st.builds(PsiWeighting, beta=st.floats(0, 1), lambda_min=st.floats(0, 1)),
    st.builds(StaticWeighting, w_corr=st.floats(0, 1)),
    st.builds(ScheduleWeighting, schedule_steps=st.integers(1, 200)),
)
CONFIGS = st.builds(
    LeadConfig,
    weighting=WEIGHTINGS,
    advantage=st.builds(AdvantageSettings, kind=st.sampled_from(["decoupled", "combined", "centered", "rloo"])),
    aggregator=st.sampled_from(["mean_correct", "min_correct", "median_correct", "mean_all"]),
    lstar_mode=st.sampled_from(["sym", "asym", "upper_only"]),
    floor=st.just(5.0),
    bmax=st.just(200.0),
    short_guard=st.floats(0, 20),
    lstar_memory=st.sampled_from([0.0, 0.5]),
)


@st.composite
def batches(draw):
    """A batch: 1..6 groups of 1..8 rollouts, arbitrary int64 labels, mixed scores and lengths."""
    sizes = draw(st.lists(st.integers(1, 8), min_size=1, max_size=6))
    labels = draw(st.lists(st.integers(-(2**40), 2**40), min_size=len(sizes), max_size=len(sizes), unique=True))
    n = sum(sizes)
    lengths = draw(st.lists(st.integers(0, 400), min_size=n, max_size=n))
    scores = draw(st.lists(st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]), min_size=n, max_size=n))
    group_ids = [label for label, size in zip(labels, sizes) for _ in range(size)]
    return (
        torch.tensor(lengths, dtype=torch.float64),
        torch.tensor(scores, dtype=torch.float64),
        torch.tensor(group_ids, dtype=torch.int64),
    )


def finite(values):
    return bool(torch.isfinite(torch.as_tensor(values)).all())


@settings(max_examples=150, deadline=None)
@given(batch=batches(), config=CONFIGS, step_index=st.integers(0, 300))
def test_weights_are_a_convex_pair_and_outputs_are_finite(batch, config, step_index):
    out = lead_step(*batch, config=config, state=LeadState(step=step_index))
    assert 0.0 <= out.w_corr <= 1.0 and 0.0 <= out.w_eff <= 1.0
    assert math.isclose(out.w_corr + out.w_eff, 1.0, abs_tol=1e-12)
    if config.weighting.kind == "psi":  # the floor holds (up to the float the metrics round through)
        assert out.w_corr >= config.weighting.lambda_min - 1e-12
    for name in ("targets", "r_eff", "adv_corr", "adv_eff", "advantages"):
        assert finite(getattr(out, name)), name
    for key in ("w_corr", "target_w_corr", "mu_corr", "sigma_corr", "mu_eff", "sigma_eff", "lstar_mean"):
        assert math.isfinite(out.metrics[key]), key
    assert ((out.targets >= config.floor) & (out.targets <= config.bmax)).all()
    assert ((out.r_eff >= -1) & (out.r_eff <= 1)).all()


@settings(max_examples=150, deadline=None)
@given(batch=batches(), config=CONFIGS, data=st.data())
def test_invariant_under_permutation_and_relabelling(batch, config, data):
    lengths, scores, group_ids = batch
    n = lengths.numel()
    perm = torch.tensor(data.draw(st.permutations(range(n))), dtype=torch.int64)
    labels = torch.unique(group_ids)
    new_labels = data.draw(st.lists(st.integers(0, 10**6), min_size=len(labels), max_size=len(labels), unique=True))
    relabel = dict(zip(labels.tolist(), new_labels))
    new_ids = torch.tensor([relabel[g] for g in group_ids[perm].tolist()], dtype=torch.int64)

    a = lead_step(lengths, scores, group_ids, config=config)
    b = lead_step(lengths[perm], scores[perm], new_ids, config=config)
    for name in ("targets", "r_eff", "adv_corr", "adv_eff", "advantages"):
        torch.testing.assert_close(getattr(a, name)[perm], getattr(b, name), rtol=1e-9, atol=1e-9)
    assert math.isclose(a.w_corr, b.w_corr, rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=100, deadline=None)
@given(batch=batches(), config=CONFIGS)
def test_each_group_of_normalized_advantages_has_mean_zero(batch, config):
    lengths, scores, group_ids = batch
    out = lead_step(lengths, scores, group_ids, config=config)
    for label in torch.unique(group_ids):
        members = group_ids == label
        if members.sum() > 1:
            for adv in (out.adv_corr, out.adv_eff, out.advantages):
                assert abs(adv[members].mean().item()) < 1e-9


@settings(max_examples=60, deadline=None)
@given(batch=batches(), config=CONFIGS)
def test_a_state_round_trip_changes_nothing(batch, config):
    first = lead_step(*batch, config=config)
    restored = LeadState.from_state_dict(first.state.state_dict())
    a = lead_step(*batch, config=config, state=first.state)
    b = lead_step(*batch, config=config, state=restored)
    assert repr(a.metrics) == repr(b.metrics)
    assert torch.equal(a.advantages, b.advantages)
    assert torch.equal(a.targets, b.targets)


def test_degenerate_batches_give_finite_outputs():
    config = LeadConfig(floor=1, bmax=100)
    cases = {
        "all correct": ([10.0, 20.0, 30.0, 40.0], [1.0] * 4, [0, 0, 1, 1]),
        "all wrong": ([10.0, 20.0, 30.0, 40.0], [0.0] * 4, [0, 0, 1, 1]),
        "single rollout": ([10.0], [1.0], [3]),
        "single group": ([10.0, 20.0, 30.0], [1.0, 0.0, 1.0], [5, 5, 5]),
        "identical rollouts": ([10.0] * 4, [1.0] * 4, [0] * 4),
    }
    for name, (lengths, scores, groups) in cases.items():
        out = lead_step(torch.tensor(lengths), torch.tensor(scores), torch.tensor(groups), config=config)
        assert finite(out.advantages) and math.isfinite(out.w_corr), name
