"""The study's figures, each a matplotlib ``Figure`` built from ``analysis.load`` / ``analysis.compute``
tables (the caller saves or shows it):

- ``pareto``: final eval accuracy against length per (arm, variant), seeds as error bars, the
  static grid coloured by its ``w_corr``, PSI marked, the frontier drawn through;
- ``weight_trajectories``: PSI's used ``w_corr`` (and its target) over training, against the
  static grid's levels;
- ``eval_curves``: accuracy, length and AES at every evaluation, per (arm, variant), mean over seeds;
- ``lstar_curves``: the mean per-problem target L* over training;
- ``lstar_per_problem``: at the last evaluation, each problem's L* against its minimal length;
- ``population_schedules``: each PBT / PB2 member's effective schedule of a searched setting,
  PSI's ``w_corr`` on the same axes, and the exploits.
"""

from __future__ import annotations

from collections import defaultdict

import matplotlib
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.figure import Figure  # no pyplot: no global state, any backend (or none) works

from analysis.compute import arm_label, final_problems, motions, series
from trainers import contract as M


def _labels(runs: pa.Table) -> dict[str, str]:
    """trial -> "arm/variant" (or just the arm where they are the same)."""
    return {
        r["trial"]: arm_label(r["arm"], r["variant"])
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


def _mean_over_seeds(history: pa.Table, key: str, labels: dict[str, str]) -> dict[str, tuple[list[int], list[float]]]:
    """label -> (steps, mean over that label's trials at each step)."""
    by_step: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for trial, (steps, values) in series(history, key).items():
        for step, value in zip(steps, values):
            if value == value:  # NaN-free
                by_step[labels.get(trial, trial)][step].append(value)
    return {
        label: (sorted(points), [sum(points[s]) / len(points[s]) for s in sorted(points)])
        for label, points in sorted(by_step.items())
    }


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
    """Every (arm, variant): colour by its length reward, marker by how its weight moves."""
    fig = Figure(figsize=(7.6, 5.0))
    ax = fig.subplots()
    rows = [r for r in summary.to_pylist() if r["accuracy_mean"] is not None and r["length_mean"] is not None]
    rewards = sorted({str(r["reward"]) for r in rows})
    cmap = matplotlib.colormaps["tab10"]
    for r in rows:
        marker = MARKERS.get(r[M.TAG_MOTION], "D")
        label = arm_label(r["arm"], r["variant"], " ")
        ax.errorbar(r["length_mean"], r["accuracy_mean"], xerr=r["length_std"] or 0, yerr=r["accuracy_std"] or 0,
                    fmt=marker, markersize=12 if marker == "*" else 6, color=cmap(rewards.index(str(r["reward"])) % 10),
                    capsize=3, label=f"{label} ({r[M.TAG_REWARD]}, {r[M.TAG_WEIGHTING]})")
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


def eval_curves(history: pa.Table, runs: pa.Table) -> Figure:
    fig = Figure(figsize=(13, 3.8))
    axes = fig.subplots(1, 3)
    labels = _labels(runs)
    for ax, (key, title) in zip(axes, ((M.EVAL_ACCURACY, "accuracy"), (M.EVAL_RESPONSE_LENGTH, "length (tokens)"),
                                       (M.EVAL_AES, "AES"))):
        for label, (steps, values) in _mean_over_seeds(history, key, labels).items():
            ax.plot(steps, values, "o-", markersize=3, label=label)
        ax.set_xlabel("training step")
        ax.set_title(f"eval {title}")
    axes[-1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    return fig


def lstar_curves(history: pa.Table, runs: pa.Table) -> Figure:
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for label, (steps, values) in _mean_over_seeds(history, M.lead("lstar_mean"), _labels(runs)).items():
        ax.plot(steps, values, label=label)
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
    exploits: pa.Table, psi: dict[str, tuple[list[int], list[float]]], setting: str,
) -> Figure:
    """Solid: each member's effective schedule (``analysis.population``); dotted: what it ran
    itself; crosses: its exploits (the step, at the donor's value); dashed: PSI's trials' ``w_corr``."""
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
    for trial, (steps, values) in sorted(psi.items()):
        ax.plot(steps, values, color="black", lw=1.0, ls="--", label=f"{trial} (PSI w_corr)")
    return _finish(fig, ax, "step", setting, "Population schedules against PSI (x: exploit)")
