"""Services that fail: an MLflow tracking server that is down when training starts, or that goes away at its end.

Real servers: `mlflow server` on 127.0.0.1, stopped with SIGKILL as a crash would stop it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import keras
import mlflow
import pytest

from conftest import TINY_LSTM, free_port, stop, wait_until_up
from pianola.errors import PianolaError
from pianola.models.bundle import load_bundle
from pianola.training.train import preset_config, register_trained, train

BIN = Path(sys.executable).parent
MLFLOW_START_S = 120


def start_mlflow(store: Path, port: int) -> subprocess.Popen:
    command = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
               "--artifacts-destination", str(store / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = store / f"server-{port}-{time.monotonic_ns()}.log"
    with open(log, "w") as out:
        server = subprocess.Popen(command, env=env, cwd=store, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    wait_until_up(server, f"http://127.0.0.1:{port}/health", log, MLFLOW_START_S, "mlflow server")
    return server


def test_training_against_a_server_that_is_down_fails_at_once_naming_it(tiny_project: Path, tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    done = subprocess.run(
        [str(BIN / "pianola"), "train", "--model", "lstm", "--preset", "demo",
         "--sequences", str(tiny_project / "data/sequences"), "--out", str(tmp_path / "bundle")],
        cwd=tmp_path, env=os.environ | {"MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True, timeout=120,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert f"the MLflow tracking server at {uri} cannot be reached" in done.stderr
    assert "Traceback" not in done.stderr and seconds < 30, (seconds, done.stderr[-2000:])
    assert not (tmp_path / "bundle").exists()


def test_a_server_gone_at_the_end_keeps_the_bundle_and_says_how_to_finish(
    tiny_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, port = tmp_path / "store", free_port()
    store.mkdir()
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    server = start_mlflow(store, port)

    class ServerCrash(keras.callbacks.Callback):
        def on_train_end(self, logs=None) -> None:  # training is done; the server dies before the run is recorded
            os.killpg(server.pid, 9)
            server.wait()

    out = tmp_path / "bundle"
    config = preset_config("lstm", "demo", epochs=2, model_options=TINY_LSTM)
    try:
        with pytest.raises(PianolaError) as failure:
            train(tiny_project / "data/sequences", out, config, work_dir=tmp_path / "runs", verbose=0,
                  extra_callbacks=[ServerCrash()])
        message = str(failure.value)
        assert f"MLflow at {uri} failed while recording it" in message
        assert f"finish with: pianola register --model {out}" in message
        kept = load_bundle(out)  # the trained model is kept whole
        assert kept.info["heldout"]["cross_entropy"] > 0

        server = start_mlflow(store, port)  # back, on the same store
        version = register_trained(out)
        client = mlflow.MlflowClient()
        assert client.get_model_version_by_alias("pianola", "candidate").version == version == "1"
        run = client.get_run(kept.info["run_id"])
        assert run.data.metrics["heldout_cross_entropy"] == pytest.approx(kept.info["heldout"]["cross_entropy"])
        assert "loss_curves.png" in [a.path for a in client.list_artifacts(run.info.run_id)]
        assert load_bundle("models:/pianola@candidate").info["run_id"] == kept.info["run_id"]
    finally:
        stop(server)
