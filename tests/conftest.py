"""Shared test fixtures: small MIDI files made by the tests, and the shared corpus location."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import symusic

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "piano-midi"
POLY = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "poly"


@pytest.fixture(scope="session", autouse=True)
def stop_prefects_temporary_server():
    """Stop the temporary Prefect server that a flow run in this process started, while the tests' output is open.

    Prefect stops it at exit otherwise, and logs that to a stream pytest has closed by then: a 'Logging error'
    traceback after the summary, in every CI log. The run logs still queued for the server are sent first.
    """
    yield
    server = sys.modules.get("prefect.server.api.server")
    if server is not None:
        sys.modules["prefect.logging.handlers"].APILogWorker.drain_all(timeout=5)
        for instance in list(server.SubprocessASGIServer._instances.values()):
            instance.stop()


def make_midi(
    path: Path,
    notes: list[tuple[int, int, int]],
    *,
    tpq: int = 480,
    drum: bool = False,
    tracks: int = 1,
) -> Path:
    """Write a MIDI file of (start_tick, duration_ticks, pitch) notes, copied on `tracks` tracks."""
    score = symusic.Score(tpq)
    for i in range(tracks):
        track = symusic.Track(name=f"track {i}", program=0, is_drum=drum)
        for start, duration, pitch in notes:
            track.notes.append(symusic.Note(start, duration, pitch, 80))
        score.tracks.append(track)
    path.parent.mkdir(parents=True, exist_ok=True)
    score.dump_midi(str(path))
    return path


def scale_notes(n: int = 16, start_pitch: int = 60, step: int = 240) -> list[tuple[int, int, int]]:
    """A C-major run of `n` eighth notes (at 480 ticks per quarter)."""
    major = [0, 2, 4, 5, 7, 9, 11]
    return [(i * step, step, start_pitch + major[i % 7] + 12 * (i // 7)) for i in range(n)]


@pytest.fixture
def corpus_dir() -> Path:
    """The paper's piano corpus in ../shared (skips where it is absent, e.g. on a user's machine)."""
    if not CORPUS.is_dir():
        pytest.skip(f"shared piano corpus not found at {CORPUS}")
    return CORPUS


@pytest.fixture
def poly_dir() -> Path:
    """The polyphonic benchmark's .mat files in ../shared (skips where they are absent, e.g. on a user's machine)."""
    if not POLY.is_dir():
        pytest.skip(f"shared benchmark data not found at {POLY}")
    return POLY


def motif_notes(key: int, bars: int = 24) -> list[tuple[int, int, int]]:
    """A repeating arpeggio: easy to learn, so a trained model clearly beats an untrained one."""
    pattern = [0, 4, 7, 12, 7, 4]
    return [(i * 240, 240, 48 + key + pattern[i % len(pattern)]) for i in range(bars * 8)]


TINY_WINDOW = 16
TINY_LSTM = {"embed_dim": 16, "units": 32, "layers": 1}


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """A project folder with 8 small MIDI files, timed tokens and sequences (window 16)."""
    from pianola.data.corpus import tokenize_corpus
    from pianola.data.sequences import build_sequences
    from pianola.tokenizers import get_tokenizer

    root = tmp_path_factory.mktemp("project")
    for key in range(8):
        make_midi(root / "data" / "raw" / f"piece{key}.mid", motif_notes(key))
    tokenize_corpus(root / "data" / "raw", root / "data" / "tokens", get_tokenizer("timed"))
    build_sequences(root / "data" / "tokens", root / "data" / "sequences", window=TINY_WINDOW, valid_fraction=0.25, seed=0)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """Stop a process a test started, and its children (it leads its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_until_up(process: subprocess.Popen, url: str, log: Path, seconds: float, what: str = "the server") -> None:
    """Wait until GET `url` answers 200; fail with the end of `log` if `process` exits or `seconds` pass."""
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, f"{what} exited:\n{log.read_text(errors='replace')[-3000:]}"
        assert time.monotonic() < deadline, f"{what} not up after {seconds} s:\n{log.read_text(errors='replace')[-3000:]}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)


@contextmanager
def tracking_at(uri: str):
    """MLFLOW_TRACKING_URI set to `uri` for the block (session fixtures cannot use monkeypatch)."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield uri
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="session")
def bundle_dir(tiny_project: Path, tmp_path_factory) -> Path:
    """A small `lstm` trained on the tiny project (not registered)."""
    from pianola.training.train import preset_config, train

    work = tmp_path_factory.mktemp("generate-bundle")
    with tracking_at(f"sqlite:///{work / 'mlflow.db'}"):
        config = preset_config("lstm", "demo", epochs=3, model_options=TINY_LSTM | {"learning_rate": 1e-2})
        train(tiny_project / "data/sequences", work / "bundle", config, work_dir=work / "runs", register=False, verbose=0)
    return work / "bundle"


@pytest.fixture(scope="session")
def registry(bundle_dir: Path, tmp_path_factory) -> str:
    """An MLflow store (SQLite) where `bundle_dir` is version 1 of `pianola`, alias champion; its URI.
    Tests that use it set MLFLOW_TRACKING_URI to it (monkeypatch.setenv)."""
    import mlflow

    from pianola import tracking
    from pianola.serving.pyfunc import register_bundle

    work = tmp_path_factory.mktemp("registry")
    with tracking_at(f"sqlite:///{work / 'mlflow.db'}") as uri:
        mlflow.set_tracking_uri(uri)
        mlflow.create_experiment(tracking.EXPERIMENT, artifact_location=(work / "artifacts").as_uri())
        tracking.setup()
        with mlflow.start_run():
            version = register_bundle(bundle_dir)
        mlflow.MlflowClient().set_registered_model_alias(tracking.REGISTERED_MODEL, tracking.CHAMPION, version)
    return uri


def tiny_dvc_repo(repo: Path, source: Path, remote: Path, env: dict) -> Path:
    """A git + DVC repository at `repo` holding this project's code, dvc.yaml and a params.yaml made quick (timed
    tokens, windows of 16, the demo preset, one short piece without WAV), ingesting the MIDI folder `source`, with
    the local DVC remote `remote`."""
    import shutil
    import sys

    import yaml

    root = Path(__file__).resolve().parents[1]
    for name in ("pianola", "tasks", "flows"):
        shutil.copytree(root / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(root / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ingest"]["source"] = str(source)
    params["tokenize"]["tokenizer"] = "timed"
    params["sequences"].update(window=16, valid_fraction=0.34)
    params["train"]["preset"] = "demo"
    params["generate"].update(n=1, length=32, flags={"wav": False})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                    [sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(remote)]):
        done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return repo
