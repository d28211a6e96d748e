"""Every ground truth of every file in ../shared/data, graded by ``trainers.tasks.grading``:

    python benchmarks/grading_real_data.py [--data-dir ../shared/data] [--workers 2] [--load N]

Per file: the share of answers that match themselves (graded in the pool, as training grades), the
share of ``\\boxed{answer}`` responses judged correct, the share of neighbouring problems'
(different) answers judged wrong, and the pool's throughput in graded pairs per second.
``--load N`` runs N busy processes (one core each) the whole time: the shares must not move.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from trainers.tasks.grading import Grader


def ground_truths(data_dir: Path) -> dict[str, list[str]]:
    files = {f"benchmarks/{p.name}": [json.loads(line)["answer"] for line in p.read_text().splitlines() if line.strip()]
             for p in sorted((data_dir / "benchmarks").glob("*.jsonl"))}
    for path in sorted((data_dir / "math").glob("*.parquet")):
        files[f"math/{path.name}"] = [r["ground_truth"] for r in pq.read_table(path)["reward_model"].to_pylist()]
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--load", type=int, default=0, help="busy processes running while grading")
    args = parser.parse_args()
    grader = Grader(workers=args.workers)
    grader.grade(["\\boxed{1}"], ["1"])
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    try:
        grade_files(grader, args.data_dir, args.load)
    finally:
        for hog in hogs:
            hog.kill()
        grader.close()


def grade_files(grader: Grader, data_dir: Path, load: int) -> None:
    print(f"busy processes: {load}")
    print(f"{'file':32} {'rows':>6} {'self':>8} {'boxed':>8} {'wrong->0':>9} {'pairs/s':>8}")
    for name, answers in ground_truths(data_dir).items():
        self_match = [a for a, s in zip(answers, grader.grade([f"\\boxed{{{a}}}" for a in answers], answers)) if not s]
        start = time.perf_counter()
        boxed = grader.grade([f"The answer is \\boxed{{{a}}}." for a in answers], answers)
        rate = len(answers) / (time.perf_counter() - start)
        pairs = [(answers[i - 1], a) for i, a in enumerate(answers) if answers[i - 1].replace(" ", "") != a.replace(" ", "")]
        wrong = grader.grade([f"\\boxed{{{w}}}" for w, _ in pairs], [a for _, a in pairs])
        judged_right = [p for p, s in zip(pairs, wrong) if s]
        print(f"{name:32} {len(answers):>6} {1 - len(self_match) / len(answers):>8.2%} {sum(boxed) / len(answers):>8.2%} "
              f"{1 - len(judged_right) / max(len(pairs), 1):>9.2%} {rate:>8.0f}")
        for answer in self_match:
            print(f"    does not match itself: {answer!r}")
        for answer, score in zip(answers, boxed):
            if not score:
                print(f"    boxed judged wrong: {answer!r}")
        for wrong_answer, truth in judged_right:
            print(f"    {wrong_answer!r} judged equal to {truth!r}")
    print(f"timeouts: {grader.timeouts}, errors: {grader.errors}")


if __name__ == "__main__":
    main()
