"""Orchestration end to end, on a real Prefect server: the pipeline flow, and drift that triggers retraining.

A tiny project (a git + DVC repository of small MIDI files, timed tokens, the demo preset) is built once;
`python -m flows.pipeline` trains it, then `flows/serve.py` serves the deployments; primers two octaves up sent to
the served model make `monitor` emit `pianola.drift.detected`, and the retrain deployment it triggers adds them to
the corpus and registers a new model. Last, `python -m flows.pipeline` and `python -m flows.retrain` start at the
same moment: one waits for the other's hold on the workspace (the `pianola-workspace` concurrency limit), then runs.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import symusic
import yaml
from mlflow.tracking import MlflowClient
from prefect.states import Failed

from conftest import free_port, make_midi, motif_notes, stop, tiny_dvc_repo, wait_until_up
from fixtures_s3 import AWS_VARIABLES, SeaweedFS, s3_bucket, s3_server  # noqa: F401 - fixtures, found by pytest among the module's names

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))  # tasks/ and flows/ run from the project root; they are not installed

from pianola.errors import PianolaError  # noqa: E402
from tasks import retry_unless_bad_input  # noqa: E402
from tasks.dvc import DvcError, push, run_stage  # noqa: E402

SERVER_START_S = 180
RUN_S = 420  # the retrain flow reruns every stage on 2 shared cores


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("flows")


@pytest.fixture(scope="module")
def api(work: Path) -> Iterator[str]:
    """A Prefect server on a free local port, with its database in the test's folder."""
    home = work / "prefect-server"
    home.mkdir()
    port = free_port()
    env = os.environ | {
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_UI_ENABLED": "false",  # the test needs the API only
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    log = home / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_until_up(server, f"{url}/health", log, SERVER_START_S, "prefect server")
        yield url
    finally:
        stop(server)


@pytest.fixture(scope="module")
def project(work: Path) -> Path:
    """A git + DVC repository like tests/test_dvc.py's, with a local DVC remote and a drifted set beside it."""
    (work / "drifted").mkdir()
    for key in range(6):
        piece = make_midi(work / "source" / f"piece{key}.mid", motif_notes(key))
        symusic.Score(str(piece)).shift_pitch(24).dump_midi(str(work / "drifted" / f"up{key}.mid"))  # two octaves up
    return tiny_dvc_repo(work / "repo", work / "source", work / "dvc-remote", flow_env(work))


def flow_env(work: Path, api: str | None = None) -> dict:
    """The environment flows run in: the test's Prefect server (`api`) and MLflow store, this venv first on PATH."""
    return os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_HOME": str(work / "prefect-client"),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",  # served runs start within a second of being scheduled
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
    } | ({"PREFECT_API_URL": api} if api else {})


@pytest.fixture(scope="module")
def pipeline_run(work: Path, project: Path, api: str) -> dict:
    """`python -m flows.pipeline` once on the tiny project, ingest and tokenize on a local Dask cluster; its printed
    result. What it printed is kept as bytes in work/pipeline.stdout and work/pipeline.stderr (text=True would have
    turned carriage returns into newlines). The plain path, every stage in `dvc repro`, is the retrain flow's."""
    args = [sys.executable, "-m", "flows.pipeline", "--dask-workers", "2"]
    done = subprocess.run(args, cwd=project, env=flow_env(work, api), capture_output=True, check=False)
    (work / "pipeline.stdout").write_bytes(done.stdout)
    (work / "pipeline.stderr").write_bytes(done.stderr)
    stdout, stderr = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{stdout[-3000:]}\n{stderr[-3000:]}"
    return json.loads(stdout)  # Prefect logs to stderr


def mlflow_client(work: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")


def test_pipeline_flow_trains_registers_generates_and_leaves_dvc_clean(
    work: Path, project: Path, api: str, pipeline_run: dict
) -> None:
    assert pipeline_run["stages"] == ["ingest", "tokenize", "corpus-plots", "sequences", "train", "evaluate", "generate"]
    assert pipeline_run["candidate"] == "1" and pipeline_run["promoted"] and pipeline_run["pushed_to"] == "local"
    assert pipeline_run["heldout"]["cross_entropy"] > 0
    champion = mlflow_client(work).get_model_version_by_alias("pianola", "champion")
    assert str(champion.version) == "1" and champion.run_id == pipeline_run["mlflow_run"]
    assert list((project / "outputs" / "generated").glob("*.mid"))
    # The same lineage as `dvc repro`: every stage locked, nothing left to run, the data pushed.
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(pipeline_run["stages"])
    status = run([sys.executable, "-m", "dvc", "status"], project, flow_env(work))
    assert "Data and pipelines are up to date" in status.stdout
    assert any((work / "dvc-remote").rglob("*"))
    # Ingest and tokenize ran on the cluster, and DVC, told of their outputs (`dvc commit`), ran only the stages after
    stderr = (work / "pipeline.stderr").read_bytes().decode(errors="replace")
    assert "Dask cluster local: 2 worker(s)" in stderr
    assert "Stage 'ingest' didn't change, skipping" in stderr and "Stage 'tokenize' didn't change, skipping" in stderr
    assert "Running stage 'sequences'" in stderr
    top_level = {"flows": {"name": {"any_": ["pipeline"]}},
                 "flow_runs": {"deployment_id": {"is_null_": True}, "parent_task_run_id": {"is_null_": True}}}
    assert [r["state"]["type"] for r in httpx.post(f"{api}/flow_runs/filter", json=top_level).json()] == ["COMPLETED"]
    artifacts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"key": {"any_": ["pianola-pipeline"]}}}).json()
    assert "version 1 is the first champion" in artifacts[0]["data"]
    # A quiet run: no traceback, no TensorFlow start-up or telemetry lines, no terminal codes in a pipe...
    stdout, stderr = ((work / f"pipeline.{name}").read_bytes().decode(errors="replace") for name in ("stdout", "stderr"))
    for noise in ("Traceback", "\x1b[", "\r", "absl::InitializeLog", "oneDNN custom operations", "Failed to send telemetry"):
        assert noise not in stdout + stderr, f"{noise!r} in the pipeline's output:\n{stderr[-3000:]}"
    # ...and a closing summary, last on stderr: the model and its alias, the figures, the files, where to look further.
    assert "pianola pipeline: done" in stderr
    summary = stderr[stderr.rindex("pianola pipeline: done"):]
    assert "pianola version 1, alias champion (promoted)" in summary
    assert f"cross-entropy {pipeline_run['heldout']['cross_entropy']:.4f} nats/token" in summary
    assert "perplexity" in summary and "accuracy" in summary and "nll_per_note" in summary
    assert str(Path("outputs") / "generated" / "piece_000.mid") in summary and "mean OA" in summary
    assert f"mlflow ui --backend-store-uri sqlite:///{work / 'mlflow.db'} --host 127.0.0.1" in summary
    assert "pianola serve" in summary and "http://127.0.0.1:8000/" in summary


class RetryUnavailable(httpx.HTTPTransport):
    """Resends a request answered 503, as Prefect's own client does: the server says so while its SQLite is busy."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for _ in range(40):
            response = super().handle_request(request)
            if response.status_code != 503:
                return response
            response.close()
            time.sleep(0.5)
        return response


@dataclass
class Served:
    client: httpx.Client  # of the Prefect API
    log: Path  # what flows.serve and its flow runs printed


@pytest.fixture(scope="module")
def served(work: Path, project: Path, api: str, pipeline_run: dict) -> Iterator[Served]:
    """`python -m flows.serve` in the trained project, once its retrain deployment is up."""
    log = work / "serve.log"
    with open(log, "w") as out:
        serve = subprocess.Popen([sys.executable, "-m", "flows.serve"], cwd=project, env=flow_env(work, api),
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    client = httpx.Client(base_url=api, timeout=30, transport=RetryUnavailable())
    try:
        deadline = time.monotonic() + SERVER_START_S
        while client.get("/deployments/name/retrain/on-drift").status_code != 200:
            assert serve.poll() is None, f"flows.serve exited:\n{tail(log)}"
            assert time.monotonic() < deadline, f"deployments not served after {SERVER_START_S} s:\n{tail(log)}"
            time.sleep(0.5)
        yield Served(client, log)
    finally:
        stop(serve)
        client.close()


def start(served: Served, deployment: str, parameters: dict) -> str:
    """Start a run of a served deployment, as the UI's "Run" button does; its id."""
    found = served.client.get(f"/deployments/name/{deployment}")
    assert found.status_code == 200, found.text
    created = served.client.post(f"/deployments/{found.json()['id']}/create_flow_run", json={"parameters": parameters})
    assert created.status_code == 201, created.text
    return created.json()["id"]


def finished(served: Served, flow_run_id: str) -> dict:
    """The flow run once it has reached a final state."""
    deadline = time.monotonic() + RUN_S
    while time.monotonic() < deadline:
        flow_run = served.client.get(f"/flow_runs/{flow_run_id}").json()
        if flow_run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return flow_run
        time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} not finished after {RUN_S} s:\n{tail(served.log)}")


def runs_of(served: Served, deployment: str) -> list[dict]:
    deployment_id = served.client.get(f"/deployments/name/{deployment}").json()["id"]
    return served.client.post("/flow_runs/filter", json={"flow_runs": {"deployment_id": {"any_": [deployment_id]}}}).json()


def serve_primers(project: Path, store: Path, primers: Path) -> Path:
    """What `pianola serve` of the project's model keeps after a user sent each of `primers`' files as a primer:
    the store folder (pieces, primers/, inference.jsonl)."""
    from pianola.serving.app import Service

    service = Service(str(project / "models" / "candidate"), store)
    try:
        for i, path in enumerate(sorted(primers.glob("*.mid"))):
            service.generate({"primer_midi": base64.b64encode(path.read_bytes()).decode(), "length": 48, "seed": i})
    finally:
        service.close()
    return store


def test_drift_event_triggers_a_retrain_that_registers_a_new_model(work: Path, project: Path, served: Served) -> None:
    quiet = finished(served, start(served, "monitor/daily", {"current": str(work / "source")}))
    assert quiet["state"]["type"] == "COMPLETED", tail(served.log)
    # The served model was sent primers two octaves up: the monitor of what it served finds input drift.
    store = serve_primers(project, work / "served", work / "drifted")
    loud = finished(served, start(served, "monitor/daily", {"served": str(store)}))
    assert loud["state"]["type"] == "COMPLETED", tail(served.log)

    deadline = time.monotonic() + RUN_S
    while not (retrains := runs_of(served, "retrain/on-drift")) and time.monotonic() < deadline:
        time.sleep(1)
    assert len(retrains) == 1, f"the drift event started no retrain run:\n{tail(served.log)}"
    retrain = finished(served, retrains[0]["id"])
    assert retrain["state"]["type"] == "COMPLETED", tail(served.log, 8000)
    assert retrain["parameters"] == {"current": str((store / "primers").resolve())}

    # One event, from the served primers only, carrying the figures; the training corpus fired nothing.
    events = served.client.post("/events/filter", json={"filter": {"event": {"name": ["pianola.drift.detected"]}}}).json()
    assert events["total"] == 1
    payload = events["events"][0]["payload"]
    assert payload["drifted"] and payload["kind"] == "input" and payload["moved"][0] == "pitch"
    assert payload["reason"].startswith("input drift: pitch moved") and payload["features"]["pitch"]["distance"] == 24.0
    assert "prediction" in payload["served"]["reports"]
    assert len(runs_of(served, "retrain/on-drift")) == 1

    # The primers users sent joined the corpus, and a model trained on them was registered as a new version.
    drifted = sorted(p.read_bytes() for p in (work / "drifted").glob("*.mid"))
    assert sorted(p.read_bytes() for p in (work / "source" / "primers").iterdir()) == drifted
    versions = mlflow_client(work).search_model_versions("name='pianola'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    status = run([sys.executable, "-m", "dvc", "status"], project, flow_env(work))
    assert "Data and pipelines are up to date" in status.stdout
    keys = ["pianola-drift", "pianola-retrain"]
    artifacts = served.client.post("/artifacts/filter", json={"artifacts": {"key": {"any_": keys}}}).json()
    assert {a["key"] for a in artifacts} == set(keys)


def test_generate_deployment_logs_a_batch_from_the_champion_to_mlflow(work: Path, project: Path, served: Served) -> None:
    out = project / "outputs" / "batches" / "test"
    flow_run = finished(served, start(served, "generate/on-demand", {"n": 2, "length": 16, "out": str(out)}))
    assert flow_run["state"]["type"] == "COMPLETED", tail(served.log)
    assert sorted(p.name for p in out.glob("*.mid")) == ["piece_000.mid", "piece_001.mid"]
    client = mlflow_client(work)
    runs = client.search_runs([client.get_experiment_by_name("pianola").experiment_id], "tags.`pianola.kind` = 'generation'")
    from_champion = [r for r in runs if r.data.params["model"] == "models:/pianola@champion"]
    assert len(from_champion) == 1 and from_champion[0].data.params["n"] == "2"
    assert "pieces/piece_000.mid" in {a.path for a in client.list_artifacts(from_champion[0].info.run_id, "pieces")}


def test_generate_flow_publishes_the_batch_to_s3(
    work: Path, project: Path, api: str, pipeline_run: dict, s3_server: SeaweedFS, s3_bucket: str
) -> None:
    env = {k: v for k, v in flow_env(work, api).items() if k not in AWS_VARIABLES}
    env |= s3_server.env() | {"PIANOLA_S3_ENDPOINT_URL": s3_server.endpoint}
    done = run([sys.executable, "-m", "flows.generate", "--n", "1", "--length", "16", "--out", "outputs/batches/s3",
                "--no-track", "--publish", f"s3://{s3_bucket}/batches/one"], project, env)
    assert json.loads(done.stdout)["published_to"] == f"s3://{s3_bucket}/batches/one"
    assert sorted(s3_server.keys(s3_bucket, "batches/one/")) == [
        f"batches/one/{name}" for name in ("generation.json", "musicality.png", "piece_000.mid", "piece_000.png")
    ]


def test_a_flow_run_from_the_command_line_reports_bad_input_in_one_line(work: Path, project: Path, api: str) -> None:
    done = subprocess.run([sys.executable, "-m", "flows.monitor", "--reference", str(work / "source"), "--current", "nowhere"], cwd=project,
                          env=flow_env(work, api), capture_output=True, text=True)
    assert done.returncode == 1 and not done.stdout
    assert done.stderr.rstrip().endswith(
        "error: current set nowhere: not found; pass a folder of MIDI files, a MIDI file, a tokens.jsonl file or a folder holding one"
    )


def test_a_failed_stage_raises_with_dvc_stderr_and_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], check=True)
    with pytest.raises(DvcError, match=r"`dvc repro nosuchstage` failed \(exit \d+\):\nERROR"):
        run_stage.fn("nosuchstage")
    with pytest.raises(PianolaError, match="no default DVC remote"):
        push.fn()
    assert run_stage.retries == 0 and push.retries == 3
    assert not retry_unless_bad_input(push, None, Failed(data=PianolaError("no remote")))
    assert retry_unless_bad_input(push, None, Failed(data=DvcError("connection reset")))
    from pianola.storage import StorageUnreachable

    assert retry_unless_bad_input(push, None, Failed(data=StorageUnreachable("the endpoint did not answer")))


def spans(client: httpx.Client, flow_run_ids: list[str]) -> tuple[datetime, datetime]:
    """When the task runs of these flow runs (their stages, merge, promotion, push) began and ended: first start,
    last end."""
    task_runs = client.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": flow_run_ids}}}).json()
    assert task_runs and all(t["state"]["type"] == "COMPLETED" for t in task_runs), task_runs
    return (min(datetime.fromisoformat(t["start_time"]) for t in task_runs),
            max(datetime.fromisoformat(t["end_time"]) for t in task_runs))


@pytest.mark.slow  # 90 s: two whole flows racing for the workspace; `make test-all` runs it
def test_a_retrain_started_with_a_pipeline_run_waits_for_it_then_runs(work: Path, project: Path, api: str,
                                                                     pipeline_run: dict) -> None:
    """Last in the module: it registers model versions that the tests above count."""
    registry = mlflow_client(work)
    before = sorted(int(v.version) for v in registry.search_model_versions("name='pianola'"))
    # Work for both flows, whichever goes first: the pipeline sees a new training seed, the retrain new pieces.
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["seed"] += 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    incoming = work / "incoming"
    for key in (7, 8, 9):
        make_midi(incoming / f"new{key}.mid", motif_notes(key, bars=20))

    started = datetime.now(UTC)
    commands = {"pipeline": [sys.executable, "-m", "flows.pipeline"],
                "retrain": [sys.executable, "-m", "flows.retrain", "--current", str(incoming)]}
    processes, logs = {}, {}
    for name, args in commands.items():  # at the same moment: both wait for the same Prefect server to answer
        logs[name] = (work / f"concurrent-{name}.stdout", work / f"concurrent-{name}.stderr")
        with open(logs[name][0], "w") as out, open(logs[name][1], "w") as err:
            processes[name] = subprocess.Popen(args, cwd=project, env=flow_env(work, api), stdout=out, stderr=err,
                                               start_new_session=True)
    try:
        deadline = time.monotonic() + 2 * RUN_S
        for name, process in processes.items():
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{name} not finished after {2 * RUN_S} s:\n{tail(logs[name][1])}") from None
    finally:
        for process in processes.values():
            stop(process)
    for name, process in processes.items():  # both ran: neither failed on DVC's lock
        assert process.returncode == 0, f"{name} exited {process.returncode}:\n{tail(logs[name][1], 8000)}"
    results = {name: json.loads(logs[name][0].read_text()) for name in processes}
    stderr = {name: logs[name][1].read_text() for name in processes}
    assert len(results["retrain"]["added"]) == 3
    # Each acquired the workspace once (the pipeline that the retrain runs inside its slot did not wait on it).
    for name in processes:
        assert stderr[name].count("Acquired 'pianola-workspace'") == 1, stderr[name][-3000:]
        assert stderr[name].count("Released 'pianola-workspace'") == 1, stderr[name][-3000:]

    # Their workspace-writing spans did not overlap, though the later one was already running during the first.
    client = httpx.Client(base_url=api, timeout=30, transport=RetryUnavailable())
    try:
        def flow_runs(flow: str) -> list[dict]:
            """The runs of `flow` since the two started, not counting the served deployments' (whose scheduled
            runs match a start-time filter by their expected start)."""
            return client.post("/flow_runs/filter", json={"flows": {"name": {"any_": [flow]}}, "flow_runs": {
                "start_time": {"after_": started.isoformat()}, "deployment_id": {"is_null_": True}}}).json()

        pipelines, retrains = flow_runs("pipeline"), flow_runs("retrain")
        assert len(retrains) == 1 and len(pipelines) == 2  # the pipeline's run, and the one the retrain ran
        top = [r for r in pipelines if r["parent_task_run_id"] is None]
        inner = [r for r in pipelines if r["parent_task_run_id"] is not None]
        assert len(top) == 1 and len(inner) == 1
        runs = {"pipeline": top[0], "retrain": retrains[0]}
        assert all(r["state"]["type"] == "COMPLETED" for r in pipelines + retrains)
        span = {"pipeline": spans(client, [top[0]["id"]]), "retrain": spans(client, [retrains[0]["id"], inner[0]["id"]])}
        first, second = sorted(span, key=lambda name: span[name][0])
        assert span[first][1] <= span[second][0], span
        assert datetime.fromisoformat(runs[second]["start_time"]) < span[first][1], (runs, span)
        assert "Workspace busy (another flow holds 'pianola-workspace')" in stderr[second], stderr[second][-3000:]
        assert "Workspace busy" not in stderr[first], stderr[first][-3000:]
        limit = client.get("/v2/concurrency_limits/pianola-workspace").json()
        assert limit["limit"] == 1 and limit["active_slots"] == 0, limit
    finally:
        client.close()

    # Registry and DVC consistent: a version per flow that had something to train (the second one has nothing
    # left when the retrain went first), the champion loads, nothing left to reproduce.
    trained = 2 if first == "pipeline" else 1
    after = sorted(int(v.version) for v in registry.search_model_versions("name='pianola'"))
    assert after == before + [before[-1] + i for i in range(1, trained + 1)]
    assert results["retrain"]["candidate"] == str(after[-1])
    assert results["pipeline"]["candidate"] == str(after[-1] if first == "retrain" else after[-2])
    champion = registry.get_model_version_by_alias("pianola", "champion")
    load = "from pianola.models.bundle import load_bundle; print(load_bundle('models:/pianola@champion').model_name)"
    loaded = run([sys.executable, "-c", load], project, flow_env(work))
    assert loaded.stdout.split()[-1] == params["train"]["model"] and int(champion.version) in after
    status = run([sys.executable, "-m", "dvc", "status"], project, flow_env(work))
    assert "Data and pipelines are up to date" in status.stdout
