"""``python -m trainers.train``: a smoke run end to end, and one-line errors with exit code 2."""

import json
import stat
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from trainers.io.outputs import owner

from tests.conftest import TINY, run_main

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=ROOT):
    """``python -m trainers.train ARGS``, in this process."""
    from trainers.train import main

    return run_main(main, *args, cwd=cwd)


def write_config(tmp_path, cache_dir, **changes):
    config = yaml.safe_load((ROOT / "trainers/configs/synthetic_psi.yaml").read_text())
    config["model"]["cache_dir"] = str(cache_dir)
    config["model"]["tiny"].update(TINY)
    config["task"].update(max_terms=5, eval_size=24)
    config["rollout"]["max_new_tokens"] = 48
    config["lead"]["bmax"] = 48
    for section, values in changes.items():
        config[section].update(values)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_smoke_test_runs_end_to_end_and_writes_its_outputs(tiny_model_dir, cache_dir, tmp_path):
    config = write_config(tmp_path, cache_dir)
    # the real command, once, with overrides; from the tests' built base model (a smoke test would
    # otherwise build its own small one: tests/test_kernels.py builds that one)
    result = subprocess.run([sys.executable, "-m", "trainers.train", config, "seed=3", "--smoke-test", "--output-dir",
                             tmp_path / "out", "train.lr=2.0e-4", f"model.path={tiny_model_dir}"],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("done: eval accuracy")
    lines = [json.loads(line) for line in (tmp_path / "out/metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    assert "eval/accuracy" in lines[-1]
    assert pq.read_table(tmp_path / "out/eval_problems/step_000002.parquet").num_rows == 16
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["eval/accuracy"] == lines[-1]["eval/accuracy"]
    assert summary["versions"]["torch"] == torch.__version__ and summary["versions"]["lead-study"].startswith("0.")
    assert summary["threads"] == torch.get_num_threads()  # the run's thread count is on record
    assert summary["overrides"] == ["seed=3", "train.lr=2.0e-4", f"model.path={tiny_model_dir}"]
    resolved = yaml.safe_load((tmp_path / "out/config.yaml").read_text())  # what replays the run
    assert (resolved["seed"], resolved["train"]["lr"]) == (3, 2.0e-4)
    assert "GRPO" in result.stderr  # the progress bar
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o700 and owner(tmp_path / "out") == "run"


def test_a_finished_run_is_kept_resumed_as_complete_or_refused_with_other_settings(tiny_model_dir, cache_dir, tmp_path, capsys):
    """The same command again used to wipe the run's metrics; a resume with another config loaded
    a foreign checkpoint and printed ``eval accuracy nan``."""
    from trainers.train import main

    config = write_config(tmp_path, cache_dir, train={"steps": 1}, eval={"every": 1, "num_problems": 4})
    out = tmp_path / "out"
    assert main([str(config), "--output-dir", str(out)]) == 0
    before = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main([str(config), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds a run: pass --resume to continue it or --overwrite to replace it" in err and err.count("\n") == 1
    assert (out / "metrics.jsonl").read_text() == before
    assert main([str(config), "--output-dir", str(out), "--resume"]) == 0
    done = capsys.readouterr().out
    assert "is complete (step 1)" in done and "eval accuracy nan" not in done
    other = write_config(tmp_path, cache_dir, train={"steps": 1, "lr": 5e-4}, eval={"every": 1, "num_problems": 4})
    assert main([str(other), "--output-dir", str(out), "--resume"]) == 2
    assert "belongs to a run with other settings" in capsys.readouterr().err
    assert main([str(other), "--output-dir", str(out), "--overwrite"]) == 0  # its own folder: replaced
    assert owner(out) == "run" and len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_folder_this_tool_did_not_make_is_never_written_into(tmp_path, cache_dir, capsys):
    from trainers.train import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for flags in ([], ["--overwrite"], ["--resume"]):
        assert main([str(write_config(tmp_path, cache_dir)), "--output-dir", str(mine), *flags]) == 2
        assert "is not a run folder of lead-study" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    assert main([str(write_config(tmp_path, cache_dir)), "--output-dir", "/proc/lead-study-run"]) == 2
    assert "cannot write in /proc" in capsys.readouterr().err


def test_smoke_and_full_runs_default_to_different_folders():
    from trainers.train import default_output_dir

    assert default_output_dir(Path("configs/exp.yaml"), smoke=False) == Path("runs/exp")
    assert default_output_dir(Path("configs/exp.yaml"), smoke=True) == Path("runs/exp-smoke")


def test_the_shipped_example_config_is_valid():
    from trainers.config import load_train_config

    config = load_train_config(ROOT / "trainers/configs/synthetic_psi.yaml")
    assert config.lead.weighting.kind == "psi" and config.lead.bmax == config.rollout.max_new_tokens
    assert config.lead.length_reward == "lead" and config.lead.advantage.whiten


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"train": {"lr_typo": 1e-4}}, "train.lr_typo: unknown key"),
        ({"train": {"lr": "fast"}}, "train.lr: Input should be a valid number"),
        ({"lead": {"aggregator": "max_correct"}}, "lead.aggregator: Input should be"),
        ({"rollout": {"max_prompt_tokens": 4}}, "rollout.max_prompt_tokens (4) is smaller than the longest prompt"),
    ],
)
def test_bad_config_is_one_line_naming_the_field_and_exit_2(tmp_path, cache_dir, changes, message):
    result = cli(write_config(tmp_path, cache_dir, **changes), "--output-dir", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_model_directory_and_unreadable_config_exit_2(tmp_path, cache_dir):
    result = cli(write_config(tmp_path, cache_dir, model={"path": str(tmp_path / "gone")}), "--output-dir", tmp_path / "o")
    assert result.returncode == 2 and "model.path:" in result.stderr and result.stderr.count("\n") == 1
    result = cli(tmp_path / "absent.yaml")
    assert result.returncode == 2 and "absent.yaml: cannot read" in result.stderr


def test_bad_overrides_are_one_line_each_naming_the_key_and_exit_2(tmp_path, cache_dir):
    config = str(write_config(tmp_path, cache_dir))
    result = cli(config, "train.stepz=3", "lead.weighting.kind=nope", "--output-dir", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {config}: train.stepz: unknown key",
        f"error: {config}: lead.weighting: unknown weighting 'nope' (known: psi, schedule, static)"]
    result = cli(config, "steps", "--output-dir", tmp_path / "out")
    assert result.returncode == 2 and "override 'steps': expected KEY=VALUE" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing written
