"""Where a default trial's time goes, phase by phase, and the speedup against another revision.

    python -m benchmarks.trial_speed [--against REV] [--unpinned] [--repeats 1] [--threads 1] [--arm psi] [--smoke-test]

Runs the default study's trial (``search_spaces/psi_vs_static.yaml``: its ``base`` settings over
``trainers/configs/synthetic_psi.yaml``, the named arm's weighting, seed 0) start to finish in a
fresh process on ``--threads`` torch threads (the study gives each trial ``resources.cpus``), on
the same cached base model, once with this working tree and once with ``--against`` (a git
revision, unpacked with ``git archive``; each revision runs its own default trial) or with
``--unpinned`` (this tree with ``LEAD_STUDY_CPU_LEVEL=native``: the machine's own CPU kernels, not
the pinned AVX2 ones, ``trainers.runtime.kernels``; both from the same base model). The runs
alternate (A, B, A, B, ...) so both see the same machine load. Prints, per revision, the median
seconds of each phase over the repeats and the speedup, and the trial's final eval numbers.
``--smoke-test`` times the trial as the study's ``--smoke-test`` runs it (``SMOKE_SETTINGS`` and
the spec's ``smoke`` settings: a small base model, 2 steps), in seconds rather than minutes.

Phases are charged exclusively (a phase inside another is not counted twice): start-up and
imports, model load, rollout, grading, LEAD (rewards, advantages, weights), the reference
forward, the old-policy forward, the policy forward (with gradients), backward, optimizer,
the rest of the update, evaluation (its rollouts included), checkpoint, reporting (the trial's
table writes), and the loop's remainder. The base model's evaluation is done once beforehand,
as the study's driver does, and is not part of a trial.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = (
    "start-up and imports", "model load", "rollout", "grading", "LEAD", "reference forward",
    "old-policy forward", "policy forward", "backward", "optimizer", "update (rest)", "evaluation",
    "checkpoint", "reporting", "loop (rest)",
)


class PhaseClock:
    """Exclusive seconds per phase: time inside a nested phase counts for the inner one only."""

    def __init__(self):
        self.seconds = {phase: 0.0 for phase in PHASES}
        self.stack: list[list] = []  # [phase, start, seconds spent in children]

    @contextmanager
    def phase(self, name: str):
        frame = [name, time.perf_counter(), 0.0]
        self.stack.append(frame)
        try:
            yield
        finally:
            self.stack.pop()
            elapsed = time.perf_counter() - frame[1]
            self.seconds[name] += elapsed - frame[2]
            if self.stack:
                self.stack[-1][2] += elapsed

    def wrap(self, owner, attribute: str, name, absorbing: bool = False) -> None:
        """Charge calls of ``owner.attribute`` to phase ``name`` (a callable of the call's
        arguments may pick it); inside an absorbing phase (evaluation) calls are not split out."""
        original = getattr(owner, attribute, None)
        if original is None:
            return
        clock = self

        def timed(*args, **kwargs):
            if clock.stack and clock.stack[-1][0] == "evaluation" and not absorbing:
                return original(*args, **kwargs)
            with clock.phase(name(*args, **kwargs) if callable(name) else name):
                return original(*args, **kwargs)

        setattr(owner, attribute, timed)


def trial_config(root: Path, arm: str, model_path: str, smoke: bool = False) -> dict:
    """The revision's own default trial: its study's base settings (and ``smoke`` settings, for a
    smoke test) over its trainer config."""
    import yaml

    from trainers.settings import deep_merge

    spec = yaml.safe_load((root / "search_spaces/psi_vs_static.yaml").read_text())
    config = yaml.safe_load((root / "trainers/configs/synthetic_psi.yaml").read_text())
    config = deep_merge(config, spec.get("base") or {})
    if smoke:  # as the study's last_settings: the smoke shrink, then the spec's own smoke settings
        from trainers.config import SMOKE_SETTINGS

        config = deep_merge(config, deep_merge(SMOKE_SETTINGS, spec.get("smoke") or {}))
    weighting = next(a for a in spec["arms"] if a["name"] == arm)["weighting"]  # a trainer weighting
    config = deep_merge(config, {"lead": {"weighting": weighting}, "seed": 0})
    config["model"]["path"] = model_path
    return config


def instrument(clock: PhaseClock) -> None:
    """Wrap the trainer's parts (whichever of them this revision has) with the clock."""
    import torch

    from trainers.loop import checkpoint, evaluation, grpo
    from trainers.actor import single
    from trainers.rollout import hf

    clock.wrap(grpo, "load_model", "model load")
    clock.wrap(grpo, "grade_rollouts", "grading")
    clock.wrap(grpo, "lead_step", "LEAD")
    clock.wrap(evaluation.Evaluator, "__call__", "evaluation", absorbing=True)
    clock.wrap(checkpoint, "stage", "checkpoint")
    clock.wrap(checkpoint, "publish", "checkpoint")
    clock.wrap(single.SingleActor, "update", "update (rest)")
    clock.wrap(single.SingleActor, "reference_forward", "reference forward")
    clock.wrap(single.SingleActor, "forward",
               lambda *a, **k: "policy forward" if torch.is_grad_enabled() else "old-policy forward")
    clock.wrap(single.SingleActor, "backward", "backward")
    clock.wrap(single.SingleActor, "step", "optimizer")
    clock.wrap(hf.HFRolloutEngine, "generate", "rollout")


def worker(root: Path, arm: str, model_path: str, threads: int, started: float, smoke: bool) -> dict:
    """One trial in this process, with ``root``'s trainer; its phases, total and final metrics."""
    sys.path.insert(0, str(root))
    clock = PhaseClock()
    import pyarrow.parquet as pq
    import torch

    from trainers.loop import grpo
    from trainers.loop.base_model import prepare
    from trainers.config import TrainConfig

    torch.set_num_threads(threads)
    config = TrainConfig.of(trial_config(root, arm, model_path, smoke))
    clock.seconds["start-up and imports"] += time.perf_counter() - started
    prepare_start = time.perf_counter()
    prepare(config, log=lambda _: None)  # the driver's base evaluation, cached: not part of the trial
    prepare_seconds = time.perf_counter() - prepare_start
    instrument(clock)

    tokens = {"rollout": 0.0, "train": 0.0, "eval": 0.0}

    def report(step) -> None:
        for name in tokens:
            tokens[name] += step.metrics.get(f"perf/{name}_tokens", 0.0)
        with clock.phase("reporting"):
            if step.checkpoint_dir is not None:
                for name, table in step.tables.items():
                    pq.write_table(table, step.checkpoint_dir / f"{name}.parquet")

    with tempfile.TemporaryDirectory() as out:
        with clock.phase("loop (rest)"):
            final = grpo.train(config, Path(out), report=report, log=lambda _: None)
    total = sum(clock.seconds.values())
    keys = ("eval/accuracy", "eval/response_length", "eval/aes")
    return {"phases": clock.seconds, "total": total, "prepare": prepare_seconds, "tokens": tokens,
            "final": {key: final.get(key) for key in keys}, "cpu_kernels": cpu_kernels(root)}


def cpu_kernels(root: Path) -> str:
    """The CPU kernel level this worker computed at (a revision before ``trainers.runtime.kernels``: unknown)."""
    if not (root / "trainers/runtime/kernels.py").exists():
        return "not recorded (a revision before the pin)"
    from trainers.runtime import kernels as worker_kernels

    return worker_kernels.level()


def unpack(revision: str, into: Path) -> Path:
    """The tree of ``revision`` under ``into`` (git archive: no work tree of this checkout moves)."""
    archive = into / "tree.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), revision], check=True)
    tree = into / "tree"
    tree.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def run_once(root: Path, arm: str, model_path: str, threads: int, cpu_level: str, smoke: bool) -> dict:
    from trainers.runtime import kernels

    inherited = {k: v for k, v in os.environ.items() if k not in kernels.PINNED_ENVIRONMENT}  # this process's pin
    env = {**inherited, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(root), kernels.SETTING: cpu_level}
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", str(root), "--arm", arm,
         "--model", model_path, "--threads", str(threads), *(["--smoke-test"] if smoke else [])],
        cwd=root, env=env, check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def base_model(arm: str, smoke: bool) -> str:
    """The default trial's cached base model (built now if absent), shared by both revisions."""
    from trainers.loop.base_model import base_model_path
    from trainers.config import TrainConfig

    config = trial_config(ROOT, arm, None, smoke)
    return str(base_model_path(TrainConfig.of(config), log=print))


def table(results: dict[str, list[dict]]) -> str:
    names = list(results)
    median = {name: {phase: statistics.median(r["phases"][phase] for r in runs) for phase in PHASES}
              for name, runs in results.items()}
    totals = {name: statistics.median(r["total"] for r in runs) for name, runs in results.items()}
    lines = ["| phase | " + " | ".join(f"{name} s" for name in names) + " |",
             "|---" * (len(names) + 1) + "|"]
    for phase in PHASES:
        lines.append(f"| {phase} | " + " | ".join(f"{median[name][phase]:.2f}" for name in names) + " |")
    lines.append("| **trial** | " + " | ".join(f"**{totals[name]:.1f}**" for name in names) + " |")
    update = ("reference forward", "old-policy forward", "policy forward", "backward", "optimizer", "update (rest)")
    for name, runs in results.items():  # the cost model of study.estimate: seconds per token, by phase
        per_token = {
            label: statistics.median(sum(r["phases"][p] for p in phases) / max(r["tokens"][kind], 1.0) for r in runs)
            for label, kind, phases in (("rollout", "rollout", ("rollout",)), ("update", "train", update),
                                        ("evaluation", "eval", ("evaluation",)))
        }
        lines.append(f"\n{name}: seconds per token: " + ", ".join(f"{k} {v:.3g}" for k, v in per_token.items()))
        finals = ", ".join(f"{k} {statistics.median(r['final'][k] for r in runs):.3f}" for k in runs[0]["final"])
        lines.append(f"\n{name}: {len(runs)} run(s), totals {[round(r['total'], 1) for r in runs]}; final {finals}; "
                     f"CPU kernels {runs[0].get('cpu_kernels', 'not recorded')}")
    if len(names) == 2:
        lines.append(f"\nspeedup per trial ({names[0]} / {names[1]}): {totals[names[0]] / totals[names[1]]:.2f}x")
    return "\n".join(lines)


def main() -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", default=None, help="a git revision to compare with (e.g. 88e562b)")
    parser.add_argument("--unpinned", action="store_true",
                        help="also run this tree at the machine's own CPU kernel level (LEAD_STUDY_CPU_LEVEL=native)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trial (the study's resources.cpus)")
    parser.add_argument("--arm", default="psi", help="the default study's arm whose trial runs (psi)")
    parser.add_argument("--smoke-test", action="store_true", help="the trial as the study's --smoke-test runs it")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker), args.arm, args.model, args.threads, started, args.smoke_test)))
        return
    from trainers.runtime import kernels

    model_path = base_model(args.arm, args.smoke_test)
    with tempfile.TemporaryDirectory() as scratch:
        roots = {"HEAD (working tree)": (ROOT, kernels.mode())}
        if args.against:
            roots = {args.against: (unpack(args.against, Path(scratch)), kernels.mode()), **roots}
        if args.unpinned:
            roots = {"HEAD, not pinned": (ROOT, kernels.NATIVE), **roots}
        results: dict[str, list[dict]] = {name: [] for name in roots}
        for repeat in range(args.repeats):
            for name, (root, cpu_level) in roots.items():
                results[name].append(run_once(root, args.arm, model_path, args.threads, cpu_level, args.smoke_test))
                print(f"repeat {repeat + 1}, {name}: {results[name][-1]['total']:.1f} s", flush=True)
    which = "smoke-test trial" if args.smoke_test else "default trial"
    print(f"\n{which} ({args.arm}, seed 0) on {args.threads} thread(s), median of {args.repeats}:\n")
    print(table(results))


if __name__ == "__main__":
    main()
