"""DLER, GFPO, Dr. GRPO and DAPO's dynamic sampling: each registry entry against a slow plain-Python
version of its formula, on random batches with ragged groups, groups of one, and all-correct and
all-wrong groups (agreement to 1e-10); and the bad settings each refuses in one line."""

import math
import random

import pytest
import torch

from trainers.actor.aggregation import LOSS_AGGREGATIONS
from trainers.actor.losses import clipped_objective
from trainers.config import TrainConfig
from trainers.loop.group_filters import GROUP_FILTERS, Drawn, concat
from trainers.method.advantages import ADVANTAGES, WeightedRewards, group_normalize
from trainers.method.segments import Groups
from trainers.settings import format_errors


def ragged_batch(seed: int, groups: int = 12):
    """Per-group sizes 1..10 and scores: some groups all right, some all wrong, some mixed."""
    rng = random.Random(seed)
    sizes = [1, 1, *(rng.randint(2, 10) for _ in range(groups - 2))]
    lengths, scores, group = [], [], []
    for g, size in enumerate(sizes):
        kind = g % 4  # 0 all right, 1 all wrong, 2-3 mixed
        for _ in range(size):
            lengths.append(rng.randint(1, 160))
            scores.append(1.0 if kind == 0 else 0.0 if kind == 1 else float(rng.random() < 0.5))
            group.append(g)
    return lengths, scores, group


def members(group: list[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, g in enumerate(group):
        out.setdefault(g, []).append(i)
    return out


# --------------------------------------------------------------------------- centered advantage


def loop_centered(r_corr, r_eff, group, w_corr):
    combined = [w_corr * c + (1 - w_corr) * e for c, e in zip(r_corr, r_eff)]
    out = [0.0] * len(combined)
    for rows in members(group).values():
        mean = sum(combined[i] for i in rows) / len(rows) if len(rows) > 1 else 0.0
        for i in rows:
            out[i] = combined[i] - mean
    return out


def weighted_batch(seed: int):
    """A ragged batch's scores, a random length reward and weight, its groups, and the ``WeightedRewards``."""
    lengths, scores, group = ragged_batch(seed)
    rng = random.Random(seed + 100)
    r_eff = [rng.uniform(-1, 1) for _ in lengths]
    w_corr = rng.uniform(0, 1)
    t = lambda values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
    groups = Groups.of(torch.tensor(group))
    batch = WeightedRewards(t(scores), t(r_eff), group_normalize(t(scores), groups), group_normalize(t(r_eff), groups),
                            t(w_corr), 1 - t(w_corr), groups)
    return scores, r_eff, w_corr, group, batch


@pytest.mark.parametrize("seed", range(5))
def test_centered_advantage_is_the_reward_minus_its_group_mean(seed):
    scores, r_eff, w_corr, group, batch = weighted_batch(seed)
    fast = ADVANTAGES["centered"](batch).tolist()
    assert fast == pytest.approx(loop_centered(scores, r_eff, group, w_corr), abs=1e-10, rel=0)


def loop_rloo(r_corr, r_eff, group, w_corr):
    """Each rollout's reward minus the mean of the other rollouts of its group; alone: its reward."""
    combined = [w_corr * c + (1 - w_corr) * e for c, e in zip(r_corr, r_eff)]
    out = list(combined)
    for rows in members(group).values():
        if len(rows) > 1:
            for i in rows:
                out[i] = combined[i] - sum(combined[j] for j in rows if j != i) / (len(rows) - 1)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_rloo_is_the_leave_one_out_loop_and_verls_rloo(seed):
    from tests.fixtures import verl_core_algos as verl

    scores, r_eff, w_corr, group, batch = weighted_batch(seed)
    fast = ADVANTAGES["rloo"](batch)
    assert fast.tolist() == pytest.approx(loop_rloo(scores, r_eff, group, w_corr), abs=1e-10, rel=0)
    rewards = torch.tensor([w_corr * c + (1 - w_corr) * e for c, e in zip(scores, r_eff)], dtype=torch.float64)
    theirs, _ = verl.rloo(rewards[:, None].clone(), torch.ones(len(rewards), 1, dtype=torch.float64), group)
    assert fast.tolist() == pytest.approx(theirs[:, 0].tolist(), abs=1e-10, rel=0)


# --------------------------------------------------------------------------- loss aggregation and dual clip


def loop_budget_loss(token_losses: list[list[float]], budget: int) -> float:
    """Dr. GRPO: each sequence's summed loss over the budget, then the mean over sequences."""
    return sum(sum(seq) / budget for seq in token_losses) / len(token_losses)


def loop_token_mean_loss(token_losses: list[list[float]]) -> float:
    return sum(sum(seq) for seq in token_losses) / sum(len(seq) for seq in token_losses)


@pytest.mark.parametrize("seed", range(5))
def test_loss_aggregations_agree_with_their_formulas(seed):
    rng = random.Random(seed)
    token_losses = [[rng.uniform(-2, 2) for _ in range(rng.randint(1, 30))] for _ in range(rng.randint(1, 9))]
    tokens, rows, budget = sum(len(s) for s in token_losses), len(token_losses), 40
    total = sum(sum(s) for s in token_losses)
    assert total / LOSS_AGGREGATIONS["budget"](tokens, rows, budget) == pytest.approx(
        loop_budget_loss(token_losses, budget), abs=1e-10, rel=0)
    assert total / LOSS_AGGREGATIONS["token_mean"](tokens, rows, budget) == pytest.approx(
        loop_token_mean_loss(token_losses), abs=1e-10, rel=0)


def loop_dual_clip(ratio: float, adv: float, low: float, high: float, clip_c: float | None) -> float:
    clipped = min(max(ratio, 1 - low), 1 + high)
    loss = max(-adv * ratio, -adv * clipped)
    if clip_c is not None and adv < 0:
        loss = min(loss, -adv * clip_c)
    return loss


@pytest.mark.parametrize("clip_c", [None, 3.0, 10.0])
def test_dual_clip_bounds_the_loss_of_negative_advantages(clip_c):
    rng = random.Random(7)
    ratios = [math.exp(rng.uniform(-3, 3)) for _ in range(400)]
    advs = [rng.uniform(-2, 2) for _ in ratios]
    fast, _, _ = clipped_objective(torch.tensor(ratios, dtype=torch.float64), torch.tensor(advs, dtype=torch.float64),
                                0.2, 0.28, clip_c)
    slow = [loop_dual_clip(r, a, 0.2, 0.28, clip_c) for r, a in zip(ratios, advs)]
    assert fast.tolist() == pytest.approx(slow, abs=1e-10, rel=0)
    if clip_c is not None:  # it binds somewhere: large ratios on negative advantages
        assert any(r > clip_c and a < 0 for r, a in zip(ratios, advs))


# --------------------------------------------------------------------------- group filters


def drawn_of(lengths, scores, group, width: int = 4) -> Drawn:
    n = len(lengths)
    num_groups = max(group) + 1
    return Drawn([f"problem{g}" for g in range(num_groups)], [[g + 3] for g in range(num_groups)],
                 torch.tensor(group), torch.arange(n * width).view(n, width), torch.tensor(lengths),
                 torch.zeros(n, dtype=torch.bool), torch.zeros(n, width), torch.tensor(scores, dtype=torch.float64))


def loop_gfpo(lengths, scores, group, keep, metric):
    """GFPO's selection, one group at a time: sort by the metric (then length, then row), keep the first k."""
    kept = []
    by_group = members(group)
    means = {g: sum(scores[i] for i in rows) / len(rows) for g, rows in by_group.items()}
    ordered = sorted(means.values())
    for g, rows in by_group.items():
        if keep == "adaptive":
            rank = sum(1 for m in means.values() if m < means[g])
            quartile = min(3, 4 * rank // len(ordered))
            k = min(len(rows), max(1, round([0.5, 0.5, 0.375, 0.25][quartile] * len(rows))))
        else:
            k = min(keep, len(rows))
        key = (lambda i: (lengths[i], i)) if metric == "length" else (lambda i: (-scores[i] / max(lengths[i], 1), lengths[i], i))
        kept += sorted(rows, key=key)[:k]
    return sorted(kept)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("keep, metric", [(1, "length"), (3, "length"), (4, "token_efficiency"), ("adaptive", "length")])
def test_gfpo_keeps_what_its_per_group_loop_keeps(seed, keep, metric):
    lengths, scores, group = ragged_batch(seed)
    drawn = drawn_of(lengths, scores, group)
    kept = GROUP_FILTERS["gfpo"](keep=keep, metric=metric).select(drawn, lambda r: pytest.fail("no more rounds"), 12)
    rows = loop_gfpo(lengths, scores, group, keep, metric)
    assert kept.lengths.tolist() == [lengths[i] for i in rows]
    assert kept.scores.tolist() == [scores[i] for i in rows]
    assert kept.response_ids.tolist() == drawn.response_ids[rows].tolist()
    # groups renumbered in order, each kept group's prompt with it
    assert [kept.prompts[g] for g in kept.group.tolist()] == [drawn.prompts[group[i]] for i in rows]


def test_gfpo_advantages_come_from_the_kept_subset_alone():
    """What lead_step sees after the filter: a group's advantages are normalized over its kept rollouts."""
    lengths, scores, group = [10, 20, 30, 40], [1.0, 0.0, 1.0, 0.0], [0, 0, 0, 0]
    kept = GROUP_FILTERS["gfpo"](keep=3).select(drawn_of(lengths, scores, group), None, 1)
    r = kept.scores
    expected = [(s - r.mean().item()) / (r.std().item() + 1e-6) for s in r.tolist()]
    got = group_normalize(r, Groups.of(kept.group)).tolist()
    assert kept.lengths.tolist() == [10, 20, 30] and got == pytest.approx(expected, abs=1e-10, rel=0)


def loop_dynamic_sampling(rounds: list[tuple[list, list, list]], wanted: int, max_rounds: int):
    """DAPO: keep the groups whose scores vary (or of one rollout), round after round, then the first ``wanted``."""
    kept, used = [], 0
    for lengths, scores, group in rounds[:max_rounds]:
        used += 1
        for g, rows in members(group).items():
            if len(rows) == 1 or len({scores[i] for i in rows}) > 1:
                kept.append([(lengths[i], scores[i]) for i in rows])
        if len(kept) >= wanted:
            break
    return [pair for rows in kept[:wanted] for pair in rows], used


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("wanted, max_rounds", [(4, 1), (6, 2), (12, 5), (30, 3)])
def test_dynamic_sampling_keeps_what_its_loop_keeps(seed, wanted, max_rounds):
    rounds = [ragged_batch(seed * 10 + r) for r in range(5)]
    asked = []

    def draw(round_: int) -> Drawn:
        asked.append(round_)
        return drawn_of(*rounds[round_])

    kept = GROUP_FILTERS["dynamic_sampling"](max_rounds=max_rounds).select(draw(0), draw, wanted)
    expected, used = loop_dynamic_sampling(rounds, wanted, max_rounds)
    assert list(zip(kept.lengths.tolist(), kept.scores.tolist())) == expected
    assert asked == list(range(used))  # the rounds it drew, in order, and no more than it needed


def test_a_filter_that_keeps_nothing_returns_an_empty_batch():
    all_right = drawn_of([5, 6, 7], [1.0, 1.0, 1.0], [0, 0, 0])
    kept = GROUP_FILTERS["dynamic_sampling"](max_rounds=2).select(all_right, lambda r: all_right, 4)
    assert kept.num_groups == 0 and kept.lengths.numel() == 0


def test_concat_renumbers_groups_and_pads_responses():
    a, b = drawn_of([1, 2], [1.0, 0.0], [0, 0], width=2), drawn_of([3], [1.0], [0], width=5)
    both = concat([a, b])
    assert both.group.tolist() == [0, 0, 1] and both.response_ids.shape == (3, 5) and both.prompts == [[3], [3]]


# --------------------------------------------------------------------------- bad settings


@pytest.mark.parametrize("settings, message", [
    ({"rollout": {"n": 4, "group_filter": {"kind": "gfpo", "keep": 5}}},
     "rollout.group_filter.keep: keeps 1 to rollout.n (4) responses per prompt, got 5"),
    ({"rollout": {"group_filter": {"kind": "dynamic_sampling", "max_rounds": 0}}},
     "rollout.group_filter.max_rounds: Input should be greater than or equal to 1"),
    ({"train": {"clip_ratio_c": 1.0}}, "train.clip_ratio_c: Input should be greater than 1"),
    ({"rollout": {"group_filter": {"kind": "longest"}}}, "rollout.group_filter: unknown group filter 'longest'"),
    ({"train": {"loss_aggregation": "seq_mean"}}, "train.loss_aggregation: unknown loss aggregation 'seq_mean'"),
])
def test_bad_filter_and_loss_settings_name_their_key(settings, message):
    with pytest.raises(Exception) as error:
        TrainConfig.model_validate(settings)
    assert format_errors(error.value)[0].startswith(message)


def test_a_smoke_test_keeps_fewer_than_its_rollouts_per_prompt():
    config = TrainConfig.model_validate({"rollout": {"n": 16, "group_filter": {"kind": "gfpo", "keep": 8}},
                                         "model": {"path": None}})
    assert config.smoke().rollout.group_filter.keep == 1  # smoke: 2 rollouts per prompt
