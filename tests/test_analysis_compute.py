"""Per-arm statistics, PSI against the best static arm, and the Pareto frontier, worked by hand."""

import math

import pyarrow as pa
import pytest

from analysis.compute import arm_summary, pareto_front, psi_versus_best_static


def runs_table():
    rows = [
        # arm, variant, weighting, accuracy, length, aes
        ("psi", "psi", "psi", 0.80, 50.0, 1.2),
        ("psi", "psi", "psi", 0.90, 40.0, 1.6),
        ("static", "ratio0", "static", 0.85, 60.0, 1.0),
        ("static", "ratio0", "static", 0.75, 70.0, 0.6),
        ("static", "ratio1", "static", 0.60, 30.0, 0.5),
        ("grpo", "wc0.5", "static", 0.50, 80.0, -1.0),
    ]
    arm, variant, weighting, acc, length, aes = zip(*rows)
    return pa.table(
        {
            "arm": list(arm),
            "variant": list(variant),
            "param.lead.weighting": list(weighting),
            "final/eval/accuracy": list(acc),
            "final/eval/response_length": list(length),
            "final/eval/aes": list(aes),
        }
    )


def test_arm_summary_means_and_sample_std_over_seeds():
    rows = {(r["arm"], r["variant"]): r for r in arm_summary(runs_table()).to_pylist()}
    psi = rows[("psi", "psi")]
    assert psi["seeds"] == 2
    assert psi["accuracy_mean"] == pytest.approx(0.85) and psi["length_mean"] == pytest.approx(45.0)
    assert psi["aes_std"] == pytest.approx(math.sqrt(2 * 0.2**2))  # values 1.2, 1.6: sample std = 0.2828
    assert rows[("static", "ratio1")]["aes_std"] is None  # one seed: no spread
    assert list(rows) == sorted(rows)


def test_psi_against_the_best_static_arm():
    result = psi_versus_best_static(arm_summary(runs_table()))
    # static means: ratio0 0.8, ratio1 0.5, grpo -1.0 -> best ratio0; PSI mean 1.4 -> gap 0.6
    assert (result["best_static"]["arm"], result["best_static"]["variant"]) == ("static", "ratio0")
    assert result["psi_minus_best_static_aes"] == pytest.approx(0.6)


def test_pareto_front_keeps_only_undominated_arms():
    # means: psi (0.85, 45), static ratio0 (0.80, 65), ratio1 (0.60, 30), grpo (0.50, 80)
    # ratio0 and grpo are dominated by psi; ratio1 is the shortest
    assert pareto_front(arm_summary(runs_table())) == [("psi", "psi"), ("static", "ratio1")]


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
