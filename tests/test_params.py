"""A params.yaml edited into something invalid: every command, and `dvc repro`, names the key and what it accepts,
without a traceback and before any work starts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pianola.errors import PianolaError
from pianola.params import check_params

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def edited(tmp_path: Path, section: str, key: str, value: object, *, drop: str | None = None) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params[section][key] = value
    if drop:
        del params[section][drop]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


CASES = [
    ("sequences", "windw", 100, "window", "sequences.windw: unknown setting; sequences has out, window"),
    ("sequences", "window", -5, None, "sequences.window: expected an integer >= 2, got -5"),
    ("sequences", "window", "abc", None, "sequences.window: expected an integer >= 2, got 'abc'"),
    ("sequences", "valid_fraction", 1.5, None, "sequences.valid_fraction: expected a number > 0 and <= 1, got 1.5"),
    ("ingest", "max_bytes", True, None, "ingest.max_bytes: expected an integer >= 1, got True"),
    ("tokenize", "tokenizer", 3, None, "tokenize.tokenizer: expected a name, got 3"),
    ("generate", "flags", {"wav": "yes"}, None, "generate.flags: expected a mapping of switch names to true/false"),
    ("monitor", "features", [], None, "monitor.features: expected a non-empty list of names, got []"),
]


@pytest.mark.parametrize("section, key, value, drop, message", CASES)
def test_a_wrong_setting_is_named_with_what_it_accepts(tmp_path: Path, section, key, value, drop, message) -> None:
    path = edited(tmp_path, section, key, value, drop=drop)
    with pytest.raises(PianolaError) as failure:
        check_params(path)
    assert f"params.yaml: {message}" in str(failure.value)


def test_names_are_checked_against_the_lists_a_command_knows(tmp_path: Path) -> None:
    from pianola.tokenizers import TOKENIZERS

    path = edited(tmp_path, "tokenize", "tokenizer", "midi")
    check_params(path)  # a name, as far as the file alone can tell
    with pytest.raises(PianolaError, match="tokenize.tokenizer: 'midi' is not one of paper, timed, remi, roll"):
        check_params(path, {"tokenize.tokenizer": TOKENIZERS})


@pytest.mark.parametrize("section, key, value, command, message", [
    ("tokenize", "tokenizer", "midi", ["tokenize", "--in", "nowhere"], "'midi' is not one of paper, timed, remi, roll"),
    ("train", "model", "gpt", ["train", "--sequences", "nowhere"], "'gpt' is not one of paper-0, paper-0b"),
    ("train", "preset", "fast", ["train", "--sequences", "nowhere"], "'fast' is not one of demo, paper, best"),
    ("generate", "strategy", "beam", ["generate", "--model", "nowhere"], "'beam' is not one of greedy, temperature"),
])
def test_the_command_that_uses_a_name_refuses_an_unknown_one(tmp_path: Path, section, key, value, command,
                                                             message) -> None:
    edited(tmp_path, section, key, value)
    done = subprocess.run([str(BIN / "pianola"), *command], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"error: params.yaml: {section}.{key}: {message}" in done.stderr, done.stderr


def test_an_unknown_section_and_broken_yaml_are_named(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text() + "\ntrian:\n  epochs: 3\n")
    with pytest.raises(PianolaError, match="unknown section 'trian'; the sections are ingest, tokenize"):
        check_params(path)
    path.write_text("ingest: [unclosed\n")
    with pytest.raises(PianolaError, match="not valid YAML"):
        check_params(path)


def test_the_project_params_are_valid() -> None:
    check_params(ROOT / "params.yaml")


def test_a_command_in_a_project_with_a_wrong_setting_stops_before_working(tmp_path: Path) -> None:
    edited(tmp_path, "sequences", "window", -5)
    done = subprocess.run([str(BIN / "pianola"), "tokenize", "--in", "nowhere", "--out", "tokens"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "error: params.yaml: sequences.window: expected an integer >= 2, got -5"
    assert not (tmp_path / "tokens").exists()


def test_dvc_repro_with_a_wrong_setting_names_it_and_runs_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(ROOT / "pianola", repo / "pianola", ignore=shutil.ignore_patterns("__pycache__"))
    edited(repo, "sequences", "window", "abc")
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(command, cwd=repo, env=env, check=True)
    done = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "error: params.yaml: sequences.window: expected an integer >= 2, got 'abc'" in output
    assert "Traceback" not in output
    assert not (repo / "data" / "raw").exists()  # the first stage did nothing
