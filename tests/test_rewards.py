"""The length-reward registry: the public contract, each formula on hand-worked numbers, properties
(hypothesis), agreement with the benchmark's per-group loops, and PSI over any reward."""

import math
from typing import Annotated

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field

from benchmarks.lead_step import BENCH_PARAMS, LOOP_REWARDS, loop_lead_step, make_batch
from tests.test_lead_properties import batches
from trainers.method.lead import LeadConfig, LeadState, PsiWeighting, StaticWeighting, lead_step
from trainers.method.rewards import LENGTH_REWARDS, RewardBatch, register_length_reward

T = torch.tensor
PARAMS = {  # settings for the properties below (lengths 0..400)
    "lead": {"floor": 5.0, "bmax": 200.0},
    "shorter_better": {"bmax": 200.0},
    "kimi": {},
    "arora_zanette": {},
    "overlong": {"max_len": 300.0, "cache_len": 100.0},
    "threshold": {"threshold": 150.0},
}


def reward(name, lengths, scores, groups, **params):
    return LENGTH_REWARDS[name](T(lengths, dtype=torch.float64), T(scores, dtype=torch.float64), T(groups), **params)


def test_the_contract_imports_and_calls_exactly_as_documented():
    from trainers.method.rewards import LENGTH_REWARDS

    assert set(LENGTH_REWARDS) == {"lead", "shorter_better", "kimi", "arora_zanette", "overlong", "threshold"}
    fn = LENGTH_REWARDS["kimi"]
    lengths, correctness, group_ids = T([10.0, 20.0, 30.0]), T([1.0, 0.0, 1.0]), T([4, 4, 4])
    r_len = fn(lengths, correctness, group_ids)
    assert r_len.shape == (3,) and r_len.dtype == torch.float64 and r_len.device == lengths.device
    assert (fn.low, fn.high) == (-0.5, 0.5) and isinstance(fn.low, float)
    assert "Kimi k1.5" in fn.__doc__
    ranges = {name: (f.low, f.high) for name, f in LENGTH_REWARDS.items()}
    assert ranges == {
        "lead": (-1.0, 1.0), "shorter_better": (-1.0, 0.0), "kimi": (-0.5, 0.5),
        "arora_zanette": (-1.0, 0.0), "overlong": (-1.0, 0.0), "threshold": (0.0, 1.0),
    }


def test_lead_through_the_registry_is_lead_step_s_efficiency_reward():
    lengths, scores, groups = make_batch(16, 8, seed=5)
    config = LeadConfig(floor=1000, bmax=8000, lstar_mode="asym", short_guard=500)
    direct = LENGTH_REWARDS["lead"](lengths, scores, groups, **config.reward_params)
    assert torch.equal(direct, lead_step(lengths, scores, groups, config=config).r_eff)


def test_shorter_better():
    # group 1: correct 20, 30 -> SOL 20; r = -|l - 20| / 100. group 2: none correct -> SOL = mean(30, 50) = 40
    out = reward("shorter_better", [10, 20, 30, 40, 30, 50], [0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 2, 2], bmax=100.0)
    assert out.tolist() == pytest.approx([-0.1, 0.0, -0.1, -0.2, -0.1, -0.1])
    step = lead_step(T([10.0, 20, 30, 40, 30, 50]), T([0.0, 1, 1, 0, 0, 0]), T([1, 1, 1, 1, 2, 2]),
                     config=LeadConfig(length_reward="shorter_better", floor=1, bmax=100))
    assert step.targets.tolist() == pytest.approx([20.0] * 4 + [40.0] * 2)  # SOL is the logged target
    # a length further than bmax from SOL is clamped at -1 (the range holds)
    assert reward("shorter_better", [10, 400], [1, 0], [0, 0], bmax=100.0).tolist() == pytest.approx([0.0, -1.0])


def test_kimi():
    # min 10, max 50: lam = .5 - (l - 10) / 40 = .5, .25, 0, -.5; incorrect (20, 50) get min(0, lam)
    out = reward("kimi", [10, 20, 30, 50, 7, 7], [1, 0, 1, 0, 1, 0], [3, 3, 3, 3, 9, 9])
    assert out.tolist() == pytest.approx([0.5, 0.0, 0.0, -0.5, 0.0, 0.0])  # equal lengths: lam = 0


def test_arora_zanette():
    # correct lengths 10, 30: mean 20, population std 10 -> z = -1, +1; incorrect -> 0; one correct -> z = 0
    out = reward("arora_zanette", [10, 30, 100, 5, 60], [1, 1, 0, 1, 0], [0, 0, 0, 1, 1])
    s = 1 / (1 + math.exp(1))  # sigmoid(-1)
    assert out.tolist() == pytest.approx([-s, -(1 - s), 0.0, -0.5, 0.0])


def test_overlong():
    # max_len 100, cache 20: up to 80 -> 0; 90 -> (80 - 90) / 20 = -.5; 100 -> -1; beyond -> -1
    out = reward("overlong", [50, 80, 90, 100, 120], [1, 0, 1, 0, 1], [0] * 5, max_len=100.0, cache_len=20.0)
    assert out.tolist() == pytest.approx([0.0, 0.0, -0.5, -1.0, -1.0])


def test_threshold():
    out = reward("threshold", [40, 50, 51], [0, 1, 1], [0, 0, 0], threshold=50.0)
    assert out.tolist() == [1.0, 1.0, 0.0]


def test_psi_s_efficiency_potential_uses_the_reward_s_range():
    # threshold 20, both correct: r = [1, 0], mu_e = .5 on range [0, 1] -> P_e = 1 - .5 = .5
    # (LEAD's [-1, 1] formula would give 1 - (.5 + 1) / 2 = .25)
    config = LeadConfig(length_reward="threshold", length_params={"threshold": 20}, floor=1, bmax=100)
    out = lead_step(T([10.0, 30.0]), T([1.0, 1.0]), T([0, 0]), config=config)
    assert out.metrics["mu_eff"] == pytest.approx(0.5)
    assert out.metrics["potential_eff"] == pytest.approx(0.5)
    kimi = lead_step(T([10.0, 30.0]), T([1.0, 1.0]), T([0, 0]), config=LeadConfig(length_reward="kimi", floor=1, bmax=100))
    assert kimi.metrics["mu_eff"] == pytest.approx(0.0) and kimi.metrics["potential_eff"] == pytest.approx(0.5)
    assert kimi.targets is None and math.isnan(kimi.metrics["lstar_mean"])  # kimi aims at no length


def test_a_problem_drawn_twice_forms_two_groups_sharing_one_memory():
    # rows 0 and 1 are the same problem 7: two groups (L* 20 and 50), not one group of four (L* 35)
    config = LeadConfig(lstar_memory=0.5, floor=1, bmax=100)
    first = lead_step(T([10.0, 30, 40, 60]), T([1.0, 1, 1, 1]), T([0, 0, 1, 1]), config=config, problem_ids=T([7, 7, 7, 7]))
    assert first.targets.tolist() == pytest.approx([20.0, 20.0, 50.0, 50.0])
    assert first.state.memory_ids.tolist() == [7]  # keyed by problem id, the last group's target
    second = lead_step(T([10.0, 10.0]), T([1.0, 1.0]), T([0, 0]), config=config, state=first.state, problem_ids=T([7, 7]))
    assert second.targets.tolist() == pytest.approx([30.0, 30.0])  # .5 * 50 + .5 * 10


def test_combine_then_normalize_with_the_release_s_threshold_reward():
    # w .5 / .5, threshold 25: r_corr [1, 0, 1], r_len [1, 1, 0] -> combined [1, .5, .5]; mean 2/3,
    # unbiased std sqrt(((1/3)^2 + 2 (1/6)^2) / 2) = sqrt(1/12)
    weighting = StaticWeighting(w_corr=0.5)
    config = LeadConfig(length_reward="threshold", length_params={"threshold": 25}, weighting=weighting,
                        advantage={"kind": "combined", "whiten": False}, floor=1, bmax=100)
    out = lead_step(T([10.0, 20, 30]), T([1.0, 0, 1]), T([0, 0, 0]), config=config)
    std = math.sqrt(1 / 12)
    assert out.advantages.tolist() == pytest.approx([(1 / 3) / (std + 1e-6), (-1 / 6) / (std + 1e-6), (-1 / 6) / (std + 1e-6)])


def test_a_user_reward_is_one_function_and_one_registration():
    @register_length_reward("test_linear", low=-1.0, high=0.0)
    def linear(batch: RewardBatch, *, scale: Annotated[float, Field(gt=0)] = 100.0) -> torch.Tensor:
        """``-min(1, l / scale)``"""
        return -(batch.lengths / scale).clamp(max=1.0)

    try:
        config = LeadConfig(length_reward="test_linear", length_params={"scale": 50}, floor=1, bmax=100)
        out = lead_step(T([25.0, 100.0]), T([1.0, 1.0]), T([0, 0]), config=config)
        assert out.r_eff.tolist() == pytest.approx([-0.5, -1.0])
        with pytest.raises(ValueError, match="length_params.scale: Input should be greater than 0"):
            LeadConfig(length_reward="test_linear", length_params={"scale": -1}, bmax=100)
        with pytest.raises(ValueError, match="already registered"):
            register_length_reward("test_linear", low=0, high=1)(linear.compute)
    finally:
        del LENGTH_REWARDS["test_linear"]


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(length_reward="nope"), "length_reward: unknown length reward 'nope'"),
        (dict(length_reward="overlong", length_params={"max_len": 10}), "length_params.cache_len: Field required"),
        (dict(length_reward="kimi", length_params={"bmax": 10}), "length_params.bmax: set it as lead.bmax"),
        (dict(length_reward="kimi", length_params={"scale": 10}), "length_params.scale: unknown key"),
    ],
)
def test_bad_reward_settings_name_the_key(config, message):
    with pytest.raises(ValueError, match=message):
        LeadConfig(**{"bmax": 8000.0, **config})


@pytest.mark.parametrize("name", sorted(LOOP_REWARDS))
def test_each_reward_agrees_with_its_per_group_loop(name):
    lengths, scores, groups = make_batch(32, 8, seed=11)
    params = {**{"floor": 1000.0, "bmax": 8000.0}, **BENCH_PARAMS[name]}
    fn = LENGTH_REWARDS[name]
    params = {k: v for k, v in params.items() if k in fn.params.model_fields}
    members = {}
    for i, g in enumerate(groups.tolist()):
        members.setdefault(g, []).append(i)
    expected, _ = LOOP_REWARDS[name](lengths.tolist(), scores.tolist(), members, fn.params.model_validate(params).model_dump())
    assert fn(lengths, scores, groups, **params).tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", sorted(LOOP_REWARDS))
@pytest.mark.parametrize("weighting, advantage", [(PsiWeighting(), "decoupled"), (StaticWeighting(w_corr=0.3), "combined")])
def test_lead_step_over_each_reward_agrees_with_the_loop(name, weighting, advantage):
    lengths, scores, groups = make_batch(16, 8, seed=3)
    params = {k: v for k, v in BENCH_PARAMS[name].items()}
    config = LeadConfig(length_reward=name, length_params=params, weighting=weighting, advantage={"kind": advantage},
                        floor=1000, bmax=8000)
    state = LeadState(step=7, weighting={"w_corr_ema": 0.62, "w_eff_ema": 0.38})
    fast = lead_step(lengths, scores, groups, config=config, state=state)
    slow = loop_lead_step(lengths, scores, groups, config=config, state=state, as_floats=True)
    assert fast.r_eff.tolist() == pytest.approx(slow["r_eff"], rel=1e-9, abs=1e-12)
    assert fast.advantages.tolist() == pytest.approx(slow["advantages"], rel=1e-6, abs=1e-9)
    assert fast.w_corr == pytest.approx(slow["w_corr"], rel=1e-9)


# --------------------------------------------------------------------------- properties


@settings(max_examples=80, deadline=None)
@given(batch=batches(), name=st.sampled_from(sorted(PARAMS)), data=st.data())
def test_every_reward_respects_its_range_and_is_invariant_to_order_and_labels(batch, name, data):
    fn = LENGTH_REWARDS[name]
    lengths, scores, group_ids = batch
    out = fn(lengths, scores, group_ids, **PARAMS[name])
    assert out.shape == lengths.shape and bool(torch.isfinite(out).all())
    assert bool(((out >= fn.low) & (out <= fn.high)).all()), out
    perm = T(data.draw(st.permutations(range(lengths.numel()))), dtype=torch.int64)
    labels = torch.unique(group_ids).tolist()
    fresh = data.draw(st.lists(st.integers(0, 10**6), min_size=len(labels), max_size=len(labels), unique=True))
    relabel = dict(zip(labels, fresh))
    new_ids = T([relabel[g] for g in group_ids[perm].tolist()], dtype=torch.int64)
    torch.testing.assert_close(out[perm], fn(lengths[perm], scores[perm], new_ids, **PARAMS[name]), rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(batch=batches(), name=st.sampled_from(sorted(PARAMS)), psi=st.booleans())
def test_lead_step_over_every_reward_gives_finite_convex_weights(batch, name, psi):
    params = {k: v for k, v in PARAMS[name].items() if k not in ("floor", "bmax")}
    weighting = PsiWeighting() if psi else StaticWeighting(w_corr=0.4)
    config = LeadConfig(length_reward=name, length_params=params, weighting=weighting, floor=5, bmax=200)
    out = lead_step(*batch, config=config)
    assert math.isclose(out.w_corr + out.w_eff, 1.0, abs_tol=1e-12) and 0 <= out.w_corr <= 1
    for tensor in (out.r_eff, out.adv_corr, out.adv_eff, out.advantages):
        assert bool(torch.isfinite(tensor).all())
    if psi:  # PSI's own statistics (other weightings report none)
        assert math.isfinite(out.metrics["potential_eff"]) and 0 <= out.metrics["potential_eff"] <= 1
    else:
        assert "potential_eff" not in out.metrics and math.isfinite(out.metrics["mu_eff"])


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize(
    "lengths, scores, groups",
    [
        ([37.0], [1.0], [5]),  # a single rollout
        ([10.0, 80.0, 80.0, 300.0], [1.0] * 4, [1, 1, 2, 2]),  # all correct
        ([10.0, 80.0, 80.0, 300.0], [0.0] * 4, [1, 1, 2, 2]),  # all wrong
        ([50.0, 50.0, 50.0], [1.0, 0.0, 1.0], [3, 3, 3]),  # identical lengths
    ],
)
def test_every_reward_is_finite_on_degenerate_groups(name, lengths, scores, groups):
    out = reward(name, lengths, scores, groups, **PARAMS[name])
    assert bool(torch.isfinite(out).all())
    assert bool(((out >= LENGTH_REWARDS[name].low) & (out <= LENGTH_REWARDS[name].high)).all())
