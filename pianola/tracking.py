"""MLflow: experiment tracking, the `pianola` registered model, and its `candidate`/`champion` aliases.

By default MLflow runs embedded on SQLite under mlflow/ (no server); MLFLOW_TRACKING_URI overrides.
A bundle is logged as a pyfunc model whose artifact is the bundle folder, so `models:/` URIs load it
(and `mlflow models serve` runs it: see pianola/serving/pyfunc.py).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pianola.errors import PianolaError

EXPERIMENT = "pianola"
REGISTERED_MODEL = "pianola"
CANDIDATE = "candidate"
CHAMPION = "champion"
STORE = Path("mlflow")


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else SQLite in mlflow/mlflow.db (relative to the working directory)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(STORE / 'mlflow.db').resolve()}"


# MLflow retries a request to a server 7 times with exponential backoff by default: about 4 minutes before a
# closed port is reported. Two retries ride out a blip; a server that is down is reported in seconds.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
REACH_TIMEOUT_S = 5.0


class TrackingUnreachable(PianolaError):
    """The MLflow tracking server cannot be reached."""


def check_reachable(uri: str) -> None:
    """Fail at once, naming `uri`, when it is a tracking server that does not answer; any HTTP answer will do."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=REACH_TIMEOUT_S)
    except requests.RequestException as e:
        raise TrackingUnreachable(
            f"the MLflow tracking server at {uri} cannot be reached ({type(e).__name__}); start it, or unset "
            "MLFLOW_TRACKING_URI to track in the local store mlflow/mlflow.db") from None


def setup(experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the store and select `experiment` (created with artifacts in mlflow/artifacts); a tracking
    server that cannot be reached is a TrackingUnreachable error at once."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        STORE.mkdir(parents=True, exist_ok=True)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        # With the embedded store, artifacts go beside the database; a server decides for itself.
        location = (STORE / "artifacts").resolve().as_uri() if "MLFLOW_TRACKING_URI" not in os.environ else None
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return uri


def environment() -> dict[str, str]:
    """Where a run ran: logged with every training run."""
    import keras

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "argv": " ".join(sys.argv),
    }
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        info["devices"] = ",".join(d.name for d in tf.config.list_logical_devices())
    return info


def log_and_register_bundle(
    bundle_dir: Path, python_model: mlflow.pyfunc.PythonModel, name: str = REGISTERED_MODEL,
    artifact: str = "bundle", signature: Any = None, input_example: Any = None,
) -> str:
    """Log a model folder to the active run as the pyfunc model `python_model` (the folder as its artifact
    `artifact`, with `signature` and `input_example` when given), register it as `name` with alias
    `candidate`; the version."""
    import pianola

    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=python_model,
        artifacts={artifact: str(bundle_dir)},
        signature=signature,
        input_example=input_example,
        pip_requirements=[f"pianola=={pianola.__version__}"],
        registered_model_name=name,
    )
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(name, CANDIDATE, version)
    return version


def download_bundle(uri: str, marker: str = "bundle.json") -> Path:
    """Download a logged model (`models:/pianola@champion`, `runs:/ID/model`); the folder holding `marker`."""
    setup()
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except MlflowException as e:
        raise PianolaError(f"{uri}: not found in MLflow at {tracking_uri()} ({e.message})") from e
    found = sorted(local.rglob(marker))
    if not found:
        raise PianolaError(f"{uri}: the logged model holds no {marker}")
    return found[0].parent


def alias_version(alias: str) -> str | None:
    """The registered version behind `alias`, or None."""
    try:
        return str(MlflowClient().get_model_version_by_alias(REGISTERED_MODEL, alias).version)
    except MlflowException:
        return None


def log_generation(out_dir: Path, settings: dict, summary: dict) -> str:
    """An MLflow run holding a generated batch: its settings, summary metrics, MIDI, WAV and PNG files."""
    setup()
    with mlflow.start_run(run_name=f"generate-{settings.get('strategy', '')}") as run:
        mlflow.set_tag("pianola.kind", "generation")
        mlflow.log_params({k: v for k, v in settings.items()})
        mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})
        mlflow.log_artifacts(str(out_dir), artifact_path="pieces")
    return run.info.run_id
