"""Task that turns a drifted report into the Prefect event the retrain deployment is triggered by.

The monitor flow emits it; flows/serve.py gives the retrain deployment a trigger on DRIFT_EVENT.
"""

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

DRIFT_EVENT = "pianola.drift.detected"


@task(name="emit drift event", cache_policy=NO_CACHE)
def emit_drift_detected(report: dict) -> str | None:
    """Emit DRIFT_EVENT about the current set, with the whole drift report (figures and reason) as payload.

    The payload's `current.path` is absolute: the retrain run it triggers reads it, maybe elsewhere.
    Returns the event id (None where events are off, e.g. without an API).
    """
    current, reference = report["current"]["path"], report["reference"]["path"]
    event = emit_event(
        event=DRIFT_EVENT,
        resource={"prefect.resource.id": f"pianola.pieces.{current}", "prefect.resource.name": current},
        related=[{"prefect.resource.id": f"pianola.pieces.{reference}", "prefect.resource.role": "reference",
                  "prefect.resource.name": reference}],
        payload=report,
    )
    return str(event.id) if event else None
