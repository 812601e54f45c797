"""Drift monitoring as a Prefect run: compare new pieces (or what `pianola serve` served: input and prediction
drift) with the training corpus and, when they have drifted, emit the `pianola.drift.detected` event that starts
the retrain deployment.

Served daily by flows/serve.py and run once by `python -m flows.monitor` (the options of `pianola drift`).
"""

from typing import Annotated

import typer
from prefect import flow

from flows import cli
from pianola.monitoring.drift import monitor_settings
from tasks.artifacts import leave_summary
from tasks.drift import measure_drift
from tasks.events import DRIFT_EVENT, emit_drift_detected


@flow(name="monitor", log_prints=True)
def monitor(
    reference: Annotated[str | None, typer.Option(help="The training corpus: a folder of MIDI files, a tokens.jsonl or a folder holding one (default: params.yaml monitor.reference)")] = None,
    current: Annotated[str | None, typer.Option(help="The set to compare, in the same forms (default: monitor.current)")] = None,
    threshold: Annotated[float | None, typer.Option(help="Drifted when the largest normalised distance exceeds this (default: monitor.threshold)")] = None,
    feature: Annotated[list[str] | None, typer.Option("--feature", help="pitch, duration or ioi; repeat for several (default: monitor.features)")] = None,
    out: Annotated[str | None, typer.Option(help="Write the JSON report here (default: monitor.out)")] = None,
    served: Annotated[str | None, typer.Option(help="A `pianola serve` store folder: input and prediction drift of what it served, instead of CURRENT (default: monitor.served)")] = None,
) -> dict:
    """Measure drift of new pieces (or of what the service served) from the training corpus; emit an event when
    they have drifted."""
    settings = monitor_settings(reference=reference, current=current, threshold=threshold, features=feature, out=out,
                                served=served)
    report = measure_drift(settings)
    result = report.to_json()
    result["event"] = emit_drift_detected(report.event_payload()) if report.drifted else None
    fired = f"Emitted `{DRIFT_EVENT}` (event `{result['event']}`)." if report.drifted else "No event emitted."
    leave_summary("pianola-drift", "Drift", report.markdown(), fired)
    print(report.summary())
    return result


if __name__ == "__main__":
    cli(monitor)
