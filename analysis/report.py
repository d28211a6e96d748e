"""A study's report: ``python -m analysis.report --study NAME [--tracking-uri URI] [--out DIR]``.

Writes into ``DIR`` (default ``reports/NAME``): ``report.md``, a self-contained ``report.html``
(figures inlined), ``figures/*.png`` and the Parquet tables (runs, history, problems, per-arm
summary, weight shapes, L* against minimal lengths); then logs the folder as the ``report``
artifact of the study's parent run. Works on a running or partly failed study: the report says
which trials are missing, running or failed. Bad input (an unknown or empty study, a store that
cannot be read): one line, exit code 2. Everything is built in a temporary folder and renamed,
so an interrupted report never leaves a half-written one.
"""

from __future__ import annotations

import argparse
import base64
import html
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient

from analysis import figures
from analysis.comparisons import base_numbers, compare_study, final_groups, regrets
from analysis.compute import (
    OUTLYING, arm_summary, compute_spent, differing_versions, equal_token_steps, final_problems, lstar_versus_minimal, motions, moving_weight_trials, outlying_seeds, paired_differences,
    pareto_front, series, weight_shape,
)
from analysis.load import StudyData, load_study
from analysis.population import effective_schedules
from analysis.stats import Comparison
from stores.mlflow_store import default_tracking_uri
from trainers import contract as M
from trainers.contract import SETTING_PREFIX as SETTING
from trainers.io.outputs import check_replaceable, check_writable_dir, replace_owned
from trainers.settings import print_errors

REPORT_ARTIFACT = "report"


@dataclass
class Section:
    """One block of the report: a heading, then text, a table (rows of dicts) or a figure file."""

    heading: str
    text: str = ""
    table: list[dict] | None = None
    figure: str | None = None  # a path relative to the report folder


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.4g}"
    return str(value)


def render_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.heading}", ""]
        if section.text:
            lines += [section.text, ""]
        if section.table:
            columns = list(section.table[0])
            lines.append("| " + " | ".join(columns) + " |")
            lines.append("|" + "---|" * len(columns))
            lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in section.table]
            lines.append("")
        if section.figure:
            lines += [f"![{section.heading}]({section.figure})", ""]
    return "\n".join(lines)


def render_html(title: str, sections: list[Section], folder: Path) -> str:
    """One file with everything in it: tables as HTML, figures as base64 PNGs."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
        "img{max-width:100%}pre{white-space:pre-wrap}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        if section.text:
            parts.append("<pre>" + html.escape(section.text) + "</pre>")
        if section.table:
            columns = list(section.table[0])
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>")
            for row in section.table:
                parts.append("<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in columns) + "</tr>")
            parts.append("</table>")
        if section.figure:
            data = base64.b64encode((folder / section.figure).read_bytes()).decode()
            parts.append(f"<img alt='{html.escape(section.heading)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def trial_status(data: StudyData) -> tuple[str, list[dict]]:
    """A sentence on how complete the study is, and a row per trial that is not cleanly finished."""
    rows = data.runs.select(["trial", "arm", "variant", "seed", "status", "steps"]).to_pylist()
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    planned = len(data.planned) or len(rows)
    text = f"{len(rows)} of {planned} planned trials have runs: " + ", ".join(
        f"{n} {status.lower()}" for status, n in sorted(counts.items())
    ) + "."
    missing = data.missing
    if missing and data.design is not None and data.design_stopped:  # a finished sequential study
        text += f" The sequential design did not need the other {len(missing)} trials its seeds list allows."
        missing = []
    if missing:
        text += f" Missing (not started or never logged): {', '.join(missing)}."
    not_done = [r for r in rows if r["status"] != "FINISHED"]
    not_done += [{"trial": name, "arm": None, "variant": None, "seed": None, "status": "MISSING", "steps": 0}
                 for name in missing]
    if not_done:
        text += " Statistics below use whatever these trials logged; the ones without an evaluation are left out."
    differing = differing_versions(data.runs)
    if differing:
        text += (" **Warning: the trials ran with different versions or CPU kernel levels, so their numbers may "
                 "differ for that reason alone:** " + "; ".join(
                     f"{name}: " + ", ".join(f"{value} ({n} trials)" for value, n in sorted(counts.items()))
                     for name, counts in differing.items()) + ".")
    return text, not_done


def build_sections(data: StudyData, folder: Path) -> tuple[list[Section], dict[str, pa.Table]]:
    """Every section of the report (figures saved under ``folder/figures``) and the derived tables."""
    summary = arm_summary(data.runs)
    front = pareto_front(summary)
    shapes = weight_shape(data.history, moving_weight_trials(data.runs))
    lstar = lstar_versus_minimal(data.problems, data.runs)
    status_text, not_done = trial_status(data)

    sections = [Section("Trials", status_text, table=not_done or None)]
    if data.design is not None:
        sections += sequential_sections(data, folder)
    per_base = base_model_section(data)
    if per_base is not None:
        sections.append(per_base)
    sections.append(comparison_section(data))
    equal_tokens = equal_tokens_section(data)
    if equal_tokens is not None:
        sections.append(equal_tokens)
    sections.append(Section("Per arm, over seeds (final evaluation)", table=summary.to_pylist() or None))
    sections.append(Section(
        "Accuracy against length",
        "On the Pareto front (nothing else is both more accurate and shorter): "
        + (", ".join(f"{arm}/{variant}" for arm, variant in front) or "none yet") + ". Colour: the length "
        "reward; marker: how the weight moves (star adaptive, circle fixed, square scheduled, triangle searched).",
        figure=_save(figures.pareto(summary, front), folder, "pareto.png"),
    ))
    sections.append(Section(
        "Where PSI's weights went",
        "For every trial whose weights move (adaptive, scheduled, searched): start, peak, the first step w_corr "
        "fell, and where it settled (mean of the last 20% of steps). The figure sets them against the fixed weights.",
        table=shapes.to_pylist() or None,
        figure=_save(figures.weight_trajectories(data.history, data.runs), folder, "w_corr.png"),
    ))
    sections.append(Section("Evaluation over training", figure=_save(figures.eval_curves(data.history, data.runs),
                                                                        folder, "eval_curves.png")))
    sections.append(Section("Target lengths over training",
                            figure=_save(figures.lstar_curves(data.history, data.runs), folder, "lstar.png")))
    sections.append(Section(
        "Target lengths per problem against the minimal length",
        "At each trial's last evaluation, over the problems it solved: medians of L* / minimal and length / "
        "minimal; the share of targets within 10% of the minimal length and above 1.5x it (still verbose)."
        + ("" if "length_over_minimal" in lstar.column_names else " Length / minimal is left out: with one sample "
           "per problem (eval.n_samples 1), L* is that sample's length, so the two medians are equal."),
        table=lstar.to_pylist() or None,
        figure=_save(figures.lstar_per_problem(data.problems, data.runs), folder, "lstar_per_problem.png"),
    ))
    per_trial, per_arm = compute_spent(data.history, data.runs)
    sections.append(Section(
        "Compute spent",
        "Sums over each trial's logged steps: response tokens generated in rollouts and in evaluations, prompt + "
        "response tokens through the policy update (every PPO epoch), and the steps' seconds (without process "
        "start-up and restarts). An arm's row sums its trials: a population of 4 spends what its 4 members spent.",
        table=per_arm.to_pylist() or None,
    ))
    population = population_section(data, folder, per_trial)
    if population is not None:
        sections.append(population)
    cost = cost_of_a_fixed_weight(data, per_trial, shapes)
    if cost is not None:
        sections.append(cost)
    tables = {"arm_summary": summary, "weight_shape": shapes, "lstar_vs_minimal": lstar,
              "compute_per_trial": per_trial, "compute_per_arm": per_arm}
    return sections, tables


def cost_of_a_fixed_weight(data: StudyData, per_trial: pa.Table, shapes: pa.Table) -> Section | None:
    """Each adaptive or searched arm against the best of the fixed-weight grid (regret, with its
    interval), beside what each side spent: the arm's own runs, and every run of the grid."""
    found = regrets(data)
    if not found:
        return None
    spent = {r["trial"]: r["rollout_tokens"] + r["train_tokens"] for r in per_trial.to_pylist()}
    settled = {r["trial"]: r["settled"] for r in shapes.to_pylist()}
    w_corr = dict(zip(data.runs["trial"].to_pylist(), data.runs[figures.FIXED_W_CORR].to_pylist())) \
        if figures.FIXED_W_CORR in data.runs.column_names else {}
    grid = [t for t, motion in motions(data.runs).items() if motion == M.FIXED]
    grid_tokens = sum(spent.get(t, 0) for t in grid)

    def mean(values) -> float | None:
        values = [float(v) for v in values if v is not None]
        return sum(values) / len(values) if values else None

    table = [{
        "arm": r.group.label, "seeds": len(r.group.scores.seeds),
        "settled w_corr": mean(settled.get(t) for t in r.group.trials),
        "best fixed": r.best_fixed.label, "its w_corr": mean(w_corr.get(t) for t in r.best_fixed.trials),
        "AES diff": r.aes.difference, "low": r.aes.low, "high": r.aes.high, "P(ahead)": r.aes.p_ahead,
        "verdict": r.aes.verdict, "detectable (80%)": r.aes.detectable,
        "tokens (arm)": sum(spent.get(t, 0) for t in r.group.trials),
        "tokens (grid)": grid_tokens,
    } for r in found]
    text = (
        "Every adaptive or searched arm against the best arm of the fixed-weight grid it stands in for (chosen on "
        "the selection problems; compared on the test problems, 95% interval, as above): its AES minus "
        "the fixed arm's, where its weight settled (mean of the last 20% of steps) beside the fixed weight, and "
        f"the compute each side spent to get there: the arm's own runs, against all {len(grid)} runs of the grid "
        "(which had to run to know its best)."
    )
    return Section("The cost of finding a fixed weight", text, table=table)


def _power(c: Comparison) -> str:
    """What the design could see: the smallest difference found with 80% power."""
    if c.detectable == 0:
        return " (no spread at all: any difference would have shown)"
    return f" (a difference below {c.detectable:.3g} would often not have been seen: 80% power)"


def _interval(c: Comparison) -> str:
    return f"{c.difference:+.4g} [{c.low:+.4g}, {c.high:+.4g}]"


def verdict_words(verdict: str, focus: str | None) -> str:
    """``ahead`` / ``behind`` as the focus arm's: "psi ahead", "gate behind"; or "not distinguishable"."""
    return verdict if verdict == "not distinguishable" else f"{focus} {verdict}"


def comparison_section(data: StudyData) -> Section:
    """The arm under test against the best other arm, by the protocol of ``analysis.comparisons``."""
    focus = data.focus
    heading = f"{focus} (the arm under test) against the best other arm"
    result = compare_study(data)
    if result is None:
        return Section(heading, f"No comparison: the study has no evaluated arm under test ({focus or 'none named'}) "
                                "and other arm to set against each other (or no base-model numbers, or too few "
                                "evaluation problems to split).")
    chosen, other, head = result.best_focus, result.best_other, result.headline
    seeds_chosen, seeds_other = len(chosen.scores.seeds), len(other.scores.seeds)
    if seeds_chosen == 1 and seeds_other == 1:
        seeds_text = ("Both rest on one seed: no interval over seeds can be given; the intervals cover the evaluation "
                      "problems and their sampling only, not the spread between training runs.")
    else:
        paired = head["aes"].paired_seeds
        seeds_text = (f"{chosen.label} rests on {seeds_chosen} seed(s), {other.label} on {seeds_other}; "
                      + (f"seeds {list(paired)} are paired." if paired else "their seeds are not shared (each side's seed spread counts).")
                      + " With few seeds an interval over seeds is narrow when runs differ much (see "
                      "benchmarks/stats_coverage.py for the measured coverage).")
    text = (
        f"Protocol: a fixed third of the evaluation problems ({result.selection_problems}, chosen by a seeded hash "
        f"of the problem id) selects the best variant of {focus} and the best other arm by mean AES over seeds; they are "
        f"compared on the other {result.test_problems} problems, never on the numbers that chose them.\n"
        f"Chosen: {chosen.label} (selection AES {result.selection_aes[chosen.label]:.4g}) and {other.label} "
        f"({other.weighting} weights; selection AES {result.selection_aes[other.label]:.4g}).\n"
        f"On the test problems, {focus} minus the other, 95% t interval from the seed and problem variance components "
        f"(problems paired, {len(head['aes'].paired_seeds) or 'no'} seed(s) paired; few seeds give few degrees of "
        f"freedom and a wider interval), P({focus} ahead) = the probability under that t distribution that {focus} "
        f"is better:\n"
        f"  AES {_interval(head['aes'])}, P {head['aes'].p_ahead:.2f}: {verdict_words(head['aes'].verdict, focus)}"
        f"{_power(head['aes'])}\n"
        f"  accuracy {_interval(head['accuracy'])}, P {head['accuracy'].p_ahead:.2f}: "
        f"{verdict_words(head['accuracy'].verdict, focus)}{_power(head['accuracy'])}\n"
        f"  length {_interval(head['length'])}, P(shorter) {head['length'].p_ahead:.2f}: "
        f"{verdict_words(head['length'].verdict, focus)}{_power(head['length'])}\n"
        "Power: a true difference smaller than the one stated would have been found less than 80% of the time by "
        "this design (t quantiles on the interval's degrees of freedom, with the standard error measured from its seed and "
        "problems), so \"not distinguishable\" rules out only differences of about that size or more.\n"
        f"{seeds_text}\nThe table sets {chosen.label} against every other arm on the same test problems."
    )
    far = outlying_seeds(data.runs, focus)
    if far:
        text += ("\n**A seed far from the others** (" + "; ".join(
            f"{label}: seed {', '.join(f'{seed} ({x:+.3g})' for seed, x in seeds)}" for label, seeds in sorted(far.items()))
            + f", the AES difference outside the other seeds' prediction interval, a {OUTLYING:.0%} chance per comparison "
            "for Gaussian seeds): a run that fell apart? With a few seeds a rare mode cannot be estimated, and an interval may be too narrow when the arms "
            "differ in how often it happens (benchmarks/stats_coverage.py, collapse rows); a sequential design "
            "(design: {kind: sequential}) gives such a comparison more seeds.")
    return Section(heading, text, table=versus_table(result, focus))


BASE_MODEL_SEED = M.param_column("model.tiny.seed")
BASE_MODEL_PATH = M.param_column("model.path")


def base_models(data: StudyData) -> list[str]:
    """The base models the study's trials started from: their model path, else the seed of the tiny model built."""
    for column in (BASE_MODEL_PATH, BASE_MODEL_SEED):
        if column in data.runs.column_names:
            values = sorted({v for v in data.runs[column].to_pylist() if v not in (None, "None")})
            if values:
                return [Path(v).name if column == BASE_MODEL_PATH else f"tiny model seed {v}" for v in values]
    return []


def base_model_section(data: StudyData) -> Section | None:
    """Where trials started from several base models: each base model's own result, the arm under
    test minus every other arm (and variant) on final AES, over the seeds run on that base model."""
    if BASE_MODEL_PATH not in data.runs.column_names:
        return None
    models = sorted(set(data.runs[BASE_MODEL_PATH].to_pylist()))
    if len(models) < 2:
        return None
    table, signs = [], {}
    for model in models:
        runs = data.runs.filter(pc.equal(data.runs[BASE_MODEL_PATH], model))
        row = {"base model": Path(model).name, "seeds": sorted(set(runs.filter(pc.equal(runs["arm"], data.focus))["seed"].to_pylist()))}
        for label, d in paired_differences(runs, data.focus).items():
            row[label] = sum(d.values()) / len(d) if d else None
            if row[label]:
                signs.setdefault(label, set()).add(row[label] > 0)
        table.append(row)
    disagree = sorted(label for label, seen in signs.items() if len(seen) > 1)
    text = (f"The trials started from {len(models)} base models. Each cell: {data.focus} minus that arm, final AES, "
            "mean over the seeds run on that base model (each trial's AES against its own base model). "
            + (f"The base models disagree in sign on: {', '.join(disagree)}; a verdict that flips with the base model "
               "is a statement about base models as well as RL seeds." if disagree else
               "Every comparison has the same sign on every base model.")
            + " The sections below score AES against the mean of the base models' accuracy and length (the "
            "trials' own AES, against each one's base model, is in the table above and in the runs).")
    return Section("Per base model", text, table=table)


def sequential_sections(data: StudyData, folder: Path) -> list[Section]:
    """A sequential study's verdicts (each comparison's repeated interval where it stopped), the
    figure of every look, and the decision path."""
    d, focus, path = data.design, data.focus, data.decision_path
    last = {look["comparison"]: look for look in path}  # the stopping look of each comparison
    models = base_models(data)
    population = (f"RL seeds on base model {models[0]}" if len(models) == 1 else
                  f"base models and RL seeds ({len(models)} base models)" if models else "RL seeds")
    text = (
        f"Design: sequential (study.designs). Seeds in the listed order; after {d['min_seeds']} seeds of every "
        f"comparison, and after each further seed, every open comparison's repeated {1 - d['alpha']:.0%} interval "
        f"(a group-sequential paired t over seeds, alpha spent as alpha (n / {d['max_seeds']}) ** {d.get('rho', 2.0):g}, "
        "boundaries calibrated under the least favourable of four laws of the seed differences: Gaussian, t with 3 df, "
        "one arm skewed, one arm collapsing on 10% of seeds) was read: it decides when it excludes zero"
        + (f" or lies inside +-{d['equivalence']:g} (equivalent)" if d.get("equivalence") else "")
        + f"; the others got the next seed. Stopped: {data.design_stopped or 'not yet (the study is unfinished)'}. "
        f"{len(data.runs)} trials ran (of {len(data.planned)} the seeds list allows).\n"
        f"What each interval covers: the difference in {d.get('metric', M.EVAL_AES)} ({focus} minus the other; each trial's final "
        f"evaluation on all its evaluation problems, against its own base model) over {population}, "
        + ("on problems like these evaluation problems: each interval is widened by the problem set's own margin "
           "(a fifth of alpha; more seeds never shrink it, so a comparison that margin alone keeps undecided stops as "
           "'more seeds cannot decide'). " if d.get("problems") == "like these" else
           "on these evaluation problems (problems beyond them would add a margin more seeds cannot shrink: "
           "design.problems 'like these' adds it). ")
        + "It is per comparison: "
        f"95% each, not simultaneous over the {len(last)} comparisons (that would need alpha / {len(last) or 1} each). "
        "It keeps its coverage wherever the study stopped (a decision, the maximum, a budget); the fixed-design "
        "intervals of the next section do not, after the data chose the seeds: read the verdicts here."
    )
    rows = [{"other": name, "seeds": look["seeds"], "estimate": look["estimate"], "low": look["low"],
             "high": look["high"], "boundary c_n": look["boundary"],
             "verdict": verdict_words(look["decision"], focus) if look["decision"] in ("ahead", "behind") else
             f"not decided ({data.design_stopped or 'the study is unfinished'})" if look["decision"] == "continue"
             else look["decision"]}
            for name, look in sorted(last.items())]
    metric = d.get("metric", M.EVAL_AES)
    figure = _save(figures.repeated_intervals(path, focus, metric), folder, "repeated_intervals.png") if path else None
    steps = [{"look": i + 1, **{k: look[k] for k in ("comparison", "seeds", "estimate", "low", "high", "decision",
                                                       "trials_started")}, "next": ", ".join(look["next"])}
             for i, look in enumerate(path)]
    return [Section(f"Verdicts of the sequential design ({focus} against each other arm)", text, table=rows or None,
                    figure=figure),
            Section("Decision path", "Every look in the order it was made: the interval, what it decided, the trials "
                    "started by then, and the trials it asked for next.", table=steps or None)]


def versus_table(result, focus: str | None) -> list[dict]:
    """The chosen variant of the arm under test against every other arm, on the test problems: one row each."""
    return [
        {"other": g.label, "seeds": len(g.scores.seeds),
         **{f"{m} diff": c[m].difference for m in ("aes", "accuracy", "length")},
         "aes low": c["aes"].low, "aes high": c["aes"].high, f"P({focus} ahead)": c["aes"].p_ahead,
         "verdict (AES)": verdict_words(c["aes"].verdict, focus), "AES detectable (80%)": c["aes"].detectable,
         "interval covers": c["aes"].covers}
        for g, c in result.versus
    ]


def equal_tokens_section(data: StudyData) -> Section | None:
    """Every arm taken where it had spent the cheapest trial's rollout tokens (``equal_token_steps``),
    and the arm under test against the others there by the same protocol; None when every trial is taken at its
    last evaluation anyway (the arms spent alike)."""
    budget, steps, tokens = equal_token_steps(data.history, data.problems)
    last = {r["trial"]: r["step"] for r in final_problems(data.problems).select(["trial", "step"]).to_pylist()}
    if not steps or all(steps[t] == last.get(t) for t in steps):
        return None
    base, result = base_numbers(data), compare_study(data, steps=steps)
    versus = {g.label: c["aes"] for g, c in result.versus} if result else {}
    rows = []
    for g in final_groups(data, steps):
        against = versus.get(g.label)
        rows.append({
            "arm": g.label, "seeds": len(g.scores.seeds),
            "eval steps": ", ".join(str(s) for s in sorted({steps[t] for t in g.trials if t in steps})),
            "rollout tokens": sum(tokens[t] for t in g.trials if t in tokens) / len(g.scores.seeds),
            "accuracy": float(g.scores.accuracy.mean()), "length": float(g.scores.length.mean()),
            "AES": g.scores.aes(*base) if base else None,
            f"{data.focus} minus it (AES, test problems)": _interval(against) if against else None,
            "verdict": verdict_words(against.verdict, data.focus) if against else None,
        })
    verdict = (f"No comparison at this point (no evaluated arm under test, {data.focus}, and other arm, or no base "
               "numbers)." if result is None else
               f"{data.focus} against the others here, by the protocol above (chosen: {result.best_focus.label} and "
               f"{result.best_other.label}): AES {_interval(result.headline['aes'])}, "
               f"{verdict_words(result.headline['aes'].verdict, data.focus)}{_power(result.headline['aes'])}.")
    text = (f"The arms did not spend the same rollout tokens (a group filter that samples more, or draws more rounds, "
            f"spends more per step). The cheapest trial generated {budget:,.0f} response tokens in rollouts up to its last "
            "evaluation; every trial is taken at its evaluation whose running rollout tokens are nearest to that (its "
            "evaluation steps limit how near), and scored on all evaluation problems. " + verdict)
    return Section("At equal rollout tokens", text, table=rows)


def population_section(data: StudyData, folder: Path, per_trial: pa.Table) -> Section | None:
    """The PBT / PB2 members' effective schedules against the arm under test, the exploits, and what each spent."""
    settings = sorted({k for k in data.history["key"].to_pylist() if k.startswith(SETTING)})
    if not settings:
        return None
    w_corr = M.SETTING_PREFIX + M.W_CORR_SETTING
    setting = w_corr if w_corr in settings else settings[0]
    own = series(data.history, setting)
    members = sorted(own)
    schedules = effective_schedules(data.history, data.exploits, setting)
    focus_trials = {t for t, arm in zip(data.runs["trial"].to_pylist(), data.runs["arm"].to_pylist()) if arm == data.focus}
    focus_lines = {t: v for t, v in series(data.history, M.lead("w_corr")).items() if t in focus_trials}
    spent = {r["trial"]: r for r in per_trial.to_pylist()}
    final_aes = M.final_column(M.EVAL_AES)
    aes_column = data.runs[final_aes].to_pylist() if final_aes in data.runs.column_names else []
    final = dict(zip(data.runs["trial"].to_pylist(), aes_column))
    best = max(members, key=lambda t: final.get(t) if final.get(t) is not None else float("-inf"))
    focus_aes = [final[t] for t in focus_lines if final.get(t) is not None]

    def tokens(trials) -> float:
        return sum(spent.get(t, {}).get("rollout_tokens", 0) + spent.get(t, {}).get("train_tokens", 0) for t in trials)

    text = (
        f"{len(members)} members (named by their starting settings) moved {setting.removeprefix(SETTING)}; "
        f"{data.exploits.num_rows} exploit(s). Solid: "
        "each member's effective schedule (the settings its final weights were trained under, followed back through "
        f"its exploits); dotted: what the member ran itself; x: an exploit; dashed: {data.focus}'s w_corr.\n"
        f"Best member by final AES on the whole evaluation set: {best}, AES {_cell(final.get(best))}, having spent "
        f"{tokens([best]):.4g} rollout + training tokens itself; the population spent {tokens(members):.4g}.\n"
        + (f"{data.focus} (the arm under test): mean final AES {sum(focus_aes) / len(focus_aes):.4g} over {len(focus_aes)} "
           f"run(s), {tokens(focus_lines) / max(len(focus_lines), 1):.4g} tokens per run, {tokens(focus_lines):.4g} in all." if focus_aes else
           "No trial of the arm under test to set against it.")
        + ("\nEach member's run ends with the replay of its schedule (train_config.yaml: w_corr as points). Does the "
           f"schedule {best} found beat {data.focus} when replayed on other seeds? python -m analysis.replay_spec --study "
           f"{data.study} --seeds 1 2 3 --out replay.yaml, then python -m study.run replay.yaml: its report answers "
           "with intervals over those seeds." if focus_aes else "")
        + "\nThe comparison with intervals (and the member chosen on held-out problems) is in the section above."
    )
    table = [{"trial": r["trial"], "step": r["step"], "donor": r["donor"], "old": r["old"], "new": r["new"]}
             for r in data.exploits.to_pylist()]
    figure = _save(figures.population_schedules(schedules, own, data.exploits, focus_lines, setting), folder, "population.png")
    return Section(f"Population (PBT / PB2) against {data.focus}", text, table=table or None, figure=figure)


def _save(fig, folder: Path, name: str) -> str:
    (folder / "figures").mkdir(exist_ok=True)
    fig.savefig(folder / "figures" / name, dpi=110)
    return f"figures/{name}"


def write_report(tracking_uri: str, study: str, out: Path, log_artifacts: bool = True) -> Path:
    """Build the report into ``out`` and return ``out/report.html``. An earlier report there is
    replaced whole; any other non-empty folder is refused (ValueError) before anything is read."""
    out = out.expanduser().resolve()
    check_replaceable(out, "report")  # before anything is read; replace_owned checks again at the swap
    check_writable_dir(out.parent)
    data = load_study(tracking_uri, study)
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        sections, tables = build_sections(data, folder)
        data.write_parquet(folder)
        for name, table in tables.items():
            pq.write_table(table, folder / f"{name}.parquet")
        sections.append(Section(
            "Files",
            "runs.parquet (one row per trial), history.parquet (run, key, step, value), problems.parquet "
            "(per-problem evaluations), exploits.parquet (PBT / PB2 exploits), arm_summary.parquet, weight_shape.parquet, "
            "lstar_vs_minimal.parquet, compute_per_trial.parquet, compute_per_arm.parquet.\n"
            f"Rebuild: python -m analysis.report --study {study} --tracking-uri {tracking_uri} --out {out}",
        ))
        title = f"Study {study}"
        (folder / "report.md").write_text(render_markdown(title, sections))
        (folder / "report.html").write_text(render_html(title, sections, folder))
        replace_owned(folder, out, "report")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if log_artifacts and data.parent_run_id:
        MlflowClient(tracking_uri).log_artifacts(data.parent_run_id, str(out), artifact_path=REPORT_ARTIFACT)
    return out / "report.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description="Write a study's report.")
    parser.add_argument("--study", required=True, help="the study's name (its MLflow experiment)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: reports/STUDY)")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to the study's parent run")
    args = parser.parse_args(argv)
    tracking_uri = args.tracking_uri or default_tracking_uri()
    try:
        path = write_report(tracking_uri, args.study, args.out or Path("reports") / args.study, not args.no_log)
    except ValueError as exc:  # a store, a study or a folder that cannot be used (StoreError is one)
        return print_errors(exc)
    except OSError as exc:
        return print_errors(OSError(f"--out: {exc}"))
    print(f"Report: {path}")
    print(f"        {path.with_name('report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
