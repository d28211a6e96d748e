"""The LEAD core against numbers worked out by hand in each test."""

import math

import pytest
import torch

from trainers.method.lead import LeadConfig, LeadState, lead_step, masked_whiten

T = torch.tensor


def step(lengths, correctness, group_ids, state=None, **config):
    return lead_step(
        T(lengths, dtype=torch.float64),
        T(correctness, dtype=torch.float64),
        T(group_ids, dtype=torch.int64),
        config=LeadConfig(**{"bmax": 8000.0, **config}),
        state=state,
    )


# Group 7: correct lengths 10, 20, 40 (30 is wrong). Group 3: only 5 is correct (0.9 > 0.5, 0.2 not).
# Group -2: nothing correct (0.4 is not > 0.5). Ids are unsorted and negative on purpose.
LENGTHS = [10, 20, 30, 40, 5, 15, 50, 60]
SCORES = [1.0, 1.0, 0.0, 1.0, 0.9, 0.2, 0.0, 0.4]
GROUPS = [7, 7, 7, 7, 3, 3, -2, -2]


@pytest.mark.parametrize(
    "aggregator, lstar_7, lstar_3, lstar_unsolved",
    [
        ("mean_correct", 70 / 3, 5.0, 100.0),  # over correct rollouts: the unsolved group -2 gets bmax
        ("min_correct", 10.0, 5.0, 100.0),
        ("median_correct", 20.0, 5.0, 100.0),
        ("mean_all", 25.0, 10.0, 55.0),  # correctness-blind: (50 + 60) / 2, as in the release
    ],
)
def test_aggregators_and_unsolved_rule(aggregator, lstar_7, lstar_3, lstar_unsolved):
    out = step(LENGTHS, SCORES, GROUPS, aggregator=aggregator, floor=1, bmax=100)
    expected = [lstar_7] * 4 + [lstar_3] * 2 + [lstar_unsolved] * 2
    assert out.targets.tolist() == pytest.approx(expected)
    assert out.metrics["num_unsolved_prompts"] == 1
    assert out.metrics["lstar_mean"] == pytest.approx((lstar_7 + lstar_3 + lstar_unsolved) / 3)
    assert out.metrics["lstar_mean_solvable"] == pytest.approx((lstar_7 + lstar_3) / 2)


def test_mean_all_clamps_an_unsolved_prompt_to_floor_and_bmax():
    # unsolved groups: mean 3 -> floor 8; mean 150 -> bmax 100
    out = step([2, 4, 140, 160], [0, 0, 0, 0], [1, 1, 2, 2], aggregator="mean_all", floor=8, bmax=100)
    assert out.targets.tolist() == pytest.approx([8.0, 8.0, 100.0, 100.0])


def test_median_of_an_even_number_of_correct_lengths_is_the_mean_of_the_middle_two():
    out = step([40, 10, 30, 20, 99], [1, 1, 1, 1, 0], [0] * 5, aggregator="median_correct", floor=1, bmax=100)
    assert out.targets.tolist() == pytest.approx([25.0] * 5)


def test_floor_and_bmax_clamp_the_target():
    # mean_correct: group 7 -> 23.33 clamped to bmax 22; group 3 -> 5 clamped to floor 12
    out = step(LENGTHS, SCORES, GROUPS, floor=12, bmax=22)
    assert out.targets.tolist() == pytest.approx([22.0] * 4 + [12.0] * 2 + [22.0] * 2)


def test_sym_efficiency_reward():
    # L* = 20 (mean of the correct 10 and 30). l=10: 1-10/20 = .5; 30: .5; 50: 1-30/20 = -.5; 80: -2 -> -1
    out = step([10, 30, 50, 80], [1, 1, 0, 0], [0] * 4, floor=1, bmax=100)
    assert out.r_eff.tolist() == pytest.approx([0.5, 0.5, -0.5, -1.0])


def test_upper_only_efficiency_reward():
    # L* = 20. l=10: min(0, .5) = 0; 30: -.5; 50: -1.5 -> -1; 80: -3 -> -1
    out = step([10, 30, 50, 80], [1, 1, 0, 0], [0] * 4, lstar_mode="upper_only", floor=1, bmax=100)
    assert out.r_eff.tolist() == pytest.approx([0.0, -0.5, -1.0, -1.0])


def test_asym_efficiency_reward_with_short_guard():
    # correct lengths 5, 10, 45 -> L* = 20. correct: 5 < guard 8 -> 0; 10 -> .5; 45 -> max(0, -1.25) = 0
    # incorrect: 10 -> clamp(.5, -1, 0) = 0; 30 -> -.5; 100 -> -4 -> -1
    out = step(
        [5, 10, 45, 10, 30, 100],
        [1, 1, 1, 0, 0, 0],
        [0] * 6,
        lstar_mode="asym",
        short_guard=8,
        floor=1,
        bmax=100,
    )
    assert out.targets[0].item() == pytest.approx(20.0)
    assert out.r_eff.tolist() == pytest.approx([0.0, 0.5, 0.0, 0.0, -0.5, -1.0])


def test_unsolved_prompt_under_sym_rewards_longer_attempts_and_is_logged():
    # no correct rollout: L* = bmax = 100, r_eff = 1 - |l - 100| / 100 = l / 100
    out = step([20, 60], [0, 0], [5, 5], floor=1, bmax=100)
    assert out.r_eff.tolist() == pytest.approx([0.2, 0.6])
    assert out.metrics["r_eff_mean_unsolved"] == pytest.approx(0.4)


def test_group_normalization_uses_unbiased_std_and_a_single_rollout_group_keeps_its_reward():
    # group 0 scores [1, 0, 0, 1]: mean .5, unbiased std sqrt(4 * .25 / 3) = sqrt(1/3)
    # group 9 has one rollout with score .7: mean 0, std 1 -> .7 / (1 + 1e-6)
    out = step([10, 10, 10, 10, 10], [1, 0, 0, 1, 0.7], [0, 0, 0, 0, 9], floor=1, bmax=100)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    assert out.adv_corr.tolist() == pytest.approx([a, -a, -a, a, 0.7 / (1 + 1e-6)], rel=1e-12)


def _two_group_batch():
    # group 1: correct 10, 20 -> L* 15; r_eff 2/3, 2/3, 0 (l=30), -2/3 (l=40)
    # group 2: correct 10 -> L* 10; r_eff 1, then l=50,60,70 -> -1
    return [10, 20, 30, 40, 10, 50, 60, 70], [1, 1, 0, 0, 1, 0, 0, 0], [1, 1, 1, 1, 2, 2, 2, 2]


def test_psi_statistics_and_ema_from_one_half():
    out = step(*_two_group_batch(), floor=1, bmax=100)
    assert out.r_eff.tolist() == pytest.approx([2 / 3, 2 / 3, 0, -2 / 3, 1, -1, -1, -1])
    m = out.metrics
    # correctness over all rollouts: m = (.5, .25), v = (.25, .1875)
    mu_c = 0.375
    sigma_c = math.sqrt((0.25 + 0.1875) / 2 + 0.125**2 + 1e-8)
    # efficiency over correct rollouts only: group 1 {2/3, 2/3}, group 2 {1}: m = (2/3, 1), v = (0, 0)
    mu_e = 5 / 6
    sigma_e = math.sqrt(0 + (1 / 6) ** 2 + 1e-8)
    assert m["mu_corr"] == pytest.approx(mu_c)
    assert m["sigma_corr"] == pytest.approx(sigma_c)
    assert m["mu_eff"] == pytest.approx(mu_e)
    assert m["sigma_eff"] == pytest.approx(sigma_e)
    cv_c, cv_e = sigma_c / (mu_c + 1e-8), sigma_e / (mu_e + 1e-8)
    assert m["cv_corr"] == pytest.approx(cv_c)
    assert m["cv_eff"] == pytest.approx(cv_e)
    cvn_c, cvn_e = cv_c / (cv_c + cv_e + 1e-8), cv_e / (cv_c + cv_e + 1e-8)
    assert m["cv_norm_corr"] == pytest.approx(cvn_c)
    assert m["potential_corr"] == pytest.approx(0.625)
    assert m["potential_eff"] == pytest.approx(1 - (5 / 6 + 1) / 2)
    d_c, d_e = cvn_c * 0.625, cvn_e * (1 / 12)
    assert m["d_corr"] == pytest.approx(d_c)
    assert m["d_eff"] == pytest.approx(d_e)
    target_c = d_c / (d_c + d_e + 1e-8)
    assert m["target_w_corr"] == pytest.approx(target_c)
    w_c = 0.95 * 0.5 + 0.05 * target_c
    assert out.w_corr == pytest.approx(w_c)
    assert out.w_eff == pytest.approx(1 - w_c)
    assert out.advantages.tolist() == pytest.approx((w_c * out.adv_corr + (1 - w_c) * out.adv_eff).tolist())
    # second step: the EMA continues from the stored state
    again = step(*_two_group_batch(), state=out.state, floor=1, bmax=100)
    assert again.w_corr == pytest.approx(0.95 * w_c + 0.05 * target_c)


def test_efficiency_statistics_are_zero_without_any_correct_rollout():
    out = step([10, 20, 30], [0, 0, 0.5], [1, 1, 2], floor=1, bmax=100)
    assert out.metrics["mu_eff"] == 0.0
    assert out.metrics["sigma_eff"] == 0.0


def test_lambda_min_floor_is_applied_after_the_ema_and_not_stored():
    # every rollout correct: mu_c = 1 -> P_c = 0 -> target w_corr = 0; beta = 0 makes the EMA that target
    out = step([10, 20, 30, 40], [1, 1, 1, 1], [0, 0, 1, 1], weighting={"kind": "psi", "beta": 0.0, "lambda_min": 0.3},
               floor=1, bmax=100)
    assert out.metrics["target_w_corr"] == pytest.approx(0.0, abs=1e-12)
    assert out.w_corr == pytest.approx(0.3)
    assert out.w_eff == pytest.approx(0.7)
    assert out.state.weighting["w_corr_ema"] == pytest.approx(0.0, abs=1e-12)


def test_static_weights_have_no_floor_and_no_state():
    out = step(*_two_group_batch(), weighting={"kind": "static", "w_corr": 0.2}, floor=1, bmax=100)
    assert (out.w_corr, out.w_eff) == pytest.approx((0.2, 0.8))
    assert out.state.weighting == {}
    assert out.state.step == 1


@pytest.mark.parametrize("shape, step_index, expected", [("linear", 5, 0.75), ("cosine", 5, 0.75), ("cosine", 2, 0.9)])
def test_schedule(shape, step_index, expected):
    # start 1, end .5 over 10 steps. linear t=.5 -> .75; cosine t=.5 -> .5 + .5 * (1 + cos(pi/2)) / 2 = .75;
    # cosine t=.2 -> .5 + .25 * (1 + cos(.2 pi)) = .9523
    if step_index == 2:
        expected = 0.5 + 0.25 * (1 + math.cos(0.2 * math.pi))
    state = LeadState(step=step_index)
    out = step(
        *_two_group_batch(),
        state=state,
        weighting={"kind": "schedule", "w_corr_start": 1.0, "w_corr_end": 0.5, "schedule_steps": 10, "schedule_shape": shape},
        floor=1,
        bmax=100,
    )
    assert out.w_corr == pytest.approx(expected)
    late = step(*_two_group_batch(), state=LeadState(step=50), weighting={"kind": "schedule", "schedule_steps": 10},
                floor=1, bmax=100)
    assert late.w_corr == pytest.approx(0.5)


def test_combined_normalization_normalizes_the_weighted_sum():
    # static .5/.5; group 0 rewards: r_corr [1, 0], r_eff with L* = 10: [1, 1 - 10/10 = 0]
    # combined r = [1, 0] -> mean .5, unbiased std sqrt(.5) -> +-.5 / (sqrt(.5) + 1e-6)
    out = step([10, 20], [1, 0], [0, 0], weighting={"kind": "static", "w_corr": 0.5}, advantage={"kind": "combined"},
               floor=1, bmax=100)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert out.advantages.tolist() == pytest.approx([a, -a])


def test_lstar_memory_blends_earlier_visits_of_the_same_problem():
    cfg = dict(lstar_memory=0.5, floor=1, bmax=100)
    first = step([10, 30], [1, 1], [4, 4], **cfg)  # L* 20, remembered
    assert first.targets.tolist() == pytest.approx([20.0, 20.0])
    second = step([40, 40], [1, 1], [4, 4], state=first.state, **cfg)  # .5 * 20 + .5 * 40 = 30
    assert second.targets.tolist() == pytest.approx([30.0, 30.0])
    third = step([40, 40], [0, 0], [4, 4], state=second.state, **cfg)  # unsolved now: remembered 30
    assert third.targets.tolist() == pytest.approx([30.0, 30.0])
    other = step([40, 40], [0, 0], [8, 8], state=second.state, **cfg)  # never solved: bmax
    assert other.targets.tolist() == pytest.approx([100.0, 100.0])


def test_masked_whiten_counts_each_token():
    values = T([[1.0, 1.0, 1.0], [4.0, 4.0, 0.0]])
    mask = T([[1, 1, 1], [1, 0, 0]])
    # masked tokens 1, 1, 1, 4: mean 7/4, unbiased var (3 * (3/4)^2 + (9/4)^2) / 3 = 2.25
    out = masked_whiten(values, mask)
    z = 1 / math.sqrt(2.25 + 1e-8)
    assert out.flatten().tolist() == pytest.approx([-0.75 * z] * 3 + [2.25 * z, 0.0, 0.0])


def test_state_dict_round_trip_continues_bit_for_bit():
    cfg = dict(lstar_memory=0.3, floor=1, bmax=100)
    first = step(*_two_group_batch(), **cfg)
    restored = LeadState.from_state_dict(first.state.state_dict())
    a = step(*_two_group_batch(), state=first.state, **cfg)
    b = step(*_two_group_batch(), state=restored, **cfg)
    assert repr(a.metrics) == repr(b.metrics)  # exact floats, NaN included (no unsolved prompt here)
    assert torch.equal(a.advantages, b.advantages)
    assert a.state.state_dict().keys() == b.state.state_dict().keys()


@pytest.mark.parametrize(
    "lengths, scores, groups, message",
    [
        ([1, 2], [1], [0, 0], "equal length"),
        ([], [], [], "empty"),
        ([1, -2], [1, 0], [0, 0], "non-negative"),
        ([1, float("nan")], [1, 0], [0, 0], "non-negative"),
        ([1, 2], [1, 1.5], [0, 0], r"\[0, 1\]"),
        ([1, 2], [1, float("nan")], [0, 0], r"\[0, 1\]"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(lengths, scores, groups, message):
    with pytest.raises(ValueError, match=message):
        step(lengths, scores, groups)


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(weighting={"kind": "psi", "lambda_min": 1.5}), "weighting.lambda_min"),
        (dict(weighting={"lambda_min": -0.1}), "weighting.lambda_min"),
        (dict(weighting={"kind": "fancy"}), "unknown weighting 'fancy'"),
        (dict(advantage={"kind": "zscore"}), "unknown advantage estimator 'zscore'"),
        (dict(weighting={"kind": "static", "normalization": "combined"}), "normalization: moved to lead.advantage.kind"),
        (dict(weighting={"kind": "psi", "whiten": False}), "whiten: moved to lead.advantage.whiten"),
        (dict(aggregator="max_correct"), "aggregator"),
        (dict(floor=200, bmax=100), "floor"),
        (dict(bmax=None), "bmax: not set"),
    ],
)
def test_bad_config_raises_value_error_naming_the_field(config, message):
    with pytest.raises(ValueError, match=message):
        LeadConfig(**config)


def test_float_group_ids_are_refused():
    with pytest.raises(ValueError, match="group_ids"):
        lead_step(T([1.0, 2.0]), T([1.0, 0.0]), T([0.0, 1.0]), config=LeadConfig(bmax=100))


def test_a_schedule_of_points_holds_each_value_until_the_next_point():
    weighting = {"kind": "schedule", "points": [[0, 0.2], [7, 0.64], [14, 0.7]]}
    got = [step(*_two_group_batch(), state=LeadState(step=s), weighting=weighting, floor=1, bmax=100).w_corr
           for s in (0, 6, 7, 13, 14, 99)]
    assert got == pytest.approx([0.2, 0.2, 0.64, 0.64, 0.7, 0.7])
    assert LeadConfig(weighting=weighting, bmax=100).model_dump()["weighting"] == {
        "kind": "schedule", "points": [(0, 0.2), (7, 0.64), (14, 0.7)]}
