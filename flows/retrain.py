"""Retraining as a Prefect run: add new pieces to the corpus source, rerun the DVC pipeline, promote only if better.

Triggered by the `pianola.drift.detected` event through flows/serve.py (with the drifted set as `current`),
or run once by `python -m flows.retrain`.
"""

from typing import Annotated

import typer
from prefect import flow

from flows import cli
from flows.pipeline import pipeline
from pianola.monitoring.drift import monitor_settings
from pianola.params import section
from tasks.artifacts import leave_summary, table
from tasks.drift import merge_new_data
from tasks.dvc import run_stage
from tasks.workspace import workspace


@flow(name="retrain", log_prints=True)
def retrain(
    current: Annotated[str | None, typer.Option(help="Folder of new MIDI files to add to the corpus (default: params.yaml monitor.current)")] = None,
    midi: Annotated[str | None, typer.Option(help="Folder holding the validation pieces' MIDI files, for promotion (default: params.yaml ingest.out)")] = None,
    push: Annotated[bool, typer.Option(help="Push the DVC-tracked outputs to the default DVC remote")] = True,
) -> dict:
    """Merge the new pieces into the corpus source (params.yaml ingest.source, a folder), then run the pipeline."""
    new_pieces = monitor_settings(current=current).current
    # The workspace is held from the merge to the end of the pipeline it calls: a weekly pipeline that starts
    # meanwhile waits, and this one waits for a pipeline already running. The pipeline run below, already
    # inside, does not acquire it again.
    with workspace("the retrain"):
        added = merge_new_data(new_pieces, str(section("ingest").get("source", "")))
        # DVC does not track the files of a folder source, so it cannot see the new ones: ingest must run anyway.
        run_stage("ingest", force=True)
        result = {"added": added} | pipeline(midi=midi, push=push)
    leave_summary(
        "pianola-retrain", f"Retrained on {len(added)} new piece(s) from {new_pieces}", result["promotion"],
        table({"new files": len(added), "candidate version": result["candidate"],
               "MLflow run": f"`{result['mlflow_run']}`", "promoted": result["promoted"],
               "DVC remote": result["pushed_to"] or "not pushed"}),
    )
    return result


if __name__ == "__main__":
    cli(retrain)
