"""The synthetic overthinking task: ids, minimal lengths, splits, verbose traces, grading."""

import random
import statistics

import pytest

from trainers.config import TrainConfig
from trainers.tasks.synthetic import (
    Problem,
    SyntheticTask,
    SyntheticTaskConfig,
    count_features,
    eval_problems,
    grade,
    in_eval_split,
    verbose_response,
)

CONFIG = SyntheticTaskConfig()


def test_problem_has_a_stable_id_prompt_answer_and_minimal_trace():
    p = Problem((3, 5, 2, 7))
    assert p.id == 13527
    assert p.prompt == "Q:3+5+2+7="
    assert p.minimal_response == "3+5=8;8+2=10;10+7=17;A:17"
    assert p.minimal_length == len("3+5=8;8+2=10;10+7=17;A:17") + 1  # EOS


def test_needed_budget_varies_several_fold_across_problems():
    lengths = [p.minimal_length for p in eval_problems(CONFIG)]
    assert max(lengths) / min(lengths) >= 5


def test_eval_set_is_fixed_distinct_and_from_the_eval_split_only():
    a, b = eval_problems(CONFIG), eval_problems(CONFIG)
    assert [p.id for p in a] == [p.id for p in b]
    assert len({p.id for p in a}) == CONFIG.eval_size == 500
    assert all(in_eval_split(p, CONFIG.eval_fraction) for p in a)
    assert {p.k for p in a} == set(range(2, 11))


def test_training_batches_never_touch_the_eval_split_and_are_a_function_of_seed_and_step():
    task = SyntheticTask(CONFIG)
    eval_ids = {p.id for p in task.eval_problems()}
    seen = [p for step in range(200) for p in task.train_problems(step, 16, seed=3)]
    assert not any(in_eval_split(p, CONFIG.eval_fraction) for p in seen)
    assert not eval_ids & {p.id for p in seen}
    assert [p.id for p in task.train_problems(7, 16, 3)] == [p.id for p in task.train_problems(7, 16, 3)]
    assert [p.id for p in task.train_problems(7, 16, 3)] != [p.id for p in task.train_problems(8, 16, 3)]


def test_verbose_traces_are_correct_and_overthink():
    rng = random.Random(0)
    problems = eval_problems(CONFIG)
    traces = [verbose_response(p, rng, CONFIG) for p in problems]
    assert all(grade(t, p) == 1.0 for t, p in zip(traces, problems))
    ratio = statistics.mean(len(t) + 1 for t in traces) / statistics.mean(p.minimal_length for p in problems)
    assert ratio > 1.8
    features = [count_features(t) for t in traces]
    rederived = statistics.mean(f["rederivations"] for f in features)
    assert 0.5 < rederived < 0.7  # rederive_prob 0.6
    assert statistics.mean(f["rechecks"] for f in features) > 1


def test_some_traces_take_shortcuts():
    rng = random.Random(1)
    problems = [p for p in eval_problems(CONFIG) if p.k >= 4]
    merged = sum(any(step.count("+") > 1 for step in verbose_response(p, rng, CONFIG).split(";")) for p in problems)
    assert 0.15 < merged / len(problems) < 0.3  # shortcut_prob 0.25, minus draws that merged nothing


@pytest.mark.parametrize(
    "response, expected",
    [("3+5=8;A:8", 1.0), ("3+5=8;A:9", 0.0), ("3+5=8;A:8;", 0.0), ("3+5=8", 0.0), ("A:88", 0.0), ("", 0.0)],
)
def test_grading_is_the_exact_final_answer(response, expected):
    assert grade(response, Problem((3, 5))) == expected


def test_bad_task_settings_are_refused():
    with pytest.raises(ValueError, match="min_terms"):
        SyntheticTaskConfig(min_terms=6, max_terms=4)
    with pytest.raises(ValueError, match="eval_size"):
        eval_problems(SyntheticTaskConfig(min_terms=2, max_terms=2, eval_size=50))
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        TrainConfig.model_validate({"rollout": {"max_prompt_tokens": 10}})
