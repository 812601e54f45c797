"""The training flow as one Prefect run: every DVC stage in order, then promotion and `dvc push`.

Served weekly by flows/serve.py and run once by `python -m flows.pipeline` (`make run`), which prints the result
as JSON on stdout and ends with a summary for people on stderr (closing_summary). DVC runs each stage, so the
run leaves the same outputs and dvc.lock as `dvc repro`, and `dvc status` is clean afterwards. It holds the
workspace (tasks/workspace.py) from the first stage to the push, so a retrain started meanwhile waits for it.
"""

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from prefect import flow

from flows import cli
from flows.corpus import ADDRESS_VARIABLE, corpus
from pianola.params import section
from tasks.artifacts import leave_summary, table
from tasks.dvc import commit_stages, pipeline_stages, run_stage
from tasks.dvc import push as dvc_push
from tasks.models import heldout_metrics, promote_candidate, version_run_id
from tasks.workspace import workspace


@flow(name="pipeline", log_prints=True)
def pipeline(
    midi: Annotated[str | None, typer.Option(help="Folder holding the validation pieces' MIDI files, for promotion (default: params.yaml ingest.out)")] = None,
    push: Annotated[bool, typer.Option(help="Push the DVC-tracked outputs to the default DVC remote")] = True,
    dask_address: Annotated[str | None, typer.Option(help=f"Run ingest and tokenize on the Dask scheduler at tcp://HOST:PORT (default: ${ADDRESS_VARIABLE})")] = None,
    dask_workers: Annotated[int, typer.Option(help="Run ingest and tokenize on a local Dask cluster of this many processes (0: in the stages' own process)")] = 0,
) -> dict:
    """Reproduce every DVC stage, promote the candidate only if it beats the champion, push the data."""
    # One writer of the workspace at a time (tasks/workspace.py); inside a retrain, which holds it already, a no-op.
    with workspace("the pipeline"):
        stages = pipeline_stages()
        dask_address = dask_address or os.environ.get(ADDRESS_VARIABLE) or None
        if dask_address or dask_workers:
            # the corpus stages' files on the cluster, their outputs recorded by DVC as if `dvc repro` had run them
            corpus(dask_address=dask_address, workers=dask_workers or 2)
            commit_stages(["ingest", "tokenize"])
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


def closing_summary(result: dict) -> str:
    """What a run left, for people: the registered model and its alias, the held-out and musicality figures, the
    generated files, and the commands to look further (printed on stderr after the run by `python -m flows.pipeline`)."""
    generate = section("generate")
    out = Path(generate.get("out", "outputs/generated"))
    alias = ("champion (promoted)" if result["promoted"]
             else f"candidate (not promoted: the champion stays version {result['champion_before']})")
    rows = [("model", f"pianola version {result['candidate']}, alias {alias}"),
            ("", result["promotion"]),
            ("", f"MLflow run {result['mlflow_run']}"),
            ("held out", _heldout(result["heldout"]))]
    rows += _labelled("generated", _generated_files(out) or [f"nothing in {out}"])
    rows += _labelled("musicality", _musicality(out / "generation.json", Path(generate.get("metrics", "metrics/generate.json"))))
    rows.append(("data", f"pushed to DVC remote {result['pushed_to']!r}" if result["pushed_to"] else "not pushed (--no-push)"))
    binaries = _binaries()
    serve_note = "" if result["promoted"] else f" (the champion, version {result['champion_before']}; --model models:/pianola@candidate for this one)"
    rows += [("look further", ""),
             ("  MLflow UI", f"{binaries}/mlflow ui --backend-store-uri {_mlflow_uri()} --host 127.0.0.1, then http://127.0.0.1:5000/"),
             ("  Prefect UI", _prefect_ui(binaries)),
             ("  listen", f"{_with_store()}{binaries}/pianola serve, then http://127.0.0.1:8000/{serve_note}")]
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(["", "pianola pipeline: done", *(f"  {label:<{width}}{text}".rstrip() for label, text in rows)])


def _labelled(label: str, lines: list[str]) -> list[tuple[str, str]]:
    return [(label if i == 0 else "", line) for i, line in enumerate(lines)]


def _number(value: object, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _heldout(metrics: dict) -> str:
    if not metrics:
        return "no metrics/evaluate.json"
    line = (f"cross-entropy {_number(metrics.get('cross_entropy'), '.4f')} nats/token, perplexity "
            f"{_number(metrics.get('perplexity'), '.2f')}, accuracy {_number(metrics.get('accuracy'), '.2%')}, "
            f"nll_per_note {_number(metrics.get('nll_per_note'), '.4f')} nats")
    counts = [f"{metrics[k]:,} {k}" for k in ("tokens", "notes") if metrics.get(k) is not None]
    if metrics.get("oov_rate") is not None:
        counts.append(f"OOV {metrics['oov_rate']:.2%}")
    return line + (f" ({', '.join(counts)})" if counts else "")


def _generated_files(out: Path) -> list[str]:
    """One line per piece (its MIDI, WAV and PNG), then the batch's own files."""
    kinds = (".mid", ".wav", ".png", ".json")
    files = sorted((p for p in out.glob("*") if p.suffix in kinds), key=lambda p: (p.stem, kinds.index(p.suffix)))
    stems = sorted({p.stem for p in files if p.suffix == ".mid"})
    lines = [", ".join(str(p) for p in files if p.stem == stem) for stem in stems]
    rest = [str(p) for p in files if p.stem not in stems]
    return lines + ([", ".join(rest)] if rest else [])


def _musicality(report_path: Path, metrics_path: Path) -> list[str]:
    """The figures of generation.json's musicality report (README: Musicality), or the flat metrics/generate.json."""
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    r, summary = report.get("musicality"), report.get("summary", {})
    if not r:
        flat = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        if not flat:
            return [f"no {report_path} or {metrics_path}"]
        return [", ".join(f"{k} {v}" for k, v in flat.items())]
    oa, groups, lowest, novelty = r["mean_oa"], r["groups"], r["min_feature_ratio"], r["novelty"]
    copied = ("none" if novelty["generated"] is None else f"{novelty['generated']:.1%}") + (
        "" if novelty["human"] is None else f" (human {novelty['human']:.1%})")
    pieces = summary.get("pieces", "?")
    by_group = ", ".join(f"{group} {_number(value, '.3f')}" for group, value in groups["generated"].items())
    return [
        (f"mean OA {_number(oa['generated'], '.3f')} against the human pieces' {_number(oa['human'], '.3f')} "
         f"({_number(oa['ratio'], '.2f')}x): {by_group}"),
        (f"lowest feature {str(lowest['feature']).replace('_', ' ')} ({_number(lowest['ratio'], '.2f')}x); "
         f"{novelty.get('ngram', 8)}-grams found in training: {copied}"),
        (f"loops over 1/4 of a piece: {summary.get('pieces_looping_over_quarter', '?')} of {pieces}; "
         f"scale consistency {_number(summary.get('scale_consistency_mean'), '.3f')}; "
         f"distinct 4-grams {_number(summary.get('distinct_4gram_ratio_mean'), '.3f')}"),
    ]


def _binaries() -> str:
    """This environment's bin folder, relative to the working directory where inside it (.venv/bin)."""
    folder = Path(sys.executable).parent
    try:
        return str(folder.relative_to(Path.cwd()))
    except ValueError:
        return str(folder)


def _mlflow_uri() -> str:
    """The run's MLflow store; pianola.tracking's default (which it sets as an absolute path) as written from here."""
    default = "sqlite:///mlflow/mlflow.db"
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default
    return default if uri == f"sqlite:///{Path('mlflow/mlflow.db').resolve()}" else uri


def _with_store() -> str:
    """`MLFLOW_TRACKING_URI=... ` where the run's MLflow store is not the one `pianola serve` finds by default."""
    uri = _mlflow_uri()
    return "" if uri == "sqlite:///mlflow/mlflow.db" else f"MLFLOW_TRACKING_URI={uri} "


def _prefect_ui(binaries: str) -> str:
    api = os.environ.get("PREFECT_API_URL")
    if api:
        return f"{api.rstrip('/').removesuffix('/api')}/ (the server this run used)"
    return f"{binaries}/prefect server start --host 127.0.0.1, then http://127.0.0.1:4200/"


if __name__ == "__main__":
    cli(pipeline, summary=closing_summary)
