"""The study's figures, each a matplotlib ``Figure`` built from ``analysis.load`` / ``analysis.compute``
tables (the caller saves or shows it):

- ``pareto``: final eval accuracy against length per (arm, variant), seeds as error bars, each
  point its own colour and named beside it, its marker how its weight moves, the frontier drawn through;
- ``weight_trajectories``: PSI's used ``w_corr`` (and its target) over training, against the
  static grid's levels;
- ``eval_curves``: accuracy, length and AES from the base model (step 0) through every evaluation,
  per (arm, variant): the mean over seeds and its 95% bootstrap band (``analysis.stats.mean_interval``);
- ``lstar_curves``: the mean per-problem target L* over training (band: 95% over seeds);
- ``lstar_per_problem``: at the last evaluation, each problem's L* against its minimal length;
- ``population_schedules``: each PBT / PB2 member's effective schedule of a searched setting,
  the arm under test's ``w_corr`` on the same axes, and the exploits;
- ``repeated_intervals``: a sequential study's repeated interval per comparison against the seeds.
"""

from __future__ import annotations

from collections import defaultdict

import matplotlib
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.figure import Figure  # no pyplot: no global state, any backend (or none) works

from analysis.compute import final_problems, motions, series
from analysis.stats import mean_interval
from trainers import contract as M


def _labels(runs: pa.Table) -> dict[str, str]:
    """trial -> "arm/variant" (or just the arm where they are the same)."""
    return {
        r["trial"]: M.arm_label(r["arm"], r["variant"])
        for r in runs.select(["trial", "arm", "variant"]).to_pylist()
    }


FIXED_W_CORR = M.param_column(M.W_CORR_SETTING)  # a fixed weighting's weight


def _fixed_levels(runs: pa.Table) -> list[float]:
    """The weights of the trials whose weight stays fixed (a population member's moves: not one)."""
    if FIXED_W_CORR not in runs.column_names:
        return []
    motion = motions(runs)
    return sorted(
        {float(w) for trial, w in zip(runs["trial"].to_pylist(), runs[FIXED_W_CORR].to_pylist())
         if motion.get(trial) == M.FIXED and w is not None}
    )


def _finish(fig: Figure, ax, xlabel: str, ylabel: str, title: str, legend_size: int = 6) -> Figure:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=legend_size, loc="best")
    fig.tight_layout()
    return fig


MARKERS = {M.ADAPTIVE: "*", M.FIXED: "o", M.SCHEDULED: "s", M.SEARCHED: "^"}  # by weight motion; colour by length reward


def pareto(summary: pa.Table, front: list[tuple[str, str]]) -> Figure:
    """Every (arm, variant): its own colour and its name beside it, marker by how its weight moves."""
    fig = Figure(figsize=(7.6, 5.0))
    ax = fig.subplots()
    rows = [r for r in summary.to_pylist() if r["accuracy_mean"] is not None and r["length_mean"] is not None]
    cmap = matplotlib.colormaps["tab20"]
    names: dict[tuple[float, float], list[str]] = defaultdict(list)  # points at one place share one note
    for i, r in enumerate(rows):
        marker = MARKERS.get(r[M.TAG_MOTION], "D")
        label = M.arm_label(r["arm"], r["variant"], " ")
        ax.errorbar(r["length_mean"], r["accuracy_mean"], xerr=r["length_std"] or 0, yerr=r["accuracy_std"] or 0,
                    fmt=marker, markersize=12 if marker == "*" else 6, color=cmap(i % 20),
                    capsize=3, label=f"{label} ({r[M.TAG_REWARD]}, {r[M.TAG_WEIGHTING]})")
        names[(r["length_mean"], r["accuracy_mean"])].append(label)
    for point, labels in names.items():
        ax.annotate(", ".join(labels), point, xytext=(4, 4), textcoords="offset points", fontsize=6)
    on_front = sorted((r for r in rows if (r["arm"], r["variant"]) in set(front)), key=lambda r: r["length_mean"])
    if len(on_front) > 1:
        ax.plot([r["length_mean"] for r in on_front], [r["accuracy_mean"] for r in on_front],
                "--", color="grey", linewidth=1, label="Pareto front")
    return _finish(fig, ax, "final eval response length (tokens)", "final eval accuracy",
                   "Accuracy against length (mean ± std over seeds)", legend_size=6)


def weight_trajectories(history: pa.Table, runs: pa.Table) -> Figure:
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    motion = motions(runs)
    used, target = series(history, M.lead("w_corr")), series(history, M.lead("target_w_corr"))
    for trial, (steps, values) in used.items():
        if motion.get(trial) == M.FIXED:
            continue
        line = ax.plot(steps, values, label=f"{trial} used")[0]
        if trial in target and motion.get(trial) == M.ADAPTIVE:
            ax.plot(*target[trial], ":", color=line.get_color(), label=f"{trial} target")
    for level in _fixed_levels(runs):
        ax.axhline(level, color="grey", linewidth=0.8, linestyle="--")
    ax.set_ylim(-0.02, 1.02)
    return _finish(fig, ax, "training step", "w_corr", "w_corr over training (dashed: the fixed weights)")


# each evaluated metric and where its curve starts: the base model's number at step 0 (AES: 0 by definition)
EVAL_CURVES = ((M.EVAL_ACCURACY, "accuracy", M.BASE_ACCURACY), (M.EVAL_RESPONSE_LENGTH, "length (tokens)",
                                                                M.BASE_RESPONSE_LENGTH), (M.EVAL_AES, "AES", None))


def _from_the_base(history: pa.Table, key: str, base_key: str | None) -> dict[str, tuple[list[int], list[float]]]:
    """``key``'s series per trial, starting at step 0 with the base model's number."""
    base = {trial: values[0] for trial, (_, values) in series(history, base_key).items()} if base_key else {}
    return {trial: ([0, *steps], [base.get(trial, 0.0 if base_key is None else float("nan")), *values])
            for trial, (steps, values) in series(history, key).items()}


def _band_over_seeds(curves: dict[str, tuple[list[int], list[float]]], labels: dict[str, str]):
    """label -> (steps, mean over its seeds, 95% low, 95% high) at each step (no band with one seed)."""
    by_step: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for trial, (steps, values) in curves.items():
        for step, value in zip(steps, values):
            if value == value:  # NaN-free
                by_step[labels.get(trial, trial)][step].append(value)
    out = {}
    for label, points in sorted(by_step.items()):
        intervals = [mean_interval(points[step]) for step in sorted(points)]
        out[label] = (sorted(points), [i.estimate for i in intervals], [i.low for i in intervals], [i.high for i in intervals])
    return out


def _plot_with_band(ax, label: str, steps, mean, low, high, style: str = "-") -> None:
    line = ax.plot(steps, mean, style, markersize=3, label=label)[0]
    if all(v is not None for v in low):  # one seed: no band
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.15, linewidth=0)


def eval_curves(history: pa.Table, runs: pa.Table) -> Figure:
    fig = Figure(figsize=(13, 3.8))
    axes = fig.subplots(1, 3)
    labels = _labels(runs)
    for ax, (key, title, base_key) in zip(axes, EVAL_CURVES):
        for label, band in _band_over_seeds(_from_the_base(history, key, base_key), labels).items():
            _plot_with_band(ax, label, *band, style="o-")
        ax.set_xlabel("training step (0: the base model)")
        ax.set_title(f"eval {title} (band: 95% over seeds)")
    axes[-1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    return fig


def lstar_curves(history: pa.Table, runs: pa.Table) -> Figure:
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for label, band in _band_over_seeds(series(history, M.lead("lstar_mean")), _labels(runs)).items():
        _plot_with_band(ax, label, *band)
    return _finish(fig, ax, "training step", "mean L* over the batch's problems (tokens)",
                   "Per-problem target length over training")


def lstar_per_problem(problems: pa.Table, runs: pa.Table) -> Figure:
    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.subplots()
    final = final_problems(problems)
    final = final.filter(pc.greater(final["accuracy"], 0)) if final.num_rows else final
    labels = _labels(runs)
    by_label: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for row in final.select(["trial", "minimal_length", "lstar"]).to_pylist():
        xs, ys = by_label[labels.get(row["trial"], row["trial"])]
        xs.append(row["minimal_length"])
        ys.append(row["lstar"])
    for label, (xs, ys) in sorted(by_label.items()):
        ax.scatter(xs, ys, s=8, alpha=0.5, label=label)
    if by_label:
        top = max(max(xs + ys) for xs, ys in by_label.values())
        ax.plot([0, top], [0, top], color="black", linewidth=0.8, label="L* = minimal length")
    return _finish(fig, ax, "minimal trace length (tokens)", "L* at the last evaluation (tokens)",
                   "Per-problem targets against the shortest possible trace")


def population_schedules(
    schedules: dict[str, tuple[list[int], list[float]]], own: dict[str, tuple[list[int], list[float]]],
    exploits: pa.Table, focus: dict[str, tuple[list[int], list[float]]], setting: str,
) -> Figure:
    """Solid: each member's effective schedule (``analysis.population``); dotted: what it ran
    itself; crosses: its exploits (the step, at the donor's value); dashed: the arm under test's trials' ``w_corr``."""
    fig = Figure(figsize=(7.6, 4.6))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["tab10"]
    for i, (trial, (steps, values)) in enumerate(sorted(schedules.items())):
        colour = cmap(i % 10)
        ax.plot(steps, values, color=colour, lw=1.6, label=f"{trial} (effective)")
        ax.plot(*own[trial], color=colour, lw=0.8, ls=":")
        effective = dict(zip(steps, values))
        for step in exploits.filter(pc.equal(exploits["trial"], trial))["step"].to_pylist():
            if step in effective:
                ax.plot([step], [effective[step]], "x", color=colour, ms=8, mew=2)
    for trial, (steps, values) in sorted(focus.items()):
        ax.plot(steps, values, color="black", lw=1.0, ls="--", label=f"{trial} (w_corr)")
    return _finish(fig, ax, "step", setting, "Population schedules against the arm under test (x: exploit)")


def repeated_intervals(decision_path: list[dict], focus: str, metric: str) -> Figure:
    """A sequential study's comparisons, one panel each: the repeated interval (the focus arm minus
    the other) at every look against the seeds it rested on, the estimate as a dot, zero dashed;
    the title says where it stopped and why."""
    comparisons = sorted({look["comparison"] for look in decision_path})
    columns = min(3, len(comparisons)) or 1
    rows = (len(comparisons) + columns - 1) // columns or 1
    fig = Figure(figsize=(4.2 * columns, 3.0 * rows))
    for k, comparison in enumerate(comparisons):
        ax = fig.add_subplot(rows, columns, k + 1)
        looks = [look for look in decision_path if look["comparison"] == comparison and look["estimate"] is not None]
        seeds = [look["seeds"] for look in looks]
        estimate = [look["estimate"] for look in looks]
        errors = [[e - look["low"] for e, look in zip(estimate, looks)], [look["high"] - e for e, look in zip(estimate, looks)]]
        ax.errorbar(seeds, estimate, yerr=errors, fmt="o", capsize=3, color="C0")
        ax.axhline(0.0, color="grey", linestyle="--", linewidth=1)
        last = [look for look in decision_path if look["comparison"] == comparison][-1]
        state = "still open" if last["decision"] == "continue" else last["decision"]
        ax.set_title(f"{focus} - {comparison}: {state} at {last['seeds']}", fontsize=8)
        ax.set_xlabel("seeds")
        ax.set_ylabel(f"{metric} difference")
        ax.set_xticks(seeds or [last["seeds"]])
    fig.tight_layout()
    return fig
