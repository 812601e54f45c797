"""DVC owns lineage: `dvc repro` runs ingest -> ... -> evaluate, and a second `dvc repro` does nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import make_midi, motif_notes

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_dvc_repro_runs_the_stages_and_a_second_repro_does_nothing(tmp_path: Path) -> None:
    midi = tmp_path / "incoming"
    for key in range(6):
        make_midi(midi / f"piece{key}.mid", motif_notes(key))
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "pianola", repo / "pianola", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"]["source"] = str(midi)
    params["tokenize"]["tokenizer"] = "timed"
    params["sequences"].update(window=16, valid_fraction=0.34)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    run(["git", "init", "-q"], repo, env)
    run(["dvc", "init", "-q"], repo, env)

    first = run(["dvc", "repro"], repo, env)
    for stage in ("ingest", "tokenize", "sequences", "train", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout
    assert (repo / "data/raw/manifest.json").exists() and (repo / "data/tokens/tokens.jsonl").exists()
    assert (repo / "data/sequences/train.npz").exists() and (repo / "models/candidate/bundle.json").exists()
    metrics = yaml.safe_load((repo / "metrics/evaluate.json").read_text())
    assert set(metrics) == {"cross_entropy", "perplexity", "accuracy", "oov_rate", "tokens", "nll_per_note", "notes"}
    assert metrics["nll_per_note"] > 0 and metrics["notes"] > 0
    assert (repo / "metrics/training_curves.csv").read_text().startswith("epoch,loss,val_loss")
    assert (repo / "dvc.lock").exists()

    second = run(["dvc", "repro"], repo, env)
    assert "Running stage" not in second.stdout
    status = run(["dvc", "status"], repo, env)
    assert "up to date" in status.stdout


def test_dvc_files_and_metrics_are_not_git_ignored() -> None:
    # DVC refuses to run ("'dvc.lock' is git-ignored") when its lock file, or a metrics file it writes, is ignored by git:
    # ignoring them to keep a local run's lock out of commits broke `make run`.
    for path in ("dvc.lock", "metrics/evaluate.json", "metrics/generate.json"):
        done = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert done.returncode == 1, f"{path} is git-ignored"
