"""Tasks of batch generation: a batch of pieces from a registered model, and its publication to S3.

Used by the generate flow; the pieces and their metrics are also logged to an MLflow run.
"""

from collections.abc import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from pianola.errors import PianolaError
from pianola.generation.generate import generate_batch as pianola_generate_batch
from tasks import BACKOFF_SECONDS, RETRIES, retry_unless_bad_input

# What `pianola generate` does: MIDI (and WAV), piano rolls, generation.json, and an MLflow run when `track`.
generate_batch = task(name="generate batch", cache_policy=NO_CACHE)(pianola_generate_batch)


def storage_publisher(s3_uri: str) -> Callable[[str, str], object]:
    """pianola.storage.publish, imported only when a batch is published; a PianolaError where it cannot be."""
    if not s3_uri.startswith("s3://"):
        raise PianolaError(f"--publish {s3_uri!r}: expected an S3 URI such as s3://BUCKET/PREFIX")
    try:
        from pianola.storage import publish
    except ModuleNotFoundError as e:
        if e.name != "pianola.storage":
            raise
        raise PianolaError(f"cannot publish to {s3_uri}: this installation of pianola has no storage module") from e
    return publish


@task(name="publish to S3", retries=RETRIES, retry_delay_seconds=exponential_backoff(BACKOFF_SECONDS),
      retry_condition_fn=retry_unless_bad_input, cache_policy=NO_CACHE)
def publish_batch(local_dir: str, s3_uri: str) -> str:
    """Upload `local_dir` to `s3_uri` with pianola.storage, retried with backoff (a network and a store)."""
    storage_publisher(s3_uri)(local_dir, s3_uri)
    return s3_uri
