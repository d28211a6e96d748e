"""Median time of ``lead_step`` and of every registered length reward on CPU, against
straightforward per-group Python loops.

    python benchmarks/lead_step.py [--repeats 200] [--threads 1]

Goals: ``lead_step`` under 2 ms for N = 1,024 (128 prompts x 8) on one core and at least 100x
faster than the loop below; each length reward under 1 ms at N = 1,024. The loops compute the
same formulas one group and one rollout at a time (they are this benchmark's baseline, and the
tests check that both agree).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from trainers.method.lead import LeadConfig, LeadState, PsiWeighting, lead_step
from trainers.method.rewards import LENGTH_REWARDS


def _loop_lead(lengths, scores, members, p):
    targets, r_eff = [0.0] * len(lengths), [0.0] * len(lengths)
    for idx in members.values():
        correct_lengths = sorted(lengths[i] for i in idx if scores[i] > 0.5)
        if p["aggregator"] == "mean_all":
            lstar = min(max(sum(lengths[i] for i in idx) / len(idx), p["floor"]), p["bmax"])
        elif not correct_lengths:
            lstar = p["bmax"]
        else:
            if p["aggregator"] == "mean_correct":
                agg = sum(correct_lengths) / len(correct_lengths)
            elif p["aggregator"] == "min_correct":
                agg = correct_lengths[0]
            else:  # median_correct
                k = len(correct_lengths)
                agg = (correct_lengths[(k - 1) // 2] + correct_lengths[k // 2]) / 2
            lstar = min(max(agg, p["floor"]), p["bmax"])
        for i in idx:
            targets[i] = lstar
            ratio = 1 - lengths[i] / lstar
            if p["lstar_mode"] == "sym":
                r_eff[i] = max(-1.0, 1 - abs(lengths[i] - lstar) / lstar)
            elif p["lstar_mode"] == "upper_only":
                r_eff[i] = max(-1.0, min(0.0, ratio))
            elif scores[i] > 0.5:
                r_eff[i] = 0.0 if lengths[i] < p["short_guard"] else max(0.0, ratio)
            else:
                r_eff[i] = min(0.0, max(-1.0, ratio))
    return r_eff, targets


def _loop_shorter_better(lengths, scores, members, p):
    targets, r = [0.0] * len(lengths), [0.0] * len(lengths)
    for idx in members.values():
        correct_lengths = [lengths[i] for i in idx if scores[i] > 0.5]
        sol = min(correct_lengths) if correct_lengths else sum(lengths[i] for i in idx) / len(idx)
        for i in idx:
            targets[i] = sol
            r[i] = max(-1.0, -abs(lengths[i] - sol) / p["bmax"])
    return r, targets


def _loop_kimi(lengths, scores, members, p):
    r = [0.0] * len(lengths)
    for idx in members.values():
        lo, hi = min(lengths[i] for i in idx), max(lengths[i] for i in idx)
        for i in idx:
            lam = 0.0 if hi == lo else 0.5 - (lengths[i] - lo) / (hi - lo)
            r[i] = lam if scores[i] > 0.5 else min(0.0, lam)
    return r, None


def _loop_arora_zanette(lengths, scores, members, p):
    r = [0.0] * len(lengths)
    for idx in members.values():
        correct = [i for i in idx if scores[i] > 0.5]
        if not correct:
            continue
        mean = sum(lengths[i] for i in correct) / len(correct)
        std = math.sqrt(sum((lengths[i] - mean) ** 2 for i in correct) / len(correct))
        for i in correct:
            z = 0.0 if std == 0 else (lengths[i] - mean) / std
            r[i] = -1 / (1 + math.exp(-z))
    return r, None


def _loop_overlong(lengths, scores, members, p):
    start = p["max_len"] - p["cache_len"]
    r = [0.0 if x <= start else (start - x) / p["cache_len"] if x <= p["max_len"] else -1.0 for x in lengths]
    return r, None


def _loop_threshold(lengths, scores, members, p):
    return [1.0 if x <= p["threshold"] else 0.0 for x in lengths], None


# the per-group loop of every registered reward: (r_len, per-rollout targets or None)
LOOP_REWARDS = {
    "lead": _loop_lead,
    "shorter_better": _loop_shorter_better,
    "kimi": _loop_kimi,
    "arora_zanette": _loop_arora_zanette,
    "overlong": _loop_overlong,
    "threshold": _loop_threshold,
}
# settings each reward is benchmarked and checked with (lengths 200..8000)
BENCH_PARAMS = {
    "lead": {},
    "shorter_better": {},
    "kimi": {},
    "arora_zanette": {},
    "overlong": {"max_len": 7000, "cache_len": 2000},
    "threshold": {"threshold": 2000},
}


def loop_lead_step(
    lengths, correctness, group_ids, config: LeadConfig, state: LeadState | None = None, as_floats: bool = False
):
    """The LEAD step written as plain Python loops over groups and rollouts (no memory).

    With ``as_floats`` the inputs become Python lists first; otherwise each element is a 0-d tensor.
    """
    state = state or LeadState()
    scores, groups = correctness, group_ids.tolist()
    if as_floats:
        lengths, scores = lengths.tolist(), correctness.tolist()
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    reward = LENGTH_REWARDS[config.length_reward]
    r_eff, targets = LOOP_REWARDS[config.length_reward](lengths, scores, members, config.reward_params)

    def spread(values, keep):
        means, variances = [], []
        for idx in members.values():
            vals = [values[i] for i in idx if keep(i)]
            if vals:
                m = sum(vals) / len(vals)
                means.append(m)
                variances.append(sum((v - m) ** 2 for v in vals) / len(vals))
        if not means:
            return 0.0, 0.0
        mu = sum(means) / len(means)
        between = sum((m - mu) ** 2 for m in means) / len(means)
        return mu, math.sqrt(sum(variances) / len(variances) + between + 1e-8)

    weighting = config.weighting
    psi = weighting if weighting.kind == "psi" else PsiWeighting()
    mu_c, sigma_c = spread(scores, lambda i: True)
    mu_e, sigma_e = spread(r_eff, lambda i: scores[i] > 0.5)
    eps, low, high = psi.eps, reward.low, reward.high
    cv_c, cv_e = sigma_c / (abs(mu_c) + eps), sigma_e / (abs(mu_e) + eps)
    d_c = cv_c / (cv_c + cv_e + eps) * (1 - min(max(mu_c, 0.0), 1.0)) ** psi.alpha
    d_e = cv_e / (cv_c + cv_e + eps) * (1 - (min(max(mu_e, low), high) - low) / (high - low)) ** psi.alpha
    if weighting.kind == "psi":
        carried = state.weighting if state.weighting is not None else psi.initial_state()
        ema_c = psi.beta * carried["w_corr_ema"] + (1 - psi.beta) * d_c / (d_c + d_e + eps)
        w_c = max(ema_c, psi.lambda_min)
    elif weighting.kind == "static":
        w_c = weighting.w_corr
    else:
        w_c = weighting.w_corr_at(state.step)
    w_e = 1 - w_c

    def normalize(values):
        out = [0.0] * len(values)
        for idx in members.values():
            vals = [values[i] for i in idx]
            if len(vals) == 1:
                mean, std = 0.0, 1.0
            else:
                mean = sum(vals) / len(vals)
                std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
            for i in idx:
                out[i] = (values[i] - mean) / (std + 1e-6)
        return out

    if config.advantage.kind == "decoupled":
        adv_c, adv_e = normalize(scores), normalize(r_eff)
        advantages = [w_c * a + w_e * b for a, b in zip(adv_c, adv_e)]
    else:
        advantages = normalize([w_c * c + w_e * e for c, e in zip(scores, r_eff)])
    return {"targets": targets, "r_eff": r_eff, "advantages": advantages, "w_corr": w_c, "w_eff": w_e}


def make_batch(num_prompts: int, rollouts: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = num_prompts * rollouts
    lengths = torch.randint(200, 8000, (n,), generator=g).to(torch.float32)
    correctness = (torch.rand(n, generator=g) < 0.55).to(torch.float32)
    labels = torch.randperm(10 * num_prompts, generator=g)[:num_prompts] * 7919
    group_ids = labels.repeat_interleave(rollouts)[torch.randperm(n, generator=g)]
    return lengths, correctness, group_ids


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 = one core)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = LeadConfig(floor=1000, bmax=8000)
    print(f"lead_step on CPU, {args.threads} thread(s), median of {args.repeats} calls")
    print(
        f"{'N':>7} {'prompts x n':>12} {'lead_step ms':>13} {'tensor loop ms':>15} {'speed-up':>9} "
        f"{'float loop ms':>14} {'speed-up':>9}"
    )
    for num_prompts, rollouts in SIZES:
        batch = make_batch(num_prompts, rollouts)
        fast = median_seconds(lambda: lead_step(*batch, config=config), args.repeats)
        loop_repeats = max(3, args.repeats // 40)
        tensor_loop = median_seconds(lambda: loop_lead_step(*batch, config=config), loop_repeats)
        float_loop = median_seconds(lambda: loop_lead_step(*batch, config=config, as_floats=True), loop_repeats)
        print(
            f"{num_prompts * rollouts:>7} {f'{num_prompts} x {rollouts}':>12} {fast * 1e3:>13.3f} "
            f"{tensor_loop * 1e3:>15.1f} {tensor_loop / fast:>8.0f}x {float_loop * 1e3:>14.2f} {float_loop / fast:>8.1f}x"
        )
    print(f"\nevery registered length reward alone (goal: under 1 ms at N = 1,024 on one core), median of {args.repeats}")
    print(f"{'reward':>16} " + " ".join(f"{f'N={p * r} ms':>13} {'float loop ms':>14}" for p, r in SIZES))
    for name, fn in LENGTH_REWARDS.items():
        params = {**dict(floor=1000.0, bmax=8000.0), **BENCH_PARAMS[name]}
        params = {k: v for k, v in params.items() if k in fn.params.model_fields}
        cells = []
        for num_prompts, rollouts in SIZES:
            batch = make_batch(num_prompts, rollouts)
            fast = median_seconds(lambda: fn(*batch, **params), args.repeats)
            lengths, scores, ids = batch[0].tolist(), batch[1].tolist(), batch[2].tolist()
            members: dict[int, list[int]] = {}
            for i, g in enumerate(ids):
                members.setdefault(g, []).append(i)
            full = fn.params.model_validate(params).model_dump()
            loop = median_seconds(lambda: LOOP_REWARDS[name](lengths, scores, members, full), max(3, args.repeats // 40))
            cells.append(f"{fast * 1e3:>13.3f} {loop * 1e3:>14.2f}")
        print(f"{name:>16} " + " ".join(cells))


SIZES = ((128, 8), (2048, 8))


if __name__ == "__main__":
    main()
