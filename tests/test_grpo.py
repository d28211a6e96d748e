"""The GRPO trainer on the tiny model: the metric contract, exact resume, bad input."""

import json
import math

import pytest
import torch

from tests.conftest import tiny_config
from trainers import contract as M
from trainers.actor.losses import clipped_objective
from trainers.actor.update import kl_penalty
from trainers.loop import checkpoint
from trainers.loop.base_model import ModelLoadError
from trainers.loop.checkpoint import latest_checkpoint
from trainers.loop.group_filters import Drawn
from trainers.loop.grpo import build_run, build_sequences, train
from trainers.rollout.base import Rollouts


def run(config, output_dir, resume_from=None, build=build_run):
    reports = []
    final = train(config, output_dir, report=reports.append, resume_from=resume_from, log=lambda _: None, build=build)
    return reports, final


DYNAMIC_SAMPLING = {"rollout": {"group_filter": {"kind": "dynamic_sampling", "max_rounds": 3}}}


class ParityGraded:
    """A task graded by the parity of each response's length, and every response to a problem whose
    id is a multiple of 3 wrong: groups of mixed scores and all-wrong groups from a model too small
    to solve anything, so a group filter has something to keep and something to drop."""

    def __init__(self, task):
        self.task = task

    def __getattr__(self, name):
        return getattr(self.task, name)

    def grade(self, responses: list[str], problems: list) -> list[float]:
        return [float(len(response) % 2 == 0 and problem.id % 3 != 0) for response, problem in zip(responses, problems)]


class AllWrong(ParityGraded):
    def grade(self, responses: list[str], problems: list) -> list[float]:
        return [0.0] * len(responses)


def graded_by(wrapper):
    """``build_run`` with the task's grading replaced by ``wrapper``'s."""

    def build(config, stack, log):
        built = build_run(config, stack, log)
        built.task = wrapper(built.task)
        return built

    return build


parity_graded_run, all_wrong_run = graded_by(ParityGraded), graded_by(AllWrong)


def test_a_filter_that_keeps_nothing_skips_the_update_and_says_so(tiny_model_dir, cache_dir, tmp_path):
    """Every group all wrong: dynamic sampling spends its rounds, keeps nothing, and the step runs no
    LEAD step and no update (the policy is unchanged), reporting it, with NaN where nothing was computed."""
    config = tiny_config(cache_dir, train={"steps": 2}, eval={"every": 2}, **DYNAMIC_SAMPLING)
    reports, _ = run(config, tmp_path / "run", build=all_wrong_run)
    for report in reports:
        m = report.metrics
        assert (m[M.FILTER_ROUNDS], m[M.FILTER_KEPT_GROUPS], m[M.FILTER_SKIPPED_UPDATE]) == (3.0, 0.0, 1.0)
        assert math.isnan(m[M.lead("w_corr")]) and math.isnan(m[M.LOSS_POLICY]) and m[M.PERF_TRAIN_TOKENS] == 0.0
        assert m[M.PERF_ROLLOUT_TOKENS] > 0 and set(M.STEP_METRICS) <= set(m)
    assert reports[-1].metrics[M.EVAL_ACCURACY] == reports[-1].metrics[M.BASE_ACCURACY]  # the base model, untouched
    assert reports[-1].metrics[M.EVAL_RESPONSE_LENGTH] == reports[-1].metrics[M.BASE_RESPONSE_LENGTH]


def comparable(metrics):
    return {k: v for k, v in metrics.items() if not k.startswith("perf/")}


def same(a, b):
    return repr(comparable(a)) == repr(comparable(b))  # exact floats, NaN included


def test_every_step_reports_the_contract_and_evaluations_add_tables(tiny_model_dir, cache_dir, tmp_path):
    reports, final = run(tiny_config(cache_dir), tmp_path)
    assert [r.step for r in reports] == [1, 2, 3, 4]
    for r in reports:
        assert set(M.STEP_METRICS) <= set(r.metrics)
        assert all(isinstance(v, float) for v in r.metrics.values())
        assert 0.0 <= r.metrics[M.lead("w_corr")] <= 1.0
    evals = [r for r in reports if M.EVAL_ACCURACY in r.metrics]
    assert [r.step for r in evals] == [2, 4]
    for r in evals:
        assert set(M.EVAL_METRICS) <= set(r.metrics)
        table = r.tables["eval_problems"]
        assert table.num_rows == 12
        assert table.column_names[:5] == ["problem_id", "minimal_length", "lstar", "mean_length", "accuracy"]
    assert reports[-1].done and reports[-1].checkpoint_dir is not None
    assert final[M.EVAL_ACCURACY] == evals[-1].metrics[M.EVAL_ACCURACY]
    if final[M.BASE_ACCURACY] == 0:
        assert math.isnan(final[M.EVAL_AES])


@pytest.mark.parametrize("settings", [{}, DYNAMIC_SAMPLING], ids=["grpo", "dynamic_sampling"])
def test_a_resumed_run_repeats_the_uninterrupted_one_exactly(tiny_model_dir, cache_dir, tmp_path, settings):
    config = tiny_config(cache_dir, **settings)
    straight, _ = run(config, tmp_path / "straight", build=parity_graded_run)
    if settings:  # the filter drew further rounds and trained on what it kept
        rounds = [r.metrics[M.FILTER_ROUNDS] for r in straight]
        assert max(rounds) > 1 and min(r.metrics[M.FILTER_KEPT_GROUPS] for r in straight) > 0, rounds

    first_half = tiny_config(cache_dir, train={"steps": 2}, **settings)
    run(first_half, tmp_path / "stopped", build=parity_graded_run)
    checkpoint = latest_checkpoint(tmp_path / "stopped")
    assert checkpoint.name == "step_000002"
    resumed, _ = run(config, tmp_path / "stopped", resume_from=checkpoint, build=parity_graded_run)

    assert [r.step for r in resumed] == [3, 4]
    for a, b in zip(straight[2:], resumed):
        assert same(a.metrics, b.metrics), (a.step, comparable(a.metrics), comparable(b.metrics))
        for name in a.tables:
            assert a.tables[name].equals(b.tables[name])


def test_a_weighting_with_state_of_its_own_resumes_bit_for_bit(tiny_model_dir, cache_dir, tmp_path, fresh_registries):
    """The example plugin's controller keeps its w_corr as state: a run stopped at step 2 and
    resumed repeats the uninterrupted one exactly (the state came back from the checkpoint: every
    step's w_corr differs from the one before, so a reset would show)."""
    from pathlib import Path

    plugin = str(Path(__file__).resolve().parents[1] / "examples/plugins/my_method.py")
    settings = {"plugins": [plugin], "lead": {"weighting": {"kind": "accuracy_controller", "target": 0.6, "gain": 0.1}}}
    straight, _ = run(tiny_config(cache_dir, **settings), tmp_path / "straight", build=parity_graded_run)
    w_corr = [r.metrics[M.lead("w_corr")] for r in straight]
    assert len(set(w_corr)) == 4 and "lead/accuracy_error" in straight[0].metrics, w_corr

    run(tiny_config(cache_dir, train={"steps": 2}, **settings), tmp_path / "stopped", build=parity_graded_run)
    checkpoint = latest_checkpoint(tmp_path / "stopped")
    assert torch.load(checkpoint / "trainer_state.pt", weights_only=True)["lead_state"]["weighting"] == {"w_corr": w_corr[1]}
    resumed, _ = run(tiny_config(cache_dir, **settings), tmp_path / "stopped", resume_from=checkpoint, build=parity_graded_run)
    assert [r.step for r in resumed] == [3, 4]
    for a, b in zip(straight[2:], resumed):
        assert same(a.metrics, b.metrics), (a.step, comparable(a.metrics), comparable(b.metrics))


def test_a_missing_or_broken_model_directory_is_one_clear_error(cache_dir, tmp_path):
    with pytest.raises(ValueError, match="nowhere is not a model directory"):
        tiny_config(cache_dir, model={"path": str(tmp_path / "nowhere")})
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="model.path: cannot load .*broken"):
        run(tiny_config(cache_dir, model={"path": str(broken)}), tmp_path / "out")


def test_sequences_put_each_response_target_after_its_prompt():
    rollouts = Rollouts(
        response_ids=torch.tensor([[7, 8, 1], [9, 1, 0]]), lengths=torch.tensor([3, 2]),
        truncated=torch.tensor([False, False]), logprobs=torch.tensor([[-0.1, -0.2, -0.3], [-0.4, -0.5, 0.0]]),
    )
    drawn = Drawn.of([None], [[4, 5]], 2, rollouts, [1.0, 0.0])
    batch = build_sequences(drawn, 0, torch.tensor([1.0, -1.0]), whiten=False, budget=3)
    assert batch.input_ids.tolist() == [[4, 5, 7, 8, 1], [4, 5, 9, 1, 0]]
    # targets are tokens 1..4; response targets are 7, 8, 1 (row 0) and 9, 1 (row 1)
    assert batch.mask.tolist() == [[False, True, True, True], [False, True, True, False]]
    assert batch.token_adv.tolist() == [[0.0, 1.0, 1.0, 1.0], [0.0, -1.0, -1.0, 0.0]]
    assert batch.sampler_logp.flatten().tolist() == pytest.approx([0.0, -0.1, -0.2, -0.3, 0.0, -0.4, -0.5, 0.0])


def test_kl_penalties():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0])
    assert kl_penalty(logp, ref, "mse").tolist() == pytest.approx([0.125, 0.0])
    # k3: exp(-.5) - (-.5) - 1
    assert kl_penalty(logp, ref, "low_var_kl").tolist() == pytest.approx([math.exp(-0.5) - 0.5, 0.0])


def test_token_advantages_are_whitened_over_tokens_or_left_as_they_are():
    from trainers.loop.grpo import token_advantages

    mask = torch.tensor([[True, True, False], [True, False, False]])
    raw = token_advantages(torch.tensor([2.0, -1.0]), mask, whiten=False)
    assert raw.tolist() == [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]  # the release's GRPO: no whitening
    # tokens 2, 2, -1: mean 1, unbiased var (1 + 1 + 4) / 2 = 3
    z = 1 / math.sqrt(3 + 1e-8)
    whitened = token_advantages(torch.tensor([2.0, -1.0]), mask, whiten=True)
    assert whitened.flatten().tolist() == pytest.approx([z, z, 0.0, -2 * z, 0.0, 0.0])


def test_an_upper_clip_of_its_own():
    ratio, adv = torch.tensor([1.25, 0.7]), torch.tensor([1.0, -1.0])
    # symmetric 0.2: 1.25 -> 1.2 (positive advantage: min(1.25, 1.2) wins); 0.7 -> 0.8 for a negative advantage
    pg, outside, _ = clipped_objective(ratio, adv, 0.2, None)
    assert pg.tolist() == pytest.approx([-1.2, 0.8]) and outside.tolist() == [True, True]
    # clip-higher 0.28: 1.25 stays inside 1.28
    pg, outside, _ = clipped_objective(ratio, adv, 0.2, 0.28)
    assert pg.tolist() == pytest.approx([-1.25, 0.8]) and outside.tolist() == [False, True]


def test_a_shrinking_budget_where_a_cut_off_response_counts_as_wrong(tiny_model_dir, cache_dir, tmp_path):
    """ThinkPrune: the budget follows its schedule, every truncated rollout scores 0, evaluation
    uses the largest budget; here under the release's GRPO (threshold reward, combine-then-normalize,
    no whitening, clip-higher)."""
    config = tiny_config(
        cache_dir,
        rollout={"max_new_tokens": [[0, 48], [2, 12]]},
        task={"truncated_is_wrong": True},
        train={"clip_ratio_high": 0.28},
        lead={
            "length_reward": "threshold", "length_params": {"threshold": 20},
            "weighting": {"kind": "static", "w_corr": 0.5}, "advantage": {"kind": "combined", "whiten": False},
        },
    )
    assert config.lead.bmax == 48 and config.eval_sampling.max_new_tokens == 48
    reports, _ = run(config, tmp_path)
    assert [r.metrics[M.TRAIN_BUDGET] for r in reports] == [48.0, 48.0, 12.0, 12.0]
    for r in reports:
        assert r.metrics[M.TRAIN_RESPONSE_LENGTH] <= r.metrics[M.TRAIN_BUDGET]
        assert r.metrics[M.TRAIN_ACCURACY] <= 1 - r.metrics[M.TRAIN_TRUNCATED_FRACTION] + 1e-12
    assert reports[-1].metrics[M.TRAIN_TRUNCATED_FRACTION] > 0  # 12 tokens cut the tiny model's traces
    assert all(r.metrics[M.lead("w_corr")] == 0.5 for r in reports)


def test_resume_never_runs_a_pickle_planted_in_the_checkpoint(tiny_model_dir, cache_dir, tmp_path):
    """Checkpoints load with ``weights_only=True``: a checkpoint file that would run code when
    unpickled (a shared output dir is writable by others) is refused, and the code does not run."""
    import os
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    planted = tmp_path / "checkpoints" / "step_000002"
    planted.mkdir(parents=True)
    (planted / "trainer_state.pt").write_bytes(pickle.dumps({"model": Payload()}))
    config_hash = checkpoint.config_hash(tiny_config(cache_dir))  # a planter can read the config next to it
    (planted / checkpoint.CHECKPOINT_INFO).write_text(json.dumps({"step": 2, "config_hash": config_hash}))
    with pytest.raises(pickle.UnpicklingError):
        run(tiny_config(cache_dir), tmp_path / "out", resume_from=planted)
    assert not marker.exists()
