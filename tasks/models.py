"""Tasks on the model registry: evaluate the candidate against the champion and promote only on improvement.

Used by the pipeline and retrain flows after the DVC stages have trained and registered a candidate.
"""

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from pianola.evaluation.promotion import Promotion, promote
from pianola.params import section


@task(name="evaluate and promote", cache_policy=NO_CACHE)
def promote_candidate(midi: str) -> Promotion:
    """Score `candidate` and `champion` on the same held-out pieces of `midi`; move `champion` only if better.
    Not retried: a model that fails to evaluate fails again."""
    return promote(midi)


def heldout_metrics() -> dict:
    """The evaluate stage's metrics (params.yaml evaluate.out), or {} before it has run."""
    path = Path(section("evaluate").get("out", "metrics/evaluate.json"))
    return json.loads(path.read_text()) if path.exists() else {}


def version_run_id(version: str) -> str:
    """The MLflow run that trained registered version `version` of the model."""
    from mlflow.tracking import MlflowClient

    from pianola.tracking import REGISTERED_MODEL, setup

    setup()
    return MlflowClient().get_model_version(REGISTERED_MODEL, version).run_id
