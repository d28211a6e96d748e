"""What a study shows, computed from the runs table of ``analysis.load``.

- ``arm_summary``: per (arm, variant), over seeds, the mean and sample std (ddof 1) of the final
  eval accuracy, length and AES;
- ``psi_versus_best_static``: the best static variant by mean AES and PSI's gap to it;
- ``pareto_front``: the (arm, variant) pairs no other pair beats on both accuracy (higher) and
  length (lower);
- ``series`` / ``weight_shape``: a metric's trajectory per trial, and where PSI's weight went
  (start, peak, first fall, settled value).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

FINAL = {"accuracy": "final/eval/accuracy", "length": "final/eval/response_length", "aes": "final/eval/aes"}


def arm_summary(runs: pa.Table) -> pa.Table:
    """One row per (arm, variant): ``seeds`` and ``<metric>_mean`` / ``<metric>_std``, sorted by arm."""
    columns = ["arm", "variant", "param.lead.weighting", *FINAL.values()]
    table = runs.select([c for c in columns if c in runs.column_names])
    aggregations = [("arm", "count")]
    for column in FINAL.values():
        aggregations += [(column, "mean"), (column, "stddev", pc.VarianceOptions(ddof=1))]
    grouped = table.group_by(["arm", "variant", "param.lead.weighting"]).aggregate(aggregations)
    out = {
        "arm": grouped["arm"],
        "variant": grouped["variant"],
        "weighting": grouped["param.lead.weighting"],
        "seeds": grouped["arm_count"],
    }
    for name, column in FINAL.items():
        out[f"{name}_mean"] = grouped[f"{column}_mean"]
        out[f"{name}_std"] = grouped[f"{column}_stddev"]
    return pa.table(out).sort_by([("arm", "ascending"), ("variant", "ascending")])


def psi_versus_best_static(summary: pa.Table) -> dict:
    """The best static variant by mean AES, PSI's mean AES and the gap (None where one is missing)."""
    rows = summary.to_pylist()
    static = [r for r in rows if r["weighting"] == "static" and r["aes_mean"] is not None]
    psi = [r for r in rows if r["weighting"] == "psi" and r["aes_mean"] is not None]
    best = max(static, key=lambda r: r["aes_mean"]) if static else None
    psi_best = max(psi, key=lambda r: r["aes_mean"]) if psi else None
    gap = psi_best["aes_mean"] - best["aes_mean"] if best and psi_best else None
    return {"best_static": best, "psi": psi_best, "psi_minus_best_static_aes": gap}


def pareto_front(summary: pa.Table) -> list[tuple[str, str]]:
    """(arm, variant) pairs on the accuracy-versus-length frontier (higher accuracy, shorter length)."""
    points = [(r["arm"], r["variant"], r["accuracy_mean"], r["length_mean"]) for r in summary.to_pylist()]
    points = [p for p in points if p[2] is not None and p[3] is not None]

    def dominated(p) -> bool:
        return any(
            q[2] >= p[2] and q[3] <= p[3] and (q[2] > p[2] or q[3] < p[3]) for q in points if q is not p
        )

    return sorted((p[0], p[1]) for p in points if not dominated(p))


def series(history: pa.Table, key: str) -> dict[str, tuple[list[int], list[float]]]:
    """``key``'s (steps, values) per trial, in step order."""
    rows = history.filter(pc.equal(history["key"], key)).sort_by([("trial", "ascending"), ("step", "ascending")])
    out: dict[str, tuple[list[int], list[float]]] = {}
    for trial, step, value in zip(rows["trial"].to_pylist(), rows["step"].to_pylist(), rows["value"].to_pylist()):
        steps, values = out.setdefault(trial, ([], []))
        steps.append(step)
        values.append(value)
    return out


def weight_shape(history: pa.Table, settle_fraction: float = 0.2) -> pa.Table:
    """Where each trial's used ``w_corr`` went: its start, peak, the first step it fell, and where it
    settled (the mean over the last ``settle_fraction`` of its steps)."""
    rows = []
    for trial, (steps, values) in series(history, "lead/w_corr").items():
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
