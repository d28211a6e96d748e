"""A study spec that asks whether the schedule a population found beats the arm under test on other seeds.

    python -m analysis.replay_spec --study psi_vs_pbt [--member TRIAL] [--seeds 1 2 3] [--out FILE]

Takes a PBT / PB2 member (default: the best by final ``eval/aes``), whose run ends with the replay
of its final weights' lineage (``train_config.yaml``: w_corr as schedule points, its other searched
settings final), and a trial of the study's arm under test (PSI by default), and writes a spec with
two arms: the replayed schedule and that arm, each with exactly the settings it ran with, on
``--seeds``, the latter its focus. Run it with
``python -m study.run FILE``; its report compares the two with intervals over those seeds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

from analysis.load import StudyData, load_study
from stores.mlflow_store import StoreError, check_store, default_tracking_uri
from trainers import contract as M
from trainers.io.outputs import write_atomic
from trainers.settings import deep_merge, dotted, lookup, print_errors


def trial_config(client: MlflowClient, run_id: str) -> dict[str, Any]:
    """The ``train_config.yaml`` a trial's run holds (a population member's: its replay)."""
    with tempfile.TemporaryDirectory() as tmp:
        return yaml.safe_load(Path(client.download_artifacts(run_id, M.TRAIN_CONFIG_ARTIFACT, tmp)).read_text())


def pick(data: StudyData, member: str | None) -> tuple[dict, dict]:
    """The member (named, or the best by final AES) and the first trial of the arm under test: their runs-table rows."""
    rows = data.runs.to_pylist()
    members = [r for r in rows if r[M.TAG_MOTION] == M.SEARCHED]
    psi = [r for r in rows if r["arm"] == data.focus]
    if not members:
        raise StoreError(f"study '{data.study}' has no population member (weight_motion: searched)")
    if not psi:
        raise StoreError(f"study '{data.study}' has no trial of its arm under test ({data.focus or 'none named'}) "
                         "to set the schedule against")
    if member is not None:
        chosen = [r for r in members if r["trial"] == member]
        if not chosen:
            raise StoreError(f"--member: no member named '{member}' (members: {', '.join(r['trial'] for r in members)})")
        return chosen[0], psi[0]
    aes = M.final_column(M.EVAL_AES)
    best = max(members, key=lambda r: r.get(aes) if r.get(aes) is not None else float("-inf"))
    return best, psi[0]


def differences(config: dict, base: dict) -> dict:
    """The settings of ``config`` that ``base`` does not have or has otherwise, as nested overrides."""
    flat_config, flat_base = M.params(config), M.params(base)
    out: dict = {}
    for key in flat_config:
        if flat_config[key] != flat_base.get(key):
            out = deep_merge(out, dotted(key, lookup(config, key)))
    return out


def replay_spec(study: str, replay: dict, psi: dict, member: str, seeds: list[int], focus: str) -> dict:
    """Two arms on ``seeds``: the member's replayed schedule (the shared ``base``) and the arm under
    test, ``focus`` (its own weighting, and whatever else it ran with otherwise, as overrides)."""
    base = {key: value for key, value in replay.items() if key != "seed"}
    base["lead"] = {key: value for key, value in replay["lead"].items() if key != "weighting"}
    psi_rest = {key: value for key, value in psi.items() if key != "seed"}
    psi_rest["lead"] = {key: value for key, value in psi["lead"].items() if key != "weighting"}
    arms = [{"name": "replay", "weighting": replay["lead"]["weighting"]},
            {"name": focus, "weighting": psi["lead"]["weighting"], "overrides": differences(psi_rest, base)}]
    return {"name": f"{study}-replay", "description": f"{member}'s replayed schedule (from study {study}) against "
            f"{focus} on other seeds", "base": base, "seeds": seeds, "arms": arms, "focus": focus}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.replay_spec", description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    parser.add_argument("--member", default=None, help="a population member's trial name (default: the best by final AES)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=None, help="the spec to write (default: STUDY-replay.yaml)")
    args = parser.parse_args(argv)
    out = args.out or Path(f"{args.study}-replay.yaml")
    try:
        tracking_uri = check_store(args.tracking_uri or default_tracking_uri(), writing=False)
        data = load_study(tracking_uri, args.study)
        member, psi = pick(data, args.member)
        client = MlflowClient(tracking_uri)
        spec = replay_spec(args.study, trial_config(client, member["run_id"]), trial_config(client, psi["run_id"]),
                           member["trial"], sorted(set(args.seeds)), data.focus)
        write_atomic(out, f"# python -m study.run {out}\n" + yaml.safe_dump(spec, sort_keys=False))
    except StoreError as exc:
        return print_errors(exc)
    except OSError as exc:
        return print_errors(OSError(f"--out: {exc}"))
    print(f"{out}: {member['trial']}'s schedule against {psi['trial']} on seeds {sorted(set(args.seeds))}")
    print(f"next: python -m study.run {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
