"""What a study shows, computed from the runs table of ``analysis.load``.

- ``arm_summary``: per (arm, variant), with its length reward, weighting and advantage estimator (the
  trial runs' tags), over seeds, the mean, sample std (ddof 1) and 95% bootstrap interval of the
  final eval accuracy, length and AES;
- ``compute_spent``: per trial and per arm, the rollout, training and evaluation tokens and the
  seconds of its logged steps;
- ``pareto_front``: the (arm, variant) pairs no other pair beats on both accuracy (higher) and
  length (lower);
- ``series`` / ``weight_shape``: a metric's trajectory per trial, and where PSI's weight went
  (start, peak, first fall, settled value);
- ``lstar_versus_minimal``: per trial, at its last evaluation, how far the per-problem targets
  L* and the model's lengths sit above each problem's minimal trace length.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

from analysis.stats import mean_interval
from trainers import contract as M

FINAL = {name: M.final_column(key) for name, key in (("accuracy", M.EVAL_ACCURACY), ("length", M.EVAL_RESPONSE_LENGTH),
                                                     ("aes", M.EVAL_AES))}


def arm_summary(runs: pa.Table) -> pa.Table:
    """One row per (arm, variant): its reward, weighting, weight motion and advantage estimator, ``seeds`` and
    ``<metric>_mean`` / ``<metric>_std`` / ``<metric>_low`` / ``<metric>_high`` (the 95% bootstrap
    interval over seeds, ``analysis.stats.mean_interval``; none with one seed), grouped by (reward,
    weighting), then sorted by arm."""
    keys = ["arm", "variant", M.TAG_REWARD, M.TAG_WEIGHTING, M.TAG_MOTION, M.TAG_ADVANTAGE]
    table = runs.select([c for c in [*keys, *FINAL.values()] if c in runs.column_names])
    aggregations = [("arm", "count")]
    for column in FINAL.values():
        aggregations += [(column, "mean"), (column, "stddev", pc.VarianceOptions(ddof=1))]
    grouped = table.group_by(keys).aggregate(aggregations)
    out = {key: grouped[key] for key in keys}
    out["seeds"] = grouped["arm_count"]
    members = table.select(keys).to_pylist()
    for name, column in FINAL.items():
        out[f"{name}_mean"] = grouped[f"{column}_mean"]
        out[f"{name}_std"] = grouped[f"{column}_stddev"]
        values = table[column].to_pylist() if column in table.column_names else [None] * table.num_rows
        intervals = [
            mean_interval([v for member, v in zip(members, values) if member == group])
            for group in grouped.select(keys).to_pylist()
        ]
        out[f"{name}_low"] = pa.array([i.low for i in intervals], pa.float64())
        out[f"{name}_high"] = pa.array([i.high for i in intervals], pa.float64())
    order = [M.TAG_REWARD, M.TAG_WEIGHTING, "arm", "variant"]  # arms grouped by (reward, weighting)
    return pa.table(out).sort_by([(key, "ascending") for key in order])


def pareto_front(summary: pa.Table) -> list[tuple[str, str]]:
    """(arm, variant) pairs on the accuracy-versus-length frontier (higher accuracy, shorter length)."""
    points = [(r["arm"], r["variant"], r["accuracy_mean"], r["length_mean"]) for r in summary.to_pylist()]
    points = [p for p in points if p[2] is not None and p[3] is not None]

    def dominated(p) -> bool:
        return any(
            q[2] >= p[2] and q[3] <= p[3] and (q[2] > p[2] or q[3] < p[3]) for q in points if q is not p
        )

    return sorted((p[0], p[1]) for p in points if not dominated(p))


def motions(runs: pa.Table) -> dict[str, str | None]:
    """trial -> how its weight moves (``trainers.contract.MOTIONS``; None where the run has no such tag)."""
    return dict(zip(runs["trial"].to_pylist(), runs[M.TAG_MOTION].to_pylist()))


def moving_weight_trials(runs: pa.Table) -> set[str]:
    """The trials whose weights change during training: every one whose weight is not fixed."""
    return {trial for trial, motion in motions(runs).items() if motion != M.FIXED}


def series(history: pa.Table, key: str) -> dict[str, tuple[list[int], list[float]]]:
    """``key``'s (steps, values) per trial, in step order."""
    rows = history.filter(pc.equal(history["key"], key)).sort_by([("trial", "ascending"), ("step", "ascending")])
    out: dict[str, tuple[list[int], list[float]]] = {}
    for trial, step, value in zip(rows["trial"].to_pylist(), rows["step"].to_pylist(), rows["value"].to_pylist()):
        steps, values = out.setdefault(trial, ([], []))
        steps.append(step)
        values.append(value)
    return out


def weight_shape(history: pa.Table, trials: set[str] | None = None, settle_fraction: float = 0.2) -> pa.Table:
    """Where each trial's used ``w_corr`` went (of ``trials``, default all): its start, peak, the first
    step it fell, and where it settled (the mean over the last ``settle_fraction`` of its steps)."""
    rows = []
    for trial, (steps, values) in series(history, M.lead("w_corr")).items():
        if trials is not None and trial not in trials:
            continue
        first_fall = next((steps[i] for i in range(1, len(values)) if values[i] < values[i - 1]), None)
        tail = values[-max(1, int(len(values) * settle_fraction)) :]
        rows.append(
            {
                "trial": trial,
                "start": values[0],
                "peak": max(values),
                "first_fall_step": first_fall,
                "settled": sum(tail) / len(tail),
            }
        )
    return pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [("trial", pa.string()), ("start", pa.float64()), ("peak", pa.float64()),
             ("first_fall_step", pa.int64()), ("settled", pa.float64())]
        ),
    )


def final_problems(problems: pa.Table, steps: dict[str, int] | None = None) -> pa.Table:
    """Each trial's per-problem rows at its last evaluated step, or at ``steps[trial]`` (a trial
    not in ``steps`` is left out)."""
    if problems.num_rows == 0:
        return problems
    if steps is not None:
        chosen = pa.table({"trial": list(steps), "step_chosen": pa.array(list(steps.values()), pa.int64())})
        return problems.join(chosen, keys=["trial", "step"], right_keys=["trial", "step_chosen"], join_type="inner")
    last = problems.group_by("trial").aggregate([("step", "max")])
    return problems.join(last, keys=["trial", "step"], right_keys=["trial", "step_max"], join_type="inner")


def equal_token_steps(history: pa.Table, problems: pa.Table) -> tuple[float, dict[str, int], dict[str, float]]:
    """Where each trial had spent the same rollout tokens: the budget is the smallest of the trials'
    rollout tokens up to their last evaluation, and each trial is taken at the evaluation whose
    running sum of ``perf/rollout_tokens`` is nearest to it (the earlier on a tie). Returns the
    budget, each trial's chosen step and its rollout tokens up to that step."""
    rows = history.filter(pc.equal(history["key"], M.PERF_ROLLOUT_TOKENS)).to_pylist()
    per_step: dict[str, dict[int, float]] = {}
    for row in rows:
        per_step.setdefault(row["trial"], {})[row["step"]] = row["value"]
    evaluated: dict[str, set[int]] = {}
    for trial, step in zip(problems["trial"].to_pylist(), problems["step"].to_pylist()):
        evaluated.setdefault(trial, set()).add(step)
    spent_by: dict[str, dict[int, float]] = {}
    for trial, steps in evaluated.items():
        tokens = per_step.get(trial, {})
        spent_by[trial] = {s: sum(v for step, v in tokens.items() if step <= s) for s in sorted(steps)}
    if not spent_by:
        return 0.0, {}, {}
    budget = min(by_step[max(by_step)] for by_step in spent_by.values())
    chosen = {t: min(by_step, key=lambda s: (abs(by_step[s] - budget), s)) for t, by_step in spent_by.items()}
    return budget, chosen, {t: spent_by[t][s] for t, s in chosen.items()}


def _median(values: pa.ChunkedArray) -> float | None:
    return pc.quantile(values, q=0.5)[0].as_py() if len(values) else None


def lstar_versus_minimal(problems: pa.Table, runs: pa.Table) -> pa.Table:
    """Per trial at its last evaluation, over the problems it solved at least once (L* comes from
    correct samples): the median of ``lstar / minimal_length`` and of ``mean_length / minimal_length``,
    the fraction of targets within 10% of the minimal length, and the fraction still above 1.5x
    (under-compressed); plus how many problems it never solved. Where the two medians are equal in
    every row (``eval.n_samples`` 1: L* is the one sample's length), ``length_over_minimal`` is left out."""
    final = final_problems(problems)
    labels = {r["trial"]: r for r in runs.select(["trial", "arm", "variant", "seed"]).to_pylist()}
    rows = []
    for trial in sorted(set(final["trial"].to_pylist())):
        table = final.filter(pc.equal(final["trial"], trial))
        solved = table.filter(pc.and_(pc.greater(table["accuracy"], 0), pc.greater(table["minimal_length"], 0)))
        lstar_ratio = pc.divide(solved["lstar"], solved["minimal_length"])
        length_ratio = pc.divide(solved["mean_length"], solved["minimal_length"])
        count = max(solved.num_rows, 1)
        rows.append(
            {
                **{k: labels.get(trial, {}).get(k) for k in ("trial", "arm", "variant", "seed")},
                "trial": trial,
                "step": table["step"][0].as_py(),
                "problems": table.num_rows,
                "unsolved": table.num_rows - solved.num_rows,
                "lstar_over_minimal": _median(lstar_ratio),
                "length_over_minimal": _median(length_ratio),
                "within_10pct": pc.sum(pc.less_equal(lstar_ratio, 1.1)).as_py() / count if solved.num_rows else None,
                "above_1p5x": pc.sum(pc.greater(lstar_ratio, 1.5)).as_py() / count if solved.num_rows else None,
            }
        )
    schema = pa.schema(
        [("trial", pa.string()), ("arm", pa.string()), ("variant", pa.string()), ("seed", pa.int64()),
         ("step", pa.int64()), ("problems", pa.int64()), ("unsolved", pa.int64()),
         ("lstar_over_minimal", pa.float64()), ("length_over_minimal", pa.float64()),
         ("within_10pct", pa.float64()), ("above_1p5x", pa.float64())]
    )
    table = pa.Table.from_pylist(rows, schema=schema)
    if table.num_rows and table["lstar_over_minimal"].equals(table["length_over_minimal"]):
        # one sample per problem: L* (from the correct samples) is the sample's own length
        table = table.drop_columns(["length_over_minimal"])
    return table


COMPUTE_COLUMNS = {M.PERF_ROLLOUT_TOKENS: "rollout_tokens", M.PERF_TRAIN_TOKENS: "train_tokens",
                   M.PERF_EVAL_TOKENS: "eval_tokens", M.PERF_STEP_SECONDS: "step_seconds"}


def compute_spent(history: pa.Table, runs: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(per trial, per arm): the sums of each logged step's ``COMPUTE_COLUMNS`` (every step once:
    work repeated after a crash is not logged twice, start-up and restarts are not in step seconds),
    and the steps. Per arm: sums over its trials (a population of 4 spends what its 4 members spent)."""
    rows = history.filter(pc.is_in(history["key"], pa.array(list(COMPUTE_COLUMNS))))
    sums = rows.group_by(["trial", "key"]).aggregate([("value", "sum"), ("step", "count")])
    spent: dict[str, dict] = {}
    for trial, key, total, steps in zip(*(sums[c].to_pylist() for c in ("trial", "key", "value_sum", "step_count"))):
        spent.setdefault(trial, {})[COMPUTE_COLUMNS[key]] = total
        if key == M.PERF_STEP_SECONDS:
            spent[trial]["steps"] = steps
    labels = {r["trial"]: r for r in runs.select(["trial", "arm", "variant"]).to_pylist()}
    names = ["steps", *COMPUTE_COLUMNS.values()]
    per_trial = [{"trial": t, "arm": labels.get(t, {}).get("arm"), "variant": labels.get(t, {}).get("variant"),
                  **{n: spent[t].get(n, 0) for n in names}} for t in sorted(spent)]
    per_arm: dict[str, dict] = {}
    for row in per_trial:
        arm = per_arm.setdefault(row["arm"], {"arm": row["arm"], "trials": 0, **{n: 0 for n in names}})
        arm["trials"] += 1
        for n in names:
            arm[n] += row[n]
    schema = [("steps", pa.int64()), *((n, pa.float64()) for n in COMPUTE_COLUMNS.values())]
    return (pa.Table.from_pylist(per_trial, pa.schema([("trial", pa.string()), ("arm", pa.string()),
                                                       ("variant", pa.string()), *schema])),
            pa.Table.from_pylist(sorted(per_arm.values(), key=lambda r: r["arm"] or ""),
                                 pa.schema([("arm", pa.string()), ("trials", pa.int64()), *schema])))


def differing_versions(runs: pa.Table) -> dict[str, dict[str, int]]:
    """What the trials were made with, where they differ: ``{"torch": {"2.13.0": 30, "2.14.1": 5}, "cpu-kernels":
    {...}}`` over the runs' ``version.*`` columns (the project's commit, each library, the CPU kernel level);
    empty when every trial ran with the same."""
    prefix = M.version_tag("")
    counts = {column.removeprefix(prefix): Counter(map(str, runs[column].to_pylist()))
              for column in runs.column_names if column.startswith(prefix)}
    return {name: dict(values) for name, values in counts.items() if len(values) > 1}


def paired_differences(runs: pa.Table, focus: str | None, metric: str = M.EVAL_AES) -> dict[str, dict[int, float]]:
    """Per other (arm, variant), by its label: the focus arm minus it on the final ``metric``, seed by
    seed over the seeds both ran (in seed order; a trial without that metric is left out)."""
    column = M.final_column(metric)
    if focus is None or column not in runs.column_names:
        return {}
    scores: dict[str, dict[int, float]] = {}
    for row in runs.select(["arm", "variant", "seed", column]).to_pylist():
        if row[column] is not None:
            label = focus if row["arm"] == focus else M.arm_label(row["arm"], row["variant"])
            scores.setdefault(label, {})[row["seed"]] = row[column]
    mine = scores.get(focus, {})
    return {label: {seed: mine[seed] - values[seed] for seed in sorted(set(values) & set(mine))}
            for label, values in scores.items() if label != focus and mine}


OUTLYING = 0.01  # the chance, per comparison, that a Gaussian study shows a seed "far from the others"


def outlying_seeds(runs: pa.Table, focus: str | None, metric: str = M.EVAL_AES) -> dict[str, list[tuple[int, float]]]:
    """Per other (arm, variant): the seeds whose paired difference (the focus arm minus it, final
    ``metric``) lies outside the other seeds' prediction interval: ``|d_s - mean| / (sd sqrt(1 + 1 /
    m))`` over the other m >= 3 seeds is Student's t on m - 1 df for Gaussian seeds, and a seed is
    far when it passes the quantile that flags a Gaussian comparison with chance ``OUTLYING``
    (Bonferroni over its seeds): a run that fell apart, the mode a few seeds cannot estimate."""
    out = {}
    for label, d in paired_differences(runs, focus, metric).items():
        far = []
        for seed, x in d.items():
            rest = [y for s, y in d.items() if s != seed]
            if len(rest) < 3 or np.std(rest) == 0:
                continue
            scale = float(np.std(rest, ddof=1)) * np.sqrt(1 + 1 / len(rest))
            if abs(x - float(np.mean(rest))) > stats.t.ppf(1 - OUTLYING / (2 * len(d)), len(rest) - 1) * scale:
                far.append((seed, x))
        if far:
            out[label] = far
    return out
