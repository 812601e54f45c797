"""S3 storage against a real S3-compatible server (SeaweedFS on 127.0.0.1): ingest from a prefix, publish,
the errors a user meets, a DVC remote on a bucket (a server crash mid-push included) and MLflow's S3 artifacts.
"""

from __future__ import annotations

import filecmp
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import make_midi, scale_notes, wait_until_up
from fixtures_s3 import (  # noqa: F401 - fixtures, found by pytest among the module's names
    ACCESS_KEY,
    SECRET_KEY,
    STRANGER_KEY,
    STRANGER_SECRET,
    SeaweedFS,
    free_ports,
    s3_bucket,
    s3_env,
    s3_server,
)
from pianola.data.ingest import ingest
from pianola.data.sources import open_source
from pianola.data.sources.s3 import S3Source
from pianola.errors import PianolaError, SourceUnavailable
from pianola.storage import MiB, StorageUnreachable, publish, s3_client

BIN = Path(sys.executable).parent
MLFLOW_START_S = 120


def put(server: SeaweedFS, bucket: str, objects: dict[str, bytes]) -> None:
    client = server.client()
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)


def midi_bytes(tmp_path: Path, pitch: int) -> bytes:
    return make_midi(tmp_path / "made" / f"{pitch}.mid", scale_notes(12, start_pitch=pitch)).read_bytes()


def test_ingest_from_a_prefix_keeps_valid_objects_and_rejects_invalid_ones_unread(s3_env, s3_bucket, tmp_path) -> None:
    put(s3_env, s3_bucket, {
        "midi/chopin/etude.mid": midi_bytes(tmp_path, 60),
        "midi/bach/prelude.MID": midi_bytes(tmp_path, 48),
        "midi/error.mid": b"<!DOCTYPE html><html>NoSuchKey</html>",
        "midi/huge.mid": b"MThd" + bytes(30_000),
        "midi/notes.txt": b"not a candidate",
        "midis/outside.mid": midi_bytes(tmp_path, 50),  # shares the prefix's letters, not its folder
    })  # fmt: skip
    assert isinstance(open_source(f"s3://{s3_bucket}/midi"), S3Source)
    client = s3_client()  # the endpoint comes from PIANOLA_S3_ENDPOINT_URL
    downloaded: list[str] = []
    client.meta.events.register("provide-client-params.s3.GetObject", lambda params, **_: downloaded.append(params["Key"]))

    report = ingest(S3Source(f"s3://{s3_bucket}/midi", client=client), tmp_path / "out", max_bytes=20_000, progress=False)

    entries = {e["source"]: e for e in report.entries}
    url = f"s3://{s3_bucket}/midi/"
    assert list(entries) == [url + k for k in ("bach/prelude.MID", "chopin/etude.mid", "error.mid", "huge.mid")]
    assert [entries[url + k]["name"] for k in ("bach/prelude.MID", "chopin/etude.mid")] == ["bach_prelude.mid", "chopin_etude.mid"]
    assert entries[url + "error.mid"]["reason"] == "looks like HTML, not MIDI"
    assert entries[url + "huge.mid"]["reason"] == "over the size cap: 30,004 bytes > 20,000"
    assert "midi/huge.mid" not in downloaded  # refused on its listed size, never fetched
    assert (tmp_path / "out" / "chopin_etude.mid").read_bytes() == midi_bytes(tmp_path, 60)


def test_a_store_that_dies_during_ingest_stops_it_clearly_and_keeps_the_files_fetched(tmp_path, monkeypatch) -> None:
    server = SeaweedFS(tmp_path / "seaweedfs")
    server.start()
    try:
        bucket = server.create_bucket()
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # a dead endpoint fails at once, not after minutes of retries
        put(server, bucket, {f"midi/p{pitch}.mid": midi_bytes(tmp_path, pitch) for pitch in range(50, 56)})
        client = s3_client(server.endpoint)
        deadline = time.monotonic() + 30
        for pitch in range(50, 56):  # a new SeaweedFS may answer its first reads with InternalError: wait them out
            while True:
                try:
                    client.get_object(Bucket=bucket, Key=f"midi/p{pitch}.mid")["Body"].read()
                    break
                except Exception:  # noqa: BLE001 - retried until the deadline
                    assert time.monotonic() < deadline, "the objects never became readable"
                    time.sleep(0.2)
        fetched: list[str] = []

        def crash_after_two(params, **_) -> None:
            fetched.append(params["Key"])
            if len(fetched) == 3:
                server.stop(kill=True)

        client.meta.events.register("provide-client-params.s3.GetObject", crash_after_two)
        out = tmp_path / "out"
        with pytest.raises(SourceUnavailable) as failure:
            ingest(S3Source(f"s3://{bucket}/midi", client=client), out, progress=False)
        message = str(failure.value)
        assert "Could not connect to the endpoint URL" in message or "cannot be reached" in message, message
        assert "ingest stopped after 2 file(s), which stay in" in message
        assert sorted(p.name for p in out.glob("*.mid")) == ["p50.mid", "p51.mid"]
        assert not (out / "manifest.json").exists()  # no manifest claims a complete corpus

        server.start()  # back: the rerun completes and keeps the two files as they were
        kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mid")}
        report = ingest(S3Source(f"s3://{bucket}/midi", client=s3_client(server.endpoint)), out, progress=False)
        assert report.ok == 6 and report.unchanged == 2
        assert all((out / name).stat().st_mtime_ns == mtime for name, mtime in kept.items())
    finally:
        server.stop()


def test_publish_uploads_a_folder_and_sends_large_files_as_multipart(s3_env, s3_bucket, tmp_path) -> None:
    batch = tmp_path / "batch"
    (batch / "report").mkdir(parents=True)
    (batch / "piece-1.mid").write_bytes(midi_bytes(tmp_path, 60))
    (batch / "report" / "metrics.json").write_text('{"repetition": 0.1}')
    (batch / "audio.wav").write_bytes(os.urandom(6 * MiB))

    urls = publish(batch, f"s3://{s3_bucket}/runs/7/", multipart_threshold=5 * MiB)

    assert urls == [f"s3://{s3_bucket}/runs/7/{k}" for k in ("audio.wav", "piece-1.mid", "report/metrics.json")]
    client = s3_env.client()
    for path in (batch / "audio.wav", batch / "piece-1.mid", batch / "report" / "metrics.json"):
        key = "runs/7/" + path.relative_to(batch).as_posix()
        assert client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == path.read_bytes()
    # S3 marks a multipart object's ETag with its part count: 6 MiB in 5 MiB parts is 2.
    assert client.head_object(Bucket=s3_bucket, Key="runs/7/audio.wav")["ETag"].endswith('-2"')
    assert "-" not in client.head_object(Bucket=s3_bucket, Key="runs/7/piece-1.mid")["ETag"]


def test_missing_bucket_denied_access_and_unreachable_endpoint_are_clear_errors(s3_env, s3_bucket, tmp_path, monkeypatch) -> None:
    put(s3_env, s3_bucket, {"midi/a.mid": midi_bytes(tmp_path, 60)})
    (tmp_path / "batch").mkdir()
    (tmp_path / "batch" / "a.txt").write_text("a")
    endpoint = s3_env.endpoint

    def ingest_error() -> str:
        with pytest.raises(PianolaError) as caught:
            ingest(f"s3://{s3_bucket}/midi", tmp_path / "out", progress=False)
        return str(caught.value)

    def publish_error(bucket: str = s3_bucket) -> str:
        with pytest.raises(PianolaError) as caught:
            publish(tmp_path / "batch", f"s3://{bucket}/out")
        return str(caught.value)

    with pytest.raises(PianolaError, match=f"S3 bucket 'no-such-bucket-here' at {endpoint} does not exist"):
        list(open_source("s3://no-such-bucket-here/midi").items())
    assert f"S3 bucket 'no-such-bucket-here' at {endpoint} does not exist" in publish_error("no-such-bucket-here")

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert f"no AWS credentials for S3 bucket {s3_bucket!r} at {endpoint}" in ingest_error()

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    assert "the secret access key does not match the access key id; check AWS_ACCESS_KEY_ID" in ingest_error()
    assert f"access denied to S3 bucket {s3_bucket!r} at {endpoint} (publishing" in publish_error()

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    assert f"S3 bucket {s3_bucket!r} at {endpoint} does not know the access key id" in ingest_error()

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", STRANGER_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", STRANGER_SECRET)
    assert f"access denied to S3 bucket {s3_bucket!r} at {endpoint} (listing s3://{s3_bucket}/midi/, AccessDenied)" in ingest_error()

    (closed,) = free_ports(1)
    monkeypatch.setenv("PIANOLA_S3_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    started = time.monotonic()
    assert f"cannot reach the S3 endpoint http://127.0.0.1:{closed} (listing" in ingest_error()
    with pytest.raises(StorageUnreachable, match=rf"cannot reach the S3 endpoint http://127.0.0.1:{closed} \(publishing"):
        publish(tmp_path / "batch", f"s3://{s3_bucket}/out")  # a subclass: a caller may retry this one later
    assert time.monotonic() - started < 15  # short timeouts and few retries, not minutes


def tool_env(tmp_path: Path, server: SeaweedFS, **extra: str) -> dict[str, str]:
    """The environment of dvc/git/mlflow subprocesses: no usage reports, no update checks, no user config."""
    config_dir = tmp_path / "dvc-global"
    config_dir.mkdir(exist_ok=True)
    (config_dir / "config").write_text("[core]\n    analytics = false\n    check_update = false\n")
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PIANOLA_S3", "MLFLOW_"))},
        **server.env(),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "DVC_GLOBAL_CONFIG_DIR": str(config_dir),
        "DVC_SYSTEM_CONFIG_DIR": str(config_dir),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.org",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.org",
        **extra,
    }  # fmt: skip


def run(args: list[str], cwd: Path, env: dict[str, str], *, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if ok:
        assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def dvc_repo(repo: Path, data: dict[str, bytes], env: dict[str, str]) -> None:
    """A git + DVC repository whose data/ folder is tracked by DVC and committed."""
    repo.mkdir()
    for name, body in data.items():
        (repo / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / "data" / name).write_bytes(body)
    run(["git", "init", "-q"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
    run(["dvc", "add", "-q", "data"], repo, env)


def commit_and_clone(repo: Path, clone: Path, env: dict[str, str]) -> None:
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "data"], repo, env)
    run(["git", "clone", "-q", str(repo), str(clone)], clone.parent, env)
    assert not (clone / "data").exists() and not (clone / ".dvc" / "config.local").exists()


def same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


def test_dvc_remote_on_a_bucket_push_then_pull_into_a_fresh_clone(s3_server, s3_bucket, tmp_path) -> None:
    env = tool_env(tmp_path, s3_server)
    repo = tmp_path / "repo"
    dvc_repo(repo, {"raw/a.mid": midi_bytes(tmp_path, 60), "raw/b.mid": midi_bytes(tmp_path, 62), "notes.bin": os.urandom(70_000)}, env)
    # The commands docs/storage.md gives; the credentials go to .dvc/config.local, which git ignores.
    plain = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    run(["dvc", "remote", "add", "-d", "s3", f"s3://{s3_bucket}/dvcstore"], repo, plain)
    run(["dvc", "remote", "modify", "s3", "endpointurl", s3_server.endpoint], repo, plain)
    run(["dvc", "remote", "modify", "--local", "s3", "access_key_id", ACCESS_KEY], repo, plain)
    run(["dvc", "remote", "modify", "--local", "s3", "secret_access_key", SECRET_KEY], repo, plain)
    assert SECRET_KEY not in (repo / ".dvc" / "config").read_text()
    assert "pushed" in run(["dvc", "push"], repo, plain).stdout
    assert any(k.startswith("dvcstore/files/md5/") for k in s3_server.keys(s3_bucket))

    clone = tmp_path / "clone"
    commit_and_clone(repo, clone, env)
    run(["dvc", "pull"], clone, env)  # the other documented way: credentials from the environment
    assert same_tree(repo / "data", clone / "data")


def drop(sock: socket.socket) -> None:
    """Close a socket another thread may be blocked on: close() alone neither wakes that thread nor tells the peer."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class CrashingProxy:
    """A TCP forwarder to the server's S3 port that, with `crash_at`, kills the server as that PUT request arrives.

    The request that triggers the crash is never passed on, and the forwarder stops listening with the server, so
    the client meets a dead endpoint part-way through its uploads however fast the machine is. (Watching the bucket
    from outside and killing the server "soon" raced: on a fast run the whole push had landed before the kill.)
    """

    def __init__(self, server: SeaweedFS, port: int = 0, crash_at: int | None = None):
        self.server, self.crash_at, self.puts = server, crash_at, 0
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", port))  # SO_REUSEADDR: a later proxy may take the port
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        for sock in [self.listener, *self.sockets]:
            drop(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.server.ports["s3.port"]))
            except OSError:
                return
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if requests and self._crashes(chunk.count(b"PUT /")):
                    return
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            drop(source)
            drop(sink)

    def _crashes(self, puts: int) -> bool:
        with self.lock:
            self.puts += puts
            if self.crash_at is None or self.puts < self.crash_at:
                return False
            self.crash_at = None
        self.server.stop(kill=True)
        self.close()
        return True


def test_dvc_push_cut_by_a_server_crash_fails_clearly_and_the_retry_loses_nothing(tmp_path) -> None:
    server = SeaweedFS(tmp_path / "seaweedfs")
    server.start()
    proxy = CrashingProxy(server, crash_at=21)  # the server dies as the 21st upload of 201 (200 files, 1 listing) arrives
    try:
        bucket = server.create_bucket()
        # One try per request: a dead endpoint fails each file at once instead of after minutes of retries.
        env = tool_env(tmp_path, server, AWS_MAX_ATTEMPTS="1", AWS_RETRY_MODE="standard")
        repo = tmp_path / "repo"
        dvc_repo(repo, {f"part{i // 50}/f{i}.bin": os.urandom(4096) for i in range(200)}, env)
        (repo / ".dvc" / "config").write_text(
            f"[core]\n    remote = s3\n['remote \"s3\"']\n    url = s3://{bucket}/dvcstore\n    endpointurl = {proxy.endpoint}\n"
        )

        push = subprocess.run(["dvc", "push"], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        output = push.stdout + push.stderr
        assert push.returncode != 0, output
        assert "failed to push data to the cloud" in output, output
        assert f"Could not connect to the endpoint URL: \"{proxy.endpoint}/{bucket}/dvcstore/" in output, output

        server.start()  # same data folder, same ports
        assert 0 < len(server.keys(bucket)) < 200  # the crash cut the push part-way (uploads in flight died with it)
        proxy = CrashingProxy(server, port=proxy.port)  # the endpoint is back, nothing in the way
        assert "pushed" in run(["dvc", "push"], repo, env).stdout
        clone = tmp_path / "clone"
        commit_and_clone(repo, clone, env)
        run(["dvc", "pull"], clone, env)
        assert same_tree(repo / "data", clone / "data")
    finally:
        proxy.close()
        server.stop()


def test_mlflow_server_keeps_run_artifacts_in_the_bucket(s3_server, s3_bucket, tmp_path, monkeypatch) -> None:
    (port,) = free_ports(1)
    env = tool_env(
        tmp_path, s3_server, MLFLOW_S3_ENDPOINT_URL=s3_server.endpoint,
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # its job workers would double the start-up time
    )  # fmt: skip
    command = [
        str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--artifacts-destination", f"s3://{s3_bucket}/mlflow", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = tmp_path / "mlflow.log"
    with open(log, "w") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import (
            MlflowClient,  # imported while the server starts: both take seconds
        )

        wait_until_up(server, f"{url}/health", log, MLFLOW_START_S, "mlflow server")

        client = MlflowClient(tracking_uri=url)
        run_id = client.create_run("0").info.run_id
        client.log_text(run_id, "a generated batch", "batches/notes.txt")
        client.set_terminated(run_id)

        key = f"mlflow/0/{run_id}/artifacts/batches/notes.txt"
        assert key in s3_server.keys(s3_bucket, "mlflow/")
        assert s3_server.client().get_object(Bucket=s3_bucket, Key=key)["Body"].read() == b"a generated batch"
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # `mlflow server` runs uvicorn as a child: stop the group
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
