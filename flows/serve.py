"""Operations: every flow as a deployment, all served from one process with `prefect.serve`.

`pipeline` weekly, `monitor` daily, `generate` on demand, and `retrain` whenever `monitor` emits
`pianola.drift.detected`. Run from the project root with PREFECT_API_URL pointing at a Prefect server.
"""

from typing import Annotated

import typer
from prefect import serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.events import DeploymentEventTrigger

from flows.generate import generate
from flows.monitor import monitor
from flows.pipeline import pipeline
from flows.retrain import retrain
from tasks.events import DRIFT_EVENT


def deployments(pipeline_cron: str, monitor_cron: str) -> list[RunnerDeployment]:
    """The four deployments; runs import their flow as a module (flows.NAME) from the working directory."""
    by_module = {"entrypoint_type": EntrypointType.MODULE_PATH}
    on_drift = DeploymentEventTrigger(
        name="retrain on drift",
        expect={DRIFT_EVENT},
        # The event carries the drift report; the drifted set is what retraining adds to the corpus.
        parameters={"current": "{{ event.payload.current.path }}"},
    )
    return [
        pipeline.to_deployment("weekly", cron=pipeline_cron, **by_module),
        monitor.to_deployment("daily", cron=monitor_cron, **by_module),
        generate.to_deployment("on-demand", **by_module),
        retrain.to_deployment("on-drift", triggers=[on_drift], **by_module),
    ]


def main(
    pipeline_cron: Annotated[str, typer.Option(help="When the whole pipeline runs (cron, UTC)")] = "0 3 * * 1",
    monitor_cron: Annotated[str, typer.Option(help="When the drift check runs (cron, UTC)")] = "0 6 * * *",
) -> None:
    """Serve the pipeline, monitor, generate and retrain deployments until interrupted."""
    # One run at a time: the flows share one DVC workspace, whose lock would fail a second `dvc repro`. (Runs from
    # other processes take turns with these through the `pianola-workspace` concurrency limit: tasks/workspace.py.)
    serve(*deployments(pipeline_cron, monitor_cron), limit=1)


if __name__ == "__main__":
    typer.run(main)
