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
import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient

from analysis import figures
from analysis.compute import (
    arm_summary, lstar_versus_minimal, moving_weight_trials, pareto_front, psi_versus_best_other, weight_shape,
)
from analysis.load import StudyData, StudyError, default_tracking_uri, load_study
from trainers.outputs import check_replaceable, check_writable_dir, replace_owned

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
    if missing:
        text += f" Missing (not started or never logged): {', '.join(missing)}."
    not_done = [r for r in rows if r["status"] != "FINISHED"]
    not_done += [{"trial": name, "arm": None, "variant": None, "seed": None, "status": "MISSING", "steps": 0}
                 for name in missing]
    if not_done:
        text += " Statistics below use whatever these trials logged; the ones without an evaluation are left out."
    return text, not_done


def _arm_label(row: dict) -> str:
    return row["arm"] if row["arm"] == row["variant"] else f"{row['arm']}/{row['variant']}"


def build_sections(data: StudyData, folder: Path) -> tuple[list[Section], dict[str, pa.Table]]:
    """Every section of the report (figures saved under ``folder/figures``) and the derived tables."""
    summary = arm_summary(data.runs)
    front = pareto_front(summary)
    versus = psi_versus_best_other(summary)
    shapes = weight_shape(data.history, moving_weight_trials(data.runs))
    lstar = lstar_versus_minimal(data.problems, data.runs)
    status_text, not_done = trial_status(data)

    sections = [Section("Trials", status_text, table=not_done or None)]
    best, psi_rows = versus["best_other"], versus["psi"]
    if best and psi_rows:
        psi, gap = psi_rows[0], psi_rows[0]["gap"]
        verdict = (
            f"Best PSI arm by AES ({_arm_label(psi)}, reward {psi['reward']}): AES {psi['aes_mean']:.4g}, accuracy "
            f"{psi['accuracy_mean']:.4g}, length {psi['length_mean']:.4g}.\nBest arm without PSI by AES "
            f"({_arm_label(best)}, reward {best['reward']}, {best['weighting']} weights, {best['normalization']} "
            f"normalization): AES {best['aes_mean']:.4g}, accuracy {best['accuracy_mean']:.4g}, length "
            f"{best['length_mean']:.4g}.\nBest PSI minus best non-PSI AES: {gap:+.4g} "
            f"({'PSI ahead' if gap > 0 else 'PSI behind' if gap < 0 else 'a tie'}; a difference of means over "
            f"{psi['seeds']} and {best['seeds']} seed(s), without an interval)."
        )
    else:
        verdict = "No comparison: the study has no evaluated PSI arm and non-PSI arm to set against each other."
    table = [
        {"arm": r["arm"], "variant": r["variant"], "reward": r["reward"], "aes_mean": r["aes_mean"], "gap_to_best_other": r["gap"]}
        for r in psi_rows
    ]
    sections.append(Section("PSI against the best arm without PSI", verdict, table=table if len(table) > 1 else None))
    sections.append(Section("Per arm, over seeds (final evaluation)", table=summary.to_pylist() or None))
    sections.append(Section(
        "Accuracy against length",
        "On the Pareto front (nothing else is both more accurate and shorter): "
        + (", ".join(f"{arm}/{variant}" for arm, variant in front) or "none yet") + ". Colour: the length "
        "reward; marker: the weighting (star PSI, circle static, square schedule).",
        figure=_save(figures.pareto(summary, front), folder, "pareto.png"),
    ))
    sections.append(Section(
        "Where PSI's weights went",
        "For every trial whose weights move (PSI, schedules): start, peak, the first step w_corr fell, and "
        "where it settled (mean of the last 20% of steps). The figure sets them against the static grid.",
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
        "minimal; the share of targets within 10% of the minimal length and above 1.5x it (still verbose).",
        table=lstar.to_pylist() or None,
        figure=_save(figures.lstar_per_problem(data.problems, data.runs), folder, "lstar_per_problem.png"),
    ))
    tables = {"arm_summary": summary, "weight_shape": shapes, "lstar_vs_minimal": lstar}
    return sections, tables


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
            "(per-problem evaluations), arm_summary.parquet, weight_shape.parquet, lstar_vs_minimal.parquet.\n"
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
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: --out: {exc}", file=sys.stderr)
        return 2
    print(f"Report: {path}")
    print(f"        {path.with_name('report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
