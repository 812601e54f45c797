"""`pianola serve`: the JSON API, bad input answered with a 4xx and a reason, continuous batching, the inference
log, the alias followed without failing requests, monitoring of what was served, and the MLflow pyfunc model as
`mlflow models serve` runs it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
import symusic
from fastapi.testclient import TestClient

from conftest import free_port, make_midi, motif_notes, stop, wait_until_up
from pianola import tracking
from pianola.errors import BadRequest
from pianola.generation.generate import generate_ids
from pianola.generation.sampling import Sampling
from pianola.models.bundle import load_bundle
from pianola.monitoring.drift import monitor_settings
from pianola.monitoring.served import check
from pianola.serving.app import Service, create_app
from pianola.serving.composer import (
    Composer,
    GenerationRequest,
    Limits,
    generate_request,
)
from pianola.serving.pyfunc import register_bundle
from pianola.serving.store import (
    InferenceLog,
    PieceStore,
    log_files,
    new_piece_id,
    read_log,
    repair,
)

LIMITS = Limits(max_n=4, max_length=400, max_primer_bytes=20_000, max_primer_tokens=500, timeout_s=30)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def midi_bytes(path: Path) -> bytes:
    return path.read_bytes()


@pytest.fixture(scope="module")
def service(bundle_dir: Path, tmp_path_factory) -> Service:
    service = Service(str(bundle_dir), tmp_path_factory.mktemp("served"), limits=LIMITS)
    yield service
    service.close()


@pytest.fixture(scope="module")
def client(service: Service) -> TestClient:
    return TestClient(create_app(service), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def primer_file(tmp_path_factory) -> Path:
    return make_midi(tmp_path_factory.mktemp("primer") / "primer.mid", motif_notes(3, bars=4))


def test_generate_answers_pieces_and_serves_their_files(client: TestClient, service: Service) -> None:
    answer = client.post("/v1/generate", json={"n": 2, "length": 60, "seed": 4})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_version"] == service.deployment.version and len(body["pieces"]) == 2
    for piece in body["pieces"]:
        midi = base64.b64decode(piece["midi"])
        assert midi[:4] == b"MThd" and len(piece["tokens"]) == 60 and piece["metrics"]["notes"] > 0
        assert client.get(f"/v1/pieces/{piece['id']}.mid").content == midi
        png = client.get(f"/v1/pieces/{piece['id']}.png")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
        assert client.get(f"/v1/pieces/{piece['id']}").json()["metrics"] == piece["metrics"]
    wav = client.get(f"/v1/pieces/{body['pieces'][0]['id']}.wav")
    assert wav.status_code == 200 and wav.content[:4] == b"RIFF" and wav.content[8:12] == b"WAVE"
    listed = [p["id"] for p in client.get("/v1/pieces").json()["pieces"]]
    assert {p["id"] for p in body["pieces"]} <= set(listed)
    model = client.get("/v1/model").json()
    assert model["version"] == service.deployment.version and model["defaults"]["length"] == 500
    assert model["limits"]["max_n"] == LIMITS.max_n and model["training_primers"] > 0
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/").headers["content-type"].startswith("text/html")
    assert "/v1/generate" in client.get("/openapi.json").json()["paths"]


def test_a_seed_gives_the_piece_the_sync_path_and_pianola_generate_give(client: TestClient, service: Service) -> None:
    fields = {"n": 2, "length": 50, "seed": 11, "strategy": "top_k", "top_k": 5}
    served = [p["tokens"] for p in client.post("/v1/generate", json=fields).json()["pieces"]]
    composer = service.deployment.composer
    request = GenerationRequest.parse(fields, LIMITS)
    primer, pieces = generate_request(composer, request)
    assert served == [p.tokens for p in pieces]
    ids = generate_ids(composer.bundle, primer.ids, 50, Sampling("top_k", top_k=5), 11)
    assert served == [composer.bundle.vocab.decode(row) for row in ids]


def test_concurrent_requests_are_batched_and_each_equals_its_piece_alone(service: Service) -> None:
    requests = [{"n": 1 + i % 2, "length": 40 + 17 * i, "seed": i, "strategy": ["top_p", "temperature", "top_k", "greedy"][i % 4],
                 "temperature": 0.8 + 0.1 * i} for i in range(8)]
    steps_before = service.deployment.engine.steps
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(service.generate, requests))
    steps = service.deployment.engine.steps - steps_before
    composer = service.deployment.composer
    for fields, answer in zip(requests, answers):
        _, alone = generate_request(composer, GenerationRequest.parse(fields, LIMITS))
        assert [p["tokens"] for p in answer["pieces"]] == [p.tokens for p in alone]
    # One after another they would take sum(primer + length) steps; batched, far fewer.
    window = composer.bundle.window
    assert steps < 0.6 * sum(window + r["length"] for r in requests), steps


MIDI_TEXT = b"MThd is not enough"


@pytest.mark.parametrize("fields, status, message", [
    ({"n": 0}, 422, "n must be between 1 and 4"),
    ({"n": 5}, 422, "n must be between 1 and 4"),
    ({"length": 401}, 422, "length must be between 1 and 400"),
    ({"length": "long"}, 422, "length must be an integer"),
    ({"strategy": "beam"}, 422, "unknown strategy 'beam'"),
    ({"temperature": 0}, 422, "temperature must be positive"),
    ({"temperature": "hot"}, 422, "temperature must be a finite number"),
    ({"top_p": 1.5}, 422, "top-p must be in (0, 1]"),
    ({"seed": -1}, 422, "seed must be between 0"),
    ({"voices": 4}, 422, "unknown field(s): voices"),
    ({"primer_midi": "%%% not base64"}, 422, "primer_midi is not valid base64"),
    ({"primer_midi": 12}, 422, "primer_midi must be a MIDI file in base64"),
    ({"primer_midi": b64(b"<html><body>a page</body></html>")}, 422, "only piano MIDI is accepted: looks like HTML"),
    ({"primer_midi": b64(b"\x00\x01binary junk" * 10)}, 422, "only piano MIDI is accepted: not MIDI"),
    ({"primer_tokens": ["no-such-token"]}, 422, "does not know: no-such-token"),
    ({"primer_tokens": "note:60"}, 422, "primer_tokens must be a list"),
    ({"primer_tokens": []}, 422, "primer_tokens is empty"),
    ({"primer_tokens": ["x"] * 501}, 413, "over the cap of 500"),
])
def test_a_bad_request_gets_a_4xx_with_the_reason(client: TestClient, service: Service, fields: dict, status: int,
                                                   message: str) -> None:
    before = len(service.store.latest(1000))
    answer = client.post("/v1/generate", json=fields)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["detail"]
    assert len(service.store.latest(1000)) == before  # nothing generated, nothing stored


def test_a_primer_that_is_not_piano_music_is_refused_with_the_reason(client: TestClient, tmp_path: Path) -> None:
    drums = make_midi(tmp_path / "drums.mid", motif_notes(0, bars=2), drum=True)
    silent = make_midi(tmp_path / "silent.mid", [])
    truncated = make_midi(tmp_path / "cut.mid", motif_notes(0, bars=8)).read_bytes()[:60]
    big = make_midi(tmp_path / "big.mid", motif_notes(0, bars=400))
    assert big.stat().st_size > LIMITS.max_primer_bytes
    for data, status, message in [
        (drums.read_bytes(), 422, "drum"),
        (silent.read_bytes(), 422, "no notes"),
        (truncated, 422, "truncated"),
        (big.read_bytes(), 413, "over the"),
    ]:
        answer = client.post("/v1/generate", json={"primer_midi": b64(data)})
        assert answer.status_code == status, answer.text
        assert "primer" in answer.json()["detail"] and message in answer.json()["detail"], answer.json()


def test_malformed_bodies_oversized_bodies_and_paths_get_4xx(client: TestClient) -> None:
    broken = client.post("/v1/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 422 and "JSON" in broken.json()["detail"]
    listed = client.post("/v1/generate", json=[1, 2])
    assert listed.status_code == 422 and "object" in listed.json()["detail"]
    huge = client.post("/v1/generate", content=b" " * 2_000_000, headers={"content-type": "application/json"})
    assert huge.status_code == 413 and "over" in huge.json()["detail"]
    chunked = client.post("/v1/generate", content=(b" " * 500_000 for _ in range(6)),
                          headers={"content-type": "application/json"})  # no Content-Length: read up to the cap only
    assert chunked.status_code == 413 and "over" in chunked.json()["detail"]
    small = client.post("/v1/generate", content=(part for part in [b'{"length"', b": 12}"]),
                        headers={"content-type": "application/json"})
    assert small.status_code == 200 and len(small.json()["pieces"][0]["tokens"]) == 12
    for name in ["..%2F..%2Fetc%2Fpasswd", "..%2Fserved.mid", "0123.mid", "0" * 32 + ".exe", "0" * 32 + ".mid",
                 "%2Fetc%2Fpasswd.mid", "0" * 32]:
        answer = client.get(f"/v1/pieces/{name}")
        assert answer.status_code == 404, (name, answer.text)
        assert answer.json()["detail"] == "Not Found" if "%2F" in name else "no piece" in answer.json()["detail"]
    assert client.get("/static/..%2F..%2Fapp.py").status_code == 404


def test_a_request_over_the_time_limit_is_answered_503_and_its_pieces_stop(bundle_dir: Path, tmp_path: Path) -> None:
    slow = Service(str(bundle_dir), tmp_path / "served", limits=Limits(max_length=100_000, timeout_s=0.2))
    try:
        answer = TestClient(create_app(slow)).post("/v1/generate", json={"length": 100_000})
        assert answer.status_code == 503 and "took over 0.2 s" in answer.json()["detail"]
        deadline = time.monotonic() + 5
        while slow.deployment.engine.in_flight() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slow.deployment.engine.in_flight() == 0
    finally:
        slow.close()


def test_a_primer_is_used_kept_and_logged_with_its_features(client: TestClient, service: Service, primer_file: Path) -> None:
    data = primer_file.read_bytes()
    answer = client.post("/v1/generate", json={"primer_midi": b64(data), "length": 30, "n": 2})
    assert answer.status_code == 200, answer.text
    tokens = service.deployment.composer.bundle.tokenizer.encode(primer_file)
    kept = list((service.store.primers_dir).glob("*.mid"))
    assert [p.read_bytes() for p in kept] == [data]
    by_tokens = client.post("/v1/generate", json={"primer_tokens": tokens[:20], "length": 30})
    assert by_tokens.status_code == 200, by_tokens.text
    service.log.flush()
    records = list(read_log(service.log.path))
    midi_record = next(r for r in records if r["primer"]["source"] == "midi")
    assert midi_record["primer"]["fingerprint"] == kept[0].stem
    notes = symusic.Score.from_midi(data).tracks[0].notes
    assert sorted(midi_record["primer"]["features"]["pitch"]) == sorted(float(n.pitch) for n in notes)
    assert [p["id"] for p in midi_record["pieces"]] == [p["id"] for p in answer.json()["pieces"]]
    assert all(set(p["features"]) == {"pitch", "duration", "ioi"} for p in midi_record["pieces"])
    assert next(r for r in records if r["primer"]["source"] == "tokens")["primer"]["tokens"] == 20
    assert all({"time", "model_version", "model_uri", "settings", "seconds"} <= set(r) for r in records)


def test_the_store_keeps_the_newest_pieces(tmp_path: Path) -> None:
    store = PieceStore(tmp_path, keep=10)
    ids = []
    for i in range(35):
        ids.append(new_piece_id())
        store.save(ids[-1], b"MThd", {"id": ids[-1], "n": i})
        store.prune()
        assert len(list(tmp_path.glob("*.json"))) <= 11
    newest = [r["id"] for r in store.latest(10)]
    assert newest == ids[::-1][:10]
    with pytest.raises(BadRequest, match="no piece"):
        store.path(ids[0], "mid")


def test_the_inference_log_rotates_and_never_holds_half_a_record(tmp_path: Path) -> None:
    path = tmp_path / "inference.jsonl"
    log = InferenceLog(path, max_bytes=2000, backups=3)
    for i in range(100):
        log.append({"time": float(i), "n": i, "pad": "x" * 100})
    log.close()
    files = log_files(path)
    assert [f.name for f in files] == ["inference.3.jsonl", "inference.2.jsonl", "inference.1.jsonl", "inference.jsonl"]
    kept = [r["n"] for r in read_log(path)]
    assert kept == list(range(kept[0], 100)) and kept[0] > 0  # the oldest rotated out, the rest in order
    assert [r["n"] for r in read_log(path, since=97.0)] == [98, 99]

    # A crash in the middle of a write leaves a torn last line: reopening cuts it, and appends go on after it.
    with open(path, "ab") as f:
        f.write(b'{"time": 100.0, "n": 1')
    assert [r["n"] for r in read_log(path)][-1] == 99  # readers skip it even before the repair
    log = InferenceLog(path, max_bytes=10**6)
    log.append({"time": 101.0, "n": 101})
    log.close()
    lines = path.read_bytes().splitlines(keepends=True)
    assert all(line.endswith(b"\n") for line in lines) and [json.loads(line)["n"] for line in lines][-2:] == [99, 101]


def test_a_log_killed_while_writing_holds_only_whole_records(tmp_path: Path) -> None:
    path = tmp_path / "inference.jsonl"
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys\nfrom pianola.serving.store import InferenceLog\n"
        f"log = InferenceLog({str(path)!r}, max_bytes=200_000)\n"
        "i = 0\nwhile True:\n    log.append({'time': float(i), 'n': i, 'pad': 'y' * (i % 3000)})\n    i += 1\n"
    )], start_new_session=True)
    first_rotation = path.with_name("inference.1.jsonl")
    deadline = time.monotonic() + 60
    while not (first_rotation.exists() and path.exists() and path.stat().st_size > 50_000):
        assert time.monotonic() < deadline and writer.poll() is None, "the writer wrote too little"
        time.sleep(0.01)
    os.killpg(writer.pid, 9)
    writer.wait()
    repair(path)
    for file in log_files(path):
        data = file.read_bytes()
        assert not data or data.endswith(b"\n")
        assert all(json.loads(line)["pad"] is not None for line in data.splitlines())


def register_again(bundle_dir: Path) -> str:
    with mlflow.start_run():
        return register_bundle(bundle_dir)


def test_the_service_takes_up_a_moved_alias_without_failing_a_request(
    registry: str, bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry)
    service = Service("models:/pianola@champion", tmp_path / "served", poll_s=0.2)
    client = TestClient(create_app(service))
    start = service.deployment.version
    stop_clients, answers = threading.Event(), []

    def keep_asking(seed: int) -> None:
        while not stop_clients.is_set():
            answer = client.post("/v1/generate", json={"length": 80, "seed": seed})
            answers.append((answer.status_code, answer.json().get("model_version"), answer.text))

    clients = [threading.Thread(target=keep_asking, args=(i,)) for i in range(4)]
    try:
        for thread in clients:
            thread.start()
        time.sleep(1.0)
        tracking.setup()
        new = register_again(bundle_dir)
        mlflow.MlflowClient().set_registered_model_alias("pianola", "champion", new)
        deadline = time.monotonic() + 30
        while service.deployment.version != new and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # requests go on against the new version
    finally:
        stop_clients.set()
        for thread in clients:
            thread.join()
        service.close()
    assert service.deployment.version == new != start and service.swaps == 1
    assert [a for a in answers if a[0] != 200] == []
    versions = {a[1] for a in answers}
    assert versions == {start, new}, versions
    assert client.get("/v1/model").json()["version"] == new


def served_log(service: Service, primers: list[Path], plain: int) -> None:
    for i, path in enumerate(primers):
        answer = service.generate({"primer_midi": b64(path.read_bytes()), "length": 64, "seed": i})
        assert answer["pieces"]
    for i in range(plain):
        service.generate({"length": 64, "seed": 100 + i})
    service.log.flush()


def test_monitoring_ordinary_use_finds_no_drift(bundle_dir: Path, tiny_project: Path, tmp_path: Path) -> None:
    service = Service(str(bundle_dir), tmp_path / "served")
    try:
        served_log(service, sorted((tiny_project / "data/raw").glob("*.mid"))[:4], plain=4)
    finally:
        service.close()
    settings = monitor_settings(reference=str(tiny_project / "data/raw"), served=str(tmp_path / "served"),
                                out=str(tmp_path / "drift.json"))
    report = check(settings)
    assert set(report.reports) == {"input", "prediction"}, report.not_measured
    assert not report.drifted, report.summary()
    assert report.reports["input"].current.pieces == 4 and report.reports["prediction"].current.pieces == 8
    assert json.loads((tmp_path / "drift.json").read_text())["drifted"] is False


def test_monitoring_primers_from_a_transposed_corpus_finds_input_drift_in_pitch(
    bundle_dir: Path, tiny_project: Path, tmp_path: Path,
) -> None:
    transposed = []
    for path in sorted((tiny_project / "data/raw").glob("*.mid"))[:4]:
        transposed.append(tmp_path / f"up-{path.name}")
        symusic.Score(str(path)).shift_pitch(19).dump_midi(str(transposed[-1]))
    service = Service(str(bundle_dir), tmp_path / "served")
    try:
        served_log(service, transposed, plain=2)
    finally:
        service.close()
    report = check(monitor_settings(reference=str(tiny_project / "data/raw"), served=str(tmp_path / "served"), out=None))
    assert report.drifted and "input" in report.to_json()["kinds"]
    assert report.reports["input"].moved[0] == "pitch"
    assert report.reason.startswith("input drift: pitch moved")
    payload = report.event_payload()
    assert payload["kind"] == "input" and payload["moved"][0] == "pitch"
    # What retraining adds to the corpus: the primers users sent (never the model's own pieces).
    primers = Path(payload["current"]["path"])
    assert primers == (tmp_path / "served" / "primers").resolve()
    assert sorted(p.read_bytes() for p in primers.glob("*.mid")) == sorted(p.read_bytes() for p in transposed)


def test_a_served_log_without_requests_is_a_clear_error(tiny_project: Path, tmp_path: Path) -> None:
    from pianola.errors import PianolaError

    (tmp_path / "served").mkdir()
    with pytest.raises(PianolaError, match="no served requests to monitor"):
        check(monitor_settings(reference=str(tiny_project / "data/raw"), served=str(tmp_path / "served"), out=None))


def test_the_registered_model_generates_under_mlflow_models_serve(registry: str, bundle_dir: Path, tmp_path: Path,
                                                                  primer_file: Path) -> None:
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = os.environ | {"MLFLOW_TRACKING_URI": registry, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", "models:/pianola@champion",
                                   "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(server, f"{url}/ping", log, 180, "mlflow models serve")
        params = {"n": 2, "length": 40, "seed": 3, "strategy": "temperature", "temperature": 0.9}
        answer = httpx.post(f"{url}/invocations", json={"dataframe_records": [{}], "params": params}, timeout=120)
        assert answer.status_code == 200, answer.text
        rows = answer.json()["predictions"]
        composer = Composer(load_bundle(bundle_dir), "local")
        _, expected = generate_request(composer, GenerationRequest.parse(params, Limits()))
        assert [r["tokens"] for r in rows] == [p.tokens for p in expected]
        assert [r["piece"] for r in rows] == [0, 1] and all(r["input"] == 0 for r in rows)
        assert all(base64.b64decode(r["midi"])[:4] == b"MThd" and json.loads(r["metrics"])["notes"] > 0 for r in rows)

        primed = httpx.post(f"{url}/invocations", timeout=120, json={
            "dataframe_records": [{"primer_midi": b64(primer_file.read_bytes())}], "params": {"length": 20}})
        assert primed.status_code == 200, primed.text
        assert len(primed.json()["predictions"]) == 1

        bad = httpx.post(f"{url}/invocations", json={"dataframe_records": [{}], "params": {"n": 99}}, timeout=60)
        assert 400 <= bad.status_code < 500 and "n must be between 1 and 8" in bad.text, bad.text
        junk = httpx.post(f"{url}/invocations", json={"dataframe_records": [{"primer_midi": b64(b"not midi at all")}]},
                          timeout=60)
        assert 400 <= junk.status_code < 500 and "only piano MIDI" in junk.text, junk.text
    finally:
        stop(server)


def test_the_logged_signature_carries_the_settings_as_params(registry: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry)
    tracking.setup()
    info = mlflow.models.get_model_info("models:/pianola@champion")
    params = {p.name: p.default for p in info.signature.params.params}
    assert params == GenerationRequest().settings()
    assert {c.name for c in info.signature.inputs.inputs} == {"primer_midi", "primer_tokens"}
    assert np.all([not c.required for c in info.signature.inputs.inputs])


def test_pianola_serve_runs_answers_and_shuts_down_with_its_log_written(bundle_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    command = [str(Path(sys.executable).parent / "pianola"), "serve", "--model", str(bundle_dir), "--port", str(port),
               "--store", str(tmp_path / "served"), "--max-length", "100"]
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(server, f"{url}/healthz", log, 120, "pianola serve")
        assert httpx.post(f"{url}/v1/generate", json={"length": 101}).status_code == 422  # --max-length
        answer = httpx.post(f"{url}/v1/generate", json={"length": 30}, timeout=60)
        assert answer.status_code == 200, answer.text
        server.send_signal(2)  # Ctrl-C
        assert server.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        stop(server)
    records = list(read_log(tmp_path / "served" / "inference.jsonl"))
    assert [p["id"] for r in records for p in r["pieces"]] == [answer.json()["pieces"][0]["id"]]
