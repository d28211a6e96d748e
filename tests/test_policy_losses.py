"""Policy losses (``trainers.actor.losses``): each entry against a plain-Python loop and against
verl's own formulas (``tests/fixtures/verl_core_algos.py``) on random batches; the log-ratio clamp;
the two clip metrics; the ``budget`` aggregation's relation to verl's ``seq-mean-token-sum-norm``."""

import math
from types import SimpleNamespace

import pytest
import torch

from tests.fixtures import verl_core_algos as verl
from trainers.actor.aggregation import LOSS_AGGREGATIONS
from trainers.actor.losses import POLICY_LOSSES, clipped_objective


def batch(seed: int, rows: int = 6, tokens: int = 9, spread: float = 2.0):
    generator = torch.Generator().manual_seed(seed)
    logp = -torch.rand(rows, tokens, generator=generator, dtype=torch.float64) * 3
    old = logp + (torch.rand(rows, tokens, generator=generator, dtype=torch.float64) - 0.5) * spread
    adv = (torch.rand(rows, 1, generator=generator, dtype=torch.float64) - 0.5) * 4 * torch.ones(rows, tokens, dtype=torch.float64)
    lengths = torch.randint(1, tokens + 1, (rows,), generator=generator)
    mask = (torch.arange(tokens)[None, :] < lengths[:, None]).double()
    return logp, old, adv, mask


def train_settings(clip_c=None, low=0.2, high=0.28):
    return SimpleNamespace(clip_ratio=low, clip_ratio_high=high, clip_ratio_c=clip_c)


def loop_ppo_clip(logp, old, adv, low, high, clip_c):
    ratio = math.exp(min(max(logp - old, -20.0), 20.0))
    loss = max(-adv * ratio, -adv * min(max(ratio, 1 - low), 1 + high))
    return min(loss, -adv * clip_c) if clip_c is not None and adv < 0 else loss


@pytest.mark.parametrize("clip_c", [None, 3.0])
def test_ppo_clip_is_the_plain_loop_and_verls_vanilla_loss(clip_c):
    logp, old, adv, mask = batch(1)
    loss, outside, clipped = POLICY_LOSSES["ppo_clip"](logp, old, adv, mask, train_settings(clip_c))
    slow = [[loop_ppo_clip(*args, 0.2, 0.28, clip_c) for args in zip(*rows)]
            for rows in zip(logp.tolist(), old.tolist(), adv.tolist())]
    assert torch.allclose(loss, torch.tensor(slow, dtype=torch.float64), atol=1e-12, rtol=0)
    if clip_c is not None:  # verl always applies its dual clip
        theirs, clipfrac = verl.vanilla(old, logp, adv, mask, 0.2, 0.28, clip_c)
        assert torch.allclose(loss, theirs, atol=1e-12, rtol=0)
        assert float(verl.masked_mean(clipped.double(), mask)) == pytest.approx(float(clipfrac), abs=1e-12)


def test_no_log_ratio_gives_a_loss_of_1e12():
    """Without the dual clip, a token with a negative advantage and a log-ratio of 29 had a loss of
    -A exp(29) (6e12 at A = -1.5); the log-ratio is clamped at +-20 as verl clamps it."""
    logp, old = torch.tensor([[0.0, -1.0]]), torch.tensor([[-29.0, -40.0]])
    adv, mask = torch.tensor([[-1.5, -1.5]]), torch.ones(1, 2)
    loss, _, _ = POLICY_LOSSES["ppo_clip"](logp, old, adv, mask, train_settings(None))
    assert loss.flatten().tolist() == pytest.approx([1.5 * math.exp(20.0)] * 2, rel=1e-6) and loss.max() < 1e9


def test_the_two_clip_metrics_differ_and_pg_clipfrac_is_verls():
    """``outside``: the ratio left the band; ``clipped``: the clipped term is the larger loss (verl's
    ``pg_clipfrac``). A positive advantage with a ratio below the band is outside but not clipped."""
    ratio, adv = torch.tensor([1.5, 0.5, 1.5, 0.5, 1.0]), torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0])
    _, outside, clipped = clipped_objective(ratio, adv, 0.2, 0.2)
    assert outside.tolist() == [True, True, True, True, False]
    assert clipped.tolist() == [True, False, False, True, False]
    logp, old, adv, mask = batch(2, spread=1.5)
    _, outside, clipped = POLICY_LOSSES["ppo_clip"](logp, old, adv, mask, train_settings(3.0))
    _, clipfrac = verl.vanilla(old, logp, adv, mask, 0.2, 0.28)
    assert float(verl.masked_mean(clipped.double(), mask)) == pytest.approx(float(clipfrac), abs=1e-12)
    assert float(verl.masked_mean(outside.double(), mask)) > float(clipfrac)


def loop_gspo(logp, old, adv, mask, low, high):
    out = []
    for lp, op, a, m in zip(logp, old, adv, mask):
        length = max(sum(m), 1.0)
        s = math.exp(min(sum((x - y) * w for x, y, w in zip(lp, op, m)) / length, 10.0))
        out.append([max(-ai * s, -ai * min(max(s, 1 - low), 1 + high)) for ai in a])
    return out


def test_gspo_is_the_plain_loop_and_verls_gspo_in_value_and_gradient():
    logp, old, adv, mask = batch(3)
    ours_logp, theirs_logp = logp.clone().requires_grad_(), logp.clone().requires_grad_()
    loss, _, clipped = POLICY_LOSSES["gspo"](ours_logp, old, adv, mask, train_settings())
    theirs, clipfrac = verl.gspo(old, theirs_logp, adv, mask, 0.2, 0.28)
    slow = loop_gspo(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.28)
    assert torch.allclose(loss, torch.tensor(slow, dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.allclose(loss, theirs, atol=1e-12, rtol=0)
    assert float(verl.masked_mean(clipped.double(), mask)) == pytest.approx(float(clipfrac), abs=1e-12)
    (loss * mask).sum().backward()
    (theirs * mask).sum().backward()
    assert torch.allclose(ours_logp.grad, theirs_logp.grad, atol=1e-12, rtol=0)


def test_gspo_clips_whole_sequences():
    """Every token of a sequence shares its ratio: a sequence is clipped as one."""
    logp, old, adv, mask = batch(4, spread=1.0)
    _, outside, _ = POLICY_LOSSES["gspo"](logp, old, adv, mask, train_settings())
    for row in range(logp.shape[0]):
        assert len(set(outside[row].tolist())) == 1


def test_budget_is_verls_seq_mean_token_sum_norm_over_the_number_of_sequences():
    logp, old, adv, mask = batch(6)
    loss, _, _ = POLICY_LOSSES["ppo_clip"](logp, old, adv, mask, train_settings())
    budget, rows = 9, logp.shape[0]
    ours = (loss * mask).sum() / LOSS_AGGREGATIONS["budget"](int(mask.sum()), rows, budget)
    theirs = verl.agg_loss(loss, mask, "seq-mean-token-sum-norm", loss_scale_factor=budget)
    assert float(theirs) == pytest.approx(rows * float(ours), rel=1e-12)
    ours_mean = (loss * mask).sum() / LOSS_AGGREGATIONS["token_mean"](int(mask.sum()), rows, budget)
    assert float(ours_mean) == pytest.approx(float(verl.agg_loss(loss, mask, "token-mean")), rel=1e-12)


def test_a_dual_clip_under_a_loss_without_one_is_refused():
    from pydantic import ValidationError

    from trainers.config import OptimConfig

    assert OptimConfig(policy_loss="gspo").policy_loss == "gspo"
    with pytest.raises(ValidationError, match="clip_ratio_c: the gspo policy loss has no dual clip"):
        OptimConfig(policy_loss="gspo", clip_ratio_c=3.0)
    with pytest.raises(ValidationError, match="unknown policy loss 'gpo'"):
        OptimConfig(policy_loss="gpo")
    assert "policy_loss" not in OptimConfig().model_dump()  # the default keeps old configs' hashes
