"""Run a study: ``python -m study.run SPEC.yaml [--smoke-test] [--resume] ...``.

Validates the spec, the output directory, the tracking store and the Ray address before anything
is created; builds (or reuses) and evaluates the base model once; runs every trial with Ray Tune
(retries from checkpoints, ``--resume`` after a driver crash); mirrors everything into MLflow from
the driver; prints a final table and where to look next. Bad input: one line, exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shlex
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from stores.mlflow_store import StoreError, check_store, default_tracking_uri
from study.designs import Design, Fixed
from study.lock import StudyLocked, study_lock
from study.nodes import check_nodes, needed_modules
from study.plan import TrialPlan, plan_trials, trial_table
from study.search_modes import SearchMode
from study.spec import StudySpec, load_spec
from study.storage import Storage, StorageError, open_storage
from trainers import contract as M
from trainers.config import TrainConfig
from trainers.runtime import kernels
from trainers.settings import ConfigError, deep_merge, files_unchecked, print_errors


class UsageError(ValueError):
    """A bad flag or an unusable environment, phrased as one line."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.run", description="Run a LEAD study with Ray Tune and MLflow.")
    parser.add_argument("spec", type=Path, help="a study spec (YAML), e.g. search_spaces/psi_vs_static.yaml")
    parser.add_argument("--smoke-test", action="store_true", help="every arm, 2 steps, tiny batches, one evaluation")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted study; finished trials stay done")
    parser.add_argument("--output-dir", default=None, help="Ray results, checkpoints and the report: a folder "
                        "(default: runs/) or a URI Ray Tune takes (s3://bucket/prefix, gs://..., file://...)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    parser.add_argument("--max-concurrent-trials", type=int, default=None)
    parser.add_argument("--address", default=None, help="an existing Ray cluster (default: $RAY_ADDRESS, else local)")
    parser.add_argument("--dry-run", action="store_true", help="resolve every trial and print a table of them, run nothing")
    parser.add_argument("--show-configs", action="store_true", help="with --dry-run: every trial's whole config as YAML")
    parser.add_argument("--no-report", action="store_true", help="skip the report (python -m analysis.report) at the end")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a spec setting over the file's, e.g. --set base.train.steps=10 --set seeds=[0,1] "
                        "(read as YAML; recorded on the study's run; --resume needs the same)")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- checks before anything starts


def check_output_dir(where) -> Storage:
    """The study's storage: a local folder, or a URI (``s3://bucket/prefix``, ``gs://...``, ``file://...``)."""
    try:
        return open_storage(where)
    except StorageError as exc:
        raise UsageError(f"--output-dir: {exc}") from None


def resolve_tracking_uri(uri: str | None) -> str:
    try:
        return check_store(uri or default_tracking_uri(), writing=True)
    except StoreError as exc:
        raise UsageError(f"--tracking-uri: {exc}") from None


def check_ray_address(address: str) -> None:
    """Fail fast on an unreachable cluster (``ray.init`` itself retries for minutes)."""
    import socket

    if address == "auto":
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=3).close()
    except (OSError, ValueError) as exc:
        raise UsageError(f"--address: cannot connect to the Ray cluster at {address} ({exc})") from None


def project_code() -> dict[str, Any]:
    """The runtime environment that ships this project's packages to every node of a cluster: a
    node needs the dependencies (``pip install`` of them), not a checkout; the packages a trial
    imports come from the driver's copy (Ray uploads them once per content hash). Its workers
    start at the driver's CPU kernel level (``trainers.runtime.kernels``)."""
    import importlib.util

    return {"py_modules": [str(Path(importlib.util.find_spec(name).origin).parent)
                           for name in ("analysis", "stores", "study", "trainers")], **kernel_level_env()}


def kernel_level_env() -> dict[str, Any]:
    """The runtime environment that starts every Ray worker at the driver's CPU kernel level."""
    from trainers.runtime import kernels

    return {"env_vars": kernels.child_environment()}


def connect_ray(address: str | None, num_cpus: int) -> None:
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():  # a caller (a notebook, a test, ``ray job submit``'s entrypoint) already connected
        return
    try:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=True, runtime_env=project_code())
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=kernel_level_env())
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(f"--address: cannot connect to the Ray cluster at {address}: {str(exc).splitlines()[0]}") from None


# --------------------------------------------------------------------------- preparation


def prepare_base_models(plans: list[TrialPlan], threads: int, log, ship_to: Storage | None = None,
                        ship_model: bool = True) -> tuple[dict[str, Any], dict[str, float], dict[str, dict]]:
    """Build (or reuse) and evaluate every distinct base model once, in the driver, on the
    ``threads`` the trials run on (their evaluations then find it in the cache).

    Returns the ``model`` settings to fix in each trial (an absolute path, or the URI, by trial name), the
    first trial's base metrics (for the parent run), and, with ``ship_to`` (object storage), what
    each trial fetches from there instead of the driver's disk (``study.shipping``; the model
    itself only with ``ship_model``)."""
    from study.shipping import ship
    from trainers.loop.base_model import prepare
    from trainers.io.remote import is_uri
    from trainers.runtime.process import torch_threads

    fixed, base_metrics, seen, shipped = {}, {}, {}, {}
    for plan in plans:
        config = TrainConfig.of(plan.config)
        key = base_key(config)
        if key not in seen:
            remote = is_uri(config.model.path)  # trials download it from there themselves
            with torch_threads(threads):
                model_path, base = prepare(config, log=log)
                record = ship(ship_to, model_path, config, log, ship_model and not remote) if ship_to is not None else None
            seen[key] = (config.model.path if remote else model_path), record
            base_metrics = base_metrics or {M.BASE_ACCURACY: base.accuracy, M.BASE_RESPONSE_LENGTH: base.response_length}
            log(f"base model {model_path}: accuracy {base.accuracy:.3f}, mean length {base.response_length:.1f}")
        fixed[plan.name] = {"path": str(seen[key][0])}
        if seen[key][1] is not None:
            shipped[plan.name] = seen[key][1]
    return fixed, base_metrics, shipped


def base_key(config: TrainConfig) -> str:
    """Which base model a config trains from, as one string (what the evaluation cache keys on too)."""
    from trainers.loop.base_model import base_identity

    return json.dumps(base_identity(config), sort_keys=True, default=str)


def _prepare_one(config: dict[str, Any], threads: int) -> str:
    """Build and evaluate one base model into the cache (a Ray task of ``build_in_parallel``)."""
    from trainers.loop.base_model import prepare
    from trainers.runtime.process import torch_threads

    with torch_threads(threads):
        return str(prepare(TrainConfig.of(config), log=lambda _: None)[0])


def build_in_parallel(plans: list[TrialPlan], threads: int, log) -> None:
    """Build and evaluate every distinct base model at once, as Ray tasks of ``threads`` CPUs each
    (as many at a time as the machine's CPUs allow), so ``prepare_base_models`` then finds them all
    in the cache. Only on a one-node Ray: on a cluster a task could build on another node's disk."""
    import ray

    distinct = {}
    for plan in plans:
        distinct.setdefault(base_key(TrainConfig.of(plan.config)), plan.config)
    if len(distinct) < 2 or sum(node["Alive"] for node in ray.nodes()) > 1:
        return
    log(f"building and evaluating {len(distinct)} base models, {threads} CPU(s) each, in parallel")
    task = ray.remote(num_cpus=threads)(_prepare_one)
    for path in ray.get([task.remote(config, threads) for config in distinct.values()]):
        log(f"base model ready: {path}")


# --------------------------------------------------------------------------- the Tune experiment


def trial_resources(spec: StudySpec):
    """CPUs and (fractional) GPUs per trial, or explicit placement-group bundles."""
    from ray import tune

    if spec.resources.bundles:
        return tune.PlacementGroupFactory(spec.resources.bundles)
    return {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}


def check_trial_fits(spec: StudySpec) -> None:
    """A trial that asks for more than the whole Ray cluster has would wait forever: say so now."""
    import ray

    bundles = spec.resources.bundles or [{"CPU": spec.resources.cpus, "GPU": spec.resources.gpus}]
    asked = {kind: sum(b.get(kind, 0.0) for b in bundles) for kind in ("CPU", "GPU")}
    have = ray.cluster_resources()
    short = [f"{asked[k]:g} {k}s (the cluster has {have.get(k, 0.0):g})" for k in asked if asked[k] > have.get(k, 0.0)]
    if short:
        hint = " (smoke_resources: sets what a --smoke-test trial asks for)" if spec.smoke_resources is None else ""
        raise UsageError(f"resources: a trial asks for {' and '.join(short)}; it could never start{hint}")


@dataclass(frozen=True)
class Phase:
    """One Ray Tune experiment of a study, as the search mode splits it (``SearchMode.phases``):
    ``grid``, every arm but a population (a grid, or an Optuna search), in the study's folder;
    ``population``, a pbt / pb2 search's arm, in the ``population`` folder inside it. They run one
    after the other, into one MLflow experiment. ``search``: the mode that sets up its Tuner."""

    name: str
    plans: list[TrialPlan]
    search: SearchMode

    def folder(self, experiment: Storage) -> Storage:
        """Where its Ray Tune experiment lives: the study's folder, or the mode's own folder in it."""
        own = self.search.folder
        return experiment.child(own) if own else experiment


def study_phases(spec: StudySpec, plans: list[TrialPlan]) -> list[Phase]:
    return [Phase(name, members, search) for name, members, search in spec.search.phases(plans) if members]


def trainable(spec: StudySpec, phase: Phase, shipped: dict[str, dict]):
    """The trial function with its resources; the plans (with what each fetches from the study's
    object storage, ``shipped``) travel once, through Ray's object store."""
    from ray import tune

    from study.trial import run_trial

    payload = {p.name: {**asdict(p), "threads": spec.resources.trial_threads, "changeable": phase.search.changeable(),
                        "shipped": shipped.get(p.name)} for p in phase.plans}
    return tune.with_resources(tune.with_parameters(run_trial, plans=payload), trial_resources(spec))


def run_design(spec: StudySpec, smoke: bool) -> Design:
    """The design a run follows: the spec's; a smoke test runs its few seeds as a fixed design."""
    return Fixed() if smoke else spec.design


def design_tag(spec: StudySpec, smoke: bool) -> str:
    """The study run's ``TAG_DESIGN``: ``fixed``, or a sequential design's settings as JSON."""
    design = run_design(spec, smoke)
    return design.kind if design.kind == "fixed" else json.dumps({**design.model_dump(), "metric": spec.search.metric},
                                                                 sort_keys=True)


def build_tuner(
    spec: StudySpec, study_name: str, phase: Phase, output: Storage, tracker, max_concurrent, shipped: dict[str, dict],
    smoke: bool = False, recorder=None
):
    from ray import tune

    setup = run_design(spec, smoke).setup(spec, phase.plans, phase.search.setup(spec, phase.plans), recorder)
    concurrent = (max_concurrent or spec.max_concurrent_trials) if setup.limit_concurrency else None
    own = phase.search.folder
    storage, name = (output.child(study_name), own) if own else (output, study_name)

    def trial_name(trial) -> str:
        name = trial.config["trial"]
        return f"{name}-{trial.trial_id}" if setup.trial_ids_in_names else name

    return tune.Tuner(
        trainable(spec, phase, shipped),
        param_space=setup.param_space,
        tune_config=tune.TuneConfig(
            metric=spec.search.metric,
            mode=spec.search.direction,
            search_alg=setup.search_alg,
            scheduler=setup.scheduler,
            num_samples=setup.num_samples,
            max_concurrent_trials=concurrent,
            # a smoke test's trials are mostly start-up: there, a trial after the first in a worker skips it.
            # A real study gives each trial a fresh process (a finished trial is on record before the next starts).
            reuse_actors=setup.reuse_actors or smoke,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage.path,
            storage_filesystem=None if storage.local else storage.filesystem,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=setup.keep_checkpoints),
            callbacks=[tracker],
            verbose=1,
        ),
    )


def summary_rows(results, plans: list[TrialPlan]) -> list[dict[str, Any]]:
    arms = {p.name: p.arm for p in plans}
    rows = []
    for result in results:
        if result.config is None:  # created, never started (Ctrl-C came first): nothing to show
            continue
        name = result.config["trial"]
        last = result.metrics or {}
        rows.append(
            {
                "trial": Path(result.path).name,
                "arm": arms[name],
                "w_corr": last.get(M.lead("w_corr"), math.nan),
                "eval_accuracy": last.get(M.EVAL_ACCURACY, math.nan),
                "eval_length": last.get(M.EVAL_RESPONSE_LENGTH, math.nan),
                "aes": last.get(M.EVAL_AES, math.nan),
                "steps": int(last.get("step", 0)),
                "status": "ERROR" if result.error else "OK",
            }
        )
    return sorted(rows, key=lambda row: row["trial"])


def format_table(rows: list[dict[str, Any]]) -> str:
    header = f"{'trial':<28} {'arm':<16} {'w_corr':>7} {'eval acc':>9} {'eval len':>9} {'AES':>7} {'steps':>6} status"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['trial']:<28} {r['arm']:<16} {r['w_corr']:>7.3f} {r['eval_accuracy']:>9.3f} "
            f"{r['eval_length']:>9.1f} {r['aes']:>7.3f} {r['steps']:>6} {r['status']}"
        )
    return "\n".join(lines)


def check_flags(args: argparse.Namespace) -> tuple[Storage | None, str | None, list[str]]:
    """The output folder and the tracking URI, checked, and every problem with the flags, one line each."""
    errors, output_dir, tracking_uri = kernels.problems(), None, None
    if args.max_concurrent_trials is not None and args.max_concurrent_trials < 1:
        errors.append("--max-concurrent-trials: must be at least 1")
    try:
        output_dir = check_output_dir(args.output_dir or "runs")
    except UsageError as exc:
        errors.append(str(exc))
    try:
        tracking_uri = resolve_tracking_uri(args.tracking_uri)
    except UsageError as exc:
        errors.append(str(exc))
    address = args.address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            check_ray_address(address)
    except UsageError as exc:
        errors.append(str(exc))
    return output_dir, tracking_uri, errors


def print_dry_run(spec: StudySpec, plans: list, unchecked: list[str], max_concurrent: int | None,
                  smoke: bool = False, show_configs: bool = False) -> None:
    """The trials as a table of what differs between them (``study.plan.trial_table``; every
    trial's whole config too with ``show_configs``), the seeds each arm runs, the expected wall
    time, and the files a dry run did not require."""
    for line in trial_table(plans):
        print(line)
    print(f"resources per trial: {spec.resources.describe()}")
    if described := spec.search.describe():
        print(described)
    if show_configs:
        for plan in plans:
            print(f"--- {plan.name}\n{yaml.safe_dump(plan.config, sort_keys=False)}", end="")
    seeds = {arm.name: sorted({p.seed for p in plans if p.arm == arm.name}) for arm in spec.arms}
    print(f"{len(plans)} trials; seeds per arm: " + "; ".join(f"{arm} {values}" for arm, values in seeds.items()))
    print(f"the arm under test: {spec.focus_arm} (the report sets every other arm against it)")
    if spec.base_model_per_seed:
        print(f"each seed draws its own base model (model.tiny.seed = the seed): {len(spec.seeds)} base models, built "
              "in parallel before the trials; verdicts cover base models and RL seeds")
    for line in run_design(spec, smoke).describe(spec, plans, max_concurrent):
        print(line)
    for path in unchecked:
        print(f"not found on this machine (a dry run does not require it): {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = lambda message: print(message, flush=True)  # noqa: E731
    errors = []
    spec, plans = None, []
    try:
        with files_unchecked() if args.dry_run else contextlib.nullcontext([]) as unchecked:
            spec = load_spec(args.spec, args.overrides)
            plans = plan_trials(spec, smoke=args.smoke_test)
            spec = spec.for_smoke() if args.smoke_test else spec
    except ConfigError as exc:
        errors += exc.lines
    if args.dry_run and not errors:
        print_dry_run(spec, plans, unchecked, args.max_concurrent_trials, args.smoke_test, args.show_configs)
        return 0
    output_dir, tracking_uri, flag_errors = check_flags(args)
    if errors or flag_errors:
        return print_errors(UsageError("\n".join(errors + flag_errors)))
    study_name = spec.name + ("-smoke" if args.smoke_test else "")
    experiment_dir = output_dir.child(study_name)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(study_lock(study_name, output_dir, tracking_uri))  # before any look at the folder
            restorable = any(can_restore(phase.folder(experiment_dir)) for phase in study_phases(spec, plans))
            if args.resume and not restorable:
                raise UsageError(f"--resume: no restorable study at {experiment_dir}")
            if not args.resume and not experiment_dir.is_empty():
                raise UsageError(f"{experiment_dir} exists: pass --resume to continue it, or another --output-dir")
            connect_ray(args.address, num_cpus=os.cpu_count() or 1)
            check_trial_fits(spec)
            if args.address or os.environ.get("RAY_ADDRESS"):  # a cluster: every node must import what trials do
                lacking = check_nodes(needed_modules([p.config for p in plans]))
                if lacking:
                    raise UsageError("\n".join(f"--address: {line}" for line in lacking))
        except (UsageError, StudyLocked) as exc:
            return print_errors(exc)
        if experiment_dir.local is not None:
            experiment_dir.local.mkdir(parents=True, exist_ok=True, mode=0o700)
        return run_study(args, spec, plans, study_name, output_dir, experiment_dir, tracking_uri, log)


def write_study_report(tracking_uri: str, study_name: str, report: Storage) -> str:
    """The study's report into ``report``: in place in a local folder; for object storage, written
    in a temporary folder, then uploaded. Returns where its HTML page is."""
    from analysis.report import write_report

    if report.local is not None:
        return str(write_report(tracking_uri, study_name, report.local))
    with tempfile.TemporaryDirectory() as tmp:
        page = write_report(tracking_uri, study_name, Path(tmp) / "report", log_artifacts=True)
        report.upload(Path(tmp) / "report")
    return f"{report}/{Path(page).name}"


def ray_filesystem(folder: Storage):
    """What Ray Tune's ``storage_filesystem`` arguments take for ``folder`` (None: a local path)."""
    return None if folder.local is not None else folder.filesystem


def can_restore(folder: Storage) -> bool:
    from ray.tune import Tuner

    return Tuner.can_restore(folder.path, storage_filesystem=ray_filesystem(folder))


def phase_ended(folder: Storage) -> bool:
    """Whether every trial of the saved experiment state ended (finished or failed): after Ctrl-C,
    Tune saves the unfinished ones as pending, to be resumed."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(folder.path, storage_filesystem=ray_filesystem(folder))
    return all(trial.status in ("TERMINATED", "ERROR") for trial in analysis.trials)


def run_study(args, spec: StudySpec, plans: list[TrialPlan], study_name: str, output_dir: Storage,
              experiment_dir: Storage, tracking_uri: str, log) -> int:
    """Prepare the base models, run every trial, mark the study's run FINISHED, FAILED (a trial
    failed, or the driver crashed) or KILLED (Ctrl-C: exit code 130), and print the table and the report."""
    from ray.tune import Tuner

    from study.mlflow_runs import LookRecorder, MLflowTracker, finish_study_run, start_study_run, trials_view_url

    build_in_parallel(plans, spec.resources.trial_threads, log)
    fixed_models, base_metrics, shipped = prepare_base_models(plans, spec.resources.trial_threads, log,
                                                              None if experiment_dir.local else experiment_dir,
                                                              spec.ship_model)
    plans = [
        dataclasses.replace(p, config=deep_merge(p.config, {"model": fixed_models[p.name]})) for p in plans
    ]
    try:
        experiment_id, parent_id = start_study_run(
            tracking_uri, study_name, experiment_dir, args.spec.resolve(), base_metrics, [p.name for p in plans],
            spec.focus_arm, design_tag(spec, args.smoke_test), args.overrides,
        )
    except ValueError as exc:
        return print_errors(exc)
    log(f"MLflow: {tracking_uri} (experiment '{study_name}'); Ray results and checkpoints: {experiment_dir}")
    rows, interrupted = [], False
    try:
        for phase in study_phases(spec, plans):  # one after the other; an interrupted one stops the study
            folder = phase.folder(experiment_dir)
            if args.resume and can_restore(folder):
                phase.search.before_restore(spec)
                tuner = Tuner.restore(folder.path, trainable=trainable(spec, phase, shipped), resume_errored=True,
                                      storage_filesystem=ray_filesystem(folder))
            else:
                tracker = MLflowTracker(tracking_uri, experiment_id, parent_id, study_name, phase.plans,
                                        spec.resources.trial_threads)
                tuner = build_tuner(spec, study_name, phase, output_dir, tracker, args.max_concurrent_trials,
                                    shipped, args.smoke_test, LookRecorder(tracking_uri, parent_id))
            rows += summary_rows(tuner.fit(), plans)  # Ctrl-C: Tune stops the trials, saves its state and returns
            interrupted = not phase_ended(folder)
            if interrupted:
                break
    except KeyboardInterrupt:  # a second Ctrl-C
        finish_study_run(tracking_uri, parent_id, [], status="KILLED")
        raise
    except BaseException:
        finish_study_run(tracking_uri, parent_id, [], status="FAILED")
        raise
    rows.sort(key=lambda row: row["trial"])
    failed = any(row["status"] != "OK" for row in rows)
    status = "KILLED" if interrupted else "FAILED" if failed else "FINISHED"
    finish_study_run(tracking_uri, parent_id, rows, status=status)
    print()
    print(format_table(rows))
    print()
    if interrupted:
        sets = "".join(f" --set {shlex.quote(o)}" for o in args.overrides)
        print(f"Interrupted: continue with python -m study.run {args.spec}{sets} --resume (same flags)")
        return 130
    if tracking_uri.startswith(("http://", "https://")):
        print(f"Look next: {trials_view_url(tracking_uri, experiment_id)}")
    else:
        print(f"Look next: mlflow ui --backend-store-uri {tracking_uri}")
        print(f"           then open {trials_view_url('http://127.0.0.1:5000', experiment_id)}")
    print(f"Ray results and checkpoints: {experiment_dir}")
    if args.no_report:
        return 1 if failed else 0
    report = experiment_dir.child("report")
    report_command = (f"python -m analysis.report --study {study_name} --tracking-uri {tracking_uri} "
                      f"--out {report.local or './report'}")
    try:
        print(f"Report: {write_study_report(tracking_uri, study_name, report)}   (rebuild: {report_command})")
    except Exception as exc:  # the study's results stand even if its report cannot be drawn
        print(f"Report failed ({type(exc).__name__}: {exc}); retry with: {report_command}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
