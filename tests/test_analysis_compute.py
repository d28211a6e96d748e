"""Per-arm statistics and the Pareto frontier, worked by hand."""

import math

import numpy as np
import pyarrow as pa
import pytest

from analysis.compute import arm_summary, pareto_front


def runs_table():
    rows = [
        # arm, variant, reward, weighting, advantage, accuracy, length, aes
        ("psi", "psi", "lead", "psi", "decoupled", 0.80, 50.0, 1.2),
        ("psi", "psi", "lead", "psi", "decoupled", 0.90, 40.0, 1.6),
        ("static", "ratio0", "lead", "static", "decoupled", 0.85, 60.0, 1.0),
        ("static", "ratio0", "lead", "static", "decoupled", 0.75, 70.0, 0.6),
        ("static", "ratio1", "lead", "static", "decoupled", 0.60, 30.0, 0.5),
        ("grpo", "wc0.5", "threshold", "static", "combined", 0.50, 80.0, -1.0),
        ("psi-kimi", "psi", "kimi", "psi", "decoupled", 0.70, 40.0, 1.9),
    ]
    arm, variant, reward, weighting, advantage, acc, length, aes = zip(*rows)
    return pa.table(
        {
            "arm": list(arm),
            "variant": list(variant),
            "reward": list(reward),
            "weighting": list(weighting),
            "weight_motion": ["adaptive" if w == "psi" else "fixed" for w in weighting],
            "advantage": list(advantage),
            "final/eval/accuracy": list(acc),
            "final/eval/response_length": list(length),
            "final/eval/aes": list(aes),
        }
    )


def test_arm_summary_means_and_sample_std_over_seeds():
    rows = {(r["arm"], r["variant"]): r for r in arm_summary(runs_table()).to_pylist()}
    psi = rows[("psi", "psi")]
    assert psi["seeds"] == 2
    # two seeds, AES 1.2 and 1.6: resampled means 1.2, 1.4, 1.6 with chances 1/4, 1/2, 1/4
    assert (psi["aes_low"], psi["aes_high"]) == (pytest.approx(1.2), pytest.approx(1.6))
    assert rows[("static", "ratio1")]["aes_low"] is None  # one seed: no interval
    assert psi["accuracy_mean"] == pytest.approx(0.85) and psi["length_mean"] == pytest.approx(45.0)
    assert psi["aes_std"] == pytest.approx(math.sqrt(2 * 0.2**2))  # values 1.2, 1.6: sample std = 0.2828
    assert rows[("static", "ratio1")]["aes_std"] is None  # one seed: no spread
    # grouped by (reward, weighting): kimi/psi, lead/psi, lead/static, threshold/static
    assert list(rows) == [("psi-kimi", "psi"), ("psi", "psi"), ("static", "ratio0"), ("static", "ratio1"), ("grpo", "wc0.5")]


def test_the_summary_keeps_each_arms_reward_and_advantage_estimator():
    rows = {r["arm"]: r for r in arm_summary(runs_table()).to_pylist()}
    assert (rows["grpo"]["reward"], rows["grpo"]["weighting"], rows["grpo"]["advantage"]) == ("threshold", "static", "combined")


def test_pareto_front_keeps_only_undominated_arms():
    # means: psi (0.85, 45), static ratio0 (0.80, 65), ratio1 (0.60, 30), grpo (0.50, 80), psi-kimi (0.70, 40)
    # ratio0 and grpo are dominated by psi; ratio1 is the shortest; psi-kimi is shorter than psi, more accurate than ratio1
    assert pareto_front(arm_summary(runs_table())) == [("psi", "psi"), ("psi-kimi", "psi"), ("static", "ratio1")]


def test_weight_shape_finds_the_first_fall_and_the_settled_value():
    from analysis.compute import series, weight_shape

    values = [0.5, 0.6, 0.7, 0.65, 0.6, 0.62, 0.6, 0.6, 0.6, 0.6]  # rises, falls at step 4, settles at 0.6
    history = pa.table(
        {
            "run_id": ["r"] * 10 + ["s"] * 2,
            "trial": ["psi-s0"] * 10 + ["flat-s0"] * 2,
            "key": ["lead/w_corr"] * 12,
            "step": list(range(10, 0, -1)) + [1, 2],  # out of order on purpose
            "value": list(reversed(values)) + [0.5, 0.5],
        }
    )
    assert series(history, "lead/w_corr")["psi-s0"] == (list(range(1, 11)), values)
    shape = {r["trial"]: r for r in weight_shape(history).to_pylist()}
    psi = shape["psi-s0"]
    assert (psi["start"], psi["peak"], psi["first_fall_step"]) == (0.5, 0.7, 4)
    assert psi["settled"] == pytest.approx(0.6)  # mean of the last 2 of 10 steps
    assert shape["flat-s0"]["first_fall_step"] is None
    assert [r["trial"] for r in weight_shape(history, {"psi-s0"}).to_pylist()] == ["psi-s0"]


def test_lstar_against_minimal_length_at_each_trials_last_evaluation():
    from analysis.compute import lstar_versus_minimal

    rows = [
        # trial, step, problem, minimal, lstar, mean length, accuracy
        ("psi-s0", 5, 1, 10, 30.0, 40.0, 1.0),  # an earlier evaluation: ignored
        ("psi-s0", 10, 1, 10, 10.5, 12.0, 1.0),  # ratio 1.05: within 10%
        ("psi-s0", 10, 2, 20, 24.0, 26.0, 0.5),  # 1.2
        ("psi-s0", 10, 3, 20, 40.0, 44.0, 1.0),  # 2.0: above 1.5x
        ("psi-s0", 10, 4, 30, 160.0, 160.0, 0.0),  # never solved: left out of the ratios
    ]
    trial, step, problem, minimal, lstar, length, accuracy = zip(*rows)
    problems = pa.table({"run_id": ["r"] * 5, "trial": list(trial), "step": list(step), "problem_id": list(problem),
                         "minimal_length": [float(m) for m in minimal], "lstar": list(lstar),
                         "mean_length": list(length), "accuracy": list(accuracy), "truncated_fraction": [0.0] * 5})
    runs = pa.table({"trial": ["psi-s0"], "arm": ["psi"], "variant": ["psi"], "seed": [0]})
    (row,) = lstar_versus_minimal(problems, runs).to_pylist()
    assert (row["step"], row["problems"], row["unsolved"]) == (10, 4, 1)
    assert row["lstar_over_minimal"] == pytest.approx(1.2)
    assert row["length_over_minimal"] == pytest.approx(1.3)  # 1.2, 1.3, 2.2
    assert row["within_10pct"] == pytest.approx(1 / 3) and row["above_1p5x"] == pytest.approx(1 / 3)
    assert (row["arm"], row["seed"]) == ("psi", 0)
    # one sample per problem: L* is that sample's length, and the column that cannot differ goes
    one_sample = problems.set_column(problems.column_names.index("mean_length"), "mean_length", problems["lstar"])
    assert "length_over_minimal" not in lstar_versus_minimal(one_sample, runs).column_names


def history_table(rows):
    trial, key, step, value = zip(*rows)
    return pa.table({"trial": list(trial), "key": list(key), "step": list(step), "value": list(value)})


def test_a_members_effective_schedule_follows_its_exploits_back_to_their_donors():
    from trainers.contract import EXPLOIT_SCHEMA
    from analysis.population import effective_schedules

    key = "setting/lead.weighting.w_corr"
    own = {"a": [0.2, 0.2, 0.3, 0.3], "b": [0.8, 0.8, 0.8, 0.9], "c": [0.5, 0.5, 0.5, 0.6]}
    history = history_table([(t, key, step + 1, v) for t, values in own.items() for step, v in enumerate(values)])
    # a continued from b's step-2 checkpoint; c from a's step-3 checkpoint (which holds b's first two steps)
    exploits = pa.Table.from_pylist(
        [{"trial": "a", "step": 2, "donor": "b", "old": "{}", "new": "{}", "donor_settings": "{}"},
         {"trial": "c", "step": 3, "donor": "a", "old": "{}", "new": "{}", "donor_settings": "{}"}], EXPLOIT_SCHEMA)
    schedules = effective_schedules(history, exploits, key)
    assert schedules["b"] == ([1, 2, 3, 4], own["b"])
    assert schedules["a"] == ([1, 2, 3, 4], [0.8, 0.8, 0.3, 0.3])
    assert schedules["c"] == ([1, 2, 3, 4], [0.8, 0.8, 0.3, 0.6])


def test_compute_is_summed_per_trial_and_per_arm():
    from analysis.compute import compute_spent

    rows = []
    for trial, tokens in (("psi-s0", 10.0), ("pbt-a", 20.0), ("pbt-b", 30.0)):
        for step in (1, 2):
            rows += [(trial, "perf/rollout_tokens", step, tokens), (trial, "perf/train_tokens", step, 2 * tokens),
                     (trial, "perf/eval_tokens", step, 5.0 * (step == 2)), (trial, "perf/step_seconds", step, 1.5)]
    runs = pa.table({"trial": ["psi-s0", "pbt-a", "pbt-b"], "arm": ["psi", "pbt", "pbt"], "variant": ["psi", "a", "b"]})
    per_trial, per_arm = compute_spent(history_table(rows), runs)
    trials = {r["trial"]: r for r in per_trial.to_pylist()}
    assert trials["pbt-a"] == {"trial": "pbt-a", "arm": "pbt", "variant": "a", "steps": 2, "rollout_tokens": 40.0,
                               "train_tokens": 80.0, "eval_tokens": 5.0, "step_seconds": 3.0}
    arms = {r["arm"]: r for r in per_arm.to_pylist()}
    assert arms["pbt"]["trials"] == 2 and arms["pbt"]["rollout_tokens"] == 100.0 and arms["pbt"]["steps"] == 4
    assert arms["psi"]["train_tokens"] == 40.0 and arms["psi"]["step_seconds"] == 3.0


def test_eval_curves_start_at_the_base_model_and_band_the_seeds():
    from analysis.figures import _band_over_seeds, _from_the_base, pareto

    history = history_table([
        ("a-s0", "base/accuracy", 0, 0.5), ("a-s0", "eval/accuracy", 5, 0.6), ("a-s0", "eval/accuracy", 10, 0.7),
        ("a-s1", "base/accuracy", 0, 0.5), ("a-s1", "eval/accuracy", 5, 0.8), ("a-s1", "eval/accuracy", 10, 0.9),
        ("a-s0", "eval/aes", 5, 0.2), ("a-s1", "eval/aes", 5, 0.4),
    ])
    accuracy = _from_the_base(history, "eval/accuracy", "base/accuracy")
    assert accuracy["a-s0"] == ([0, 5, 10], [0.5, 0.6, 0.7])
    assert _from_the_base(history, "eval/aes", None)["a-s1"] == ([0, 5], [0.0, 0.4])  # AES of the base model: 0
    steps, mean, low, high = _band_over_seeds(accuracy, {"a-s0": "a", "a-s1": "a"})["a"]
    assert steps == [0, 5, 10] and mean == pytest.approx([0.5, 0.7, 0.8])
    assert (low[0], high[0]) == (0.5, 0.5) and low[1] == pytest.approx(0.6) and high[1] == pytest.approx(0.8)
    assert _band_over_seeds({"a-s0": ([0], [1.0])}, {"a-s0": "a"})["a"][2] == [None]  # one seed: no band
    summary = pa.table({"arm": ["static", "static"], "variant": ["ratio0.25", "ratio4"], "reward": ["lead"] * 2,
                        "weighting": ["static"] * 2, "weight_motion": ["fixed"] * 2, "accuracy_mean": [0.5, 0.6],
                        "length_mean": [50.0, 40.0], "accuracy_std": [None, None], "length_std": [None, None]})
    ax = pareto(summary, []).axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["static ratio0.25", "static ratio4"]  # every point named
    same_place = summary.set_column(summary.column_names.index("accuracy_mean"), "accuracy_mean", pa.array([0.5, 0.5]))
    same_place = same_place.set_column(same_place.column_names.index("length_mean"), "length_mean", pa.array([45.0, 45.0]))
    together = pareto(same_place, []).axes[0]
    assert [t.get_text() for t in together.texts] == ["static ratio0.25, static ratio4"]  # one note where they meet
    colours = {tuple(line.get_color()) if not isinstance(line.get_color(), str) else line.get_color()
               for line in ax.lines if line.get_marker() == "o"}
    assert len(colours) == 2  # and coloured apart


def test_equal_rollout_tokens_take_each_trial_at_the_evaluation_nearest_the_cheapest_trials_total():
    from analysis.compute import equal_token_steps, final_problems

    # grpo: 100 tokens a step; gfpo: 200 (it samples twice as many); evaluations at steps 2, 4 and 6
    rows = [(t, "perf/rollout_tokens", step, per) for t, per in (("grpo-s0", 100.0), ("grpo-s1", 104.0), ("gfpo-s0", 200.0))
            for step in range(1, 7)]
    problems = pa.table({"trial": [t for t in ("grpo-s0", "grpo-s1", "gfpo-s0") for _ in (2, 4, 6)],
                         "step": [s for _ in range(3) for s in (2, 4, 6)], "problem_id": [1] * 9})
    budget, steps, tokens = equal_token_steps(history_table(rows), problems)
    assert budget == 600.0  # grpo-s0's six steps
    # grpo-s1 spent 624 by step 6 (nearest 600, not 416 at step 4); gfpo spent 400 at 2, 800 at 4: tie -> earlier
    assert steps == {"grpo-s0": 6, "grpo-s1": 6, "gfpo-s0": 2}
    assert tokens == {"grpo-s0": 600.0, "grpo-s1": 624.0, "gfpo-s0": 400.0}
    chosen = final_problems(problems, steps)
    assert sorted(zip(chosen["trial"].to_pylist(), chosen["step"].to_pylist())) == [
        ("gfpo-s0", 2), ("grpo-s0", 6), ("grpo-s1", 6)]


def _runs(differences_by_seed):
    """A runs table: psi scores 1 on every seed, 'other' scores 1 minus the given difference."""
    import trainers.contract as M

    rows = [{"arm": "psi", "variant": "", "seed": s, M.final_column(M.EVAL_AES): 1.0} for s in differences_by_seed]
    rows += [{"arm": "static", "variant": "wc0.5", "seed": s, M.final_column(M.EVAL_AES): 1.0 - d}
             for s, d in differences_by_seed.items()]
    return pa.Table.from_pylist(rows)


def test_a_seed_far_from_the_others_is_named_and_gaussian_seeds_rarely_are():
    from analysis.compute import OUTLYING, outlying_seeds

    collapsed = {0: 0.10, 1: 0.12, 2: 0.08, 3: 0.11, 4: 0.09, 5: -2.0}  # seed 5 fell apart
    assert outlying_seeds(_runs(collapsed), "psi") == {"static/wc0.5": [(5, -2.0)]}
    assert outlying_seeds(_runs({0: 0.1, 1: 0.2, 2: 5.0}), "psi") == {}  # three seeds: too few to say
    rng = np.random.default_rng(3)  # the rule's false alarms: about OUTLYING of Gaussian comparisons
    flagged = np.mean([bool(outlying_seeds(_runs(dict(enumerate(rng.normal(size=6)))), "psi")) for _ in range(2000)])
    assert flagged < OUTLYING + 3 * np.sqrt(OUTLYING / 2000) and flagged > 0.002
