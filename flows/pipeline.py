"""The training flow as one Prefect run: every DVC stage in order, then promotion and `dvc push`.

Served weekly by flows/serve.py and run once by `python -m flows.pipeline`. DVC runs each stage, so the
run leaves the same outputs and dvc.lock as `dvc repro`, and `dvc status` is clean afterwards.
"""

from typing import Annotated

import typer
from prefect import flow

from flows import cli
from pianola.params import section
from tasks.artifacts import leave_summary, table
from tasks.dvc import pipeline_stages, push as dvc_push, run_stage
from tasks.models import heldout_metrics, promote_candidate, version_run_id


@flow(name="pipeline", log_prints=True)
def pipeline(
    midi: Annotated[str | None, typer.Option(help="Folder holding the validation pieces' MIDI files, for promotion (default: params.yaml ingest.out)")] = None,
    push: Annotated[bool, typer.Option(help="Push the DVC-tracked outputs to the default DVC remote")] = True,
) -> dict:
    """Reproduce every DVC stage, promote the candidate only if it beats the champion, push the data."""
    stages = pipeline_stages()
    for stage in stages:
        run_stage(stage)
    promotion = promote_candidate(midi or section("ingest").get("out", "data/raw"))
    remote = dvc_push() if push else None
    result = {
        "stages": stages,
        "heldout": heldout_metrics(),
        "candidate": promotion.candidate,
        "mlflow_run": version_run_id(promotion.candidate),
        "champion_before": promotion.champion_before,
        "promoted": promotion.promoted,
        "promotion": promotion.summary(),
        "pushed_to": remote,
    }
    leave_summary(
        "pianola-pipeline", "Pipeline", promotion.summary(),
        table({"stages": ", ".join(stages), "candidate version": promotion.candidate,
               "MLflow run": f"`{result['mlflow_run']}`", "promoted": promotion.promoted,
               "DVC remote": remote or "not pushed"}
              | {f"held-out {name}": value for name, value in result["heldout"].items()}),
    )
    print(promotion.summary())
    return result


if __name__ == "__main__":
    cli(pipeline)
