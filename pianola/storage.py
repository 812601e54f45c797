"""S3 and S3-compatible object storage: an S3 prefix as an ingest source, and `publish` for outputs.

Beside the first stage (s3://bucket/prefix -> SourceItems) and the last (generated batches, reports -> a bucket);
credentials, region and endpoint come from boto3's standard chain, plus PIANOLA_S3_ENDPOINT_URL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from pianola.errors import PianolaError

S3_SCHEME = "s3://"
ENDPOINT_ENV = "PIANOLA_S3_ENDPOINT_URL"
# boto3 reads these itself; pianola only needs to know one is set (see s3_client).
AWS_ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
MiB = 1024 * 1024
MIN_PART_BYTES = 5 * MiB  # S3 refuses smaller parts (all but the last) in a multipart upload
MULTIPART_THRESHOLD = 64 * MiB
# An unreachable endpoint must fail in seconds, not after botocore's default 60 s timeouts and 5 tries.
CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 30
MAX_ATTEMPTS = 2  # one retry rides out a blip; more only delay the answer for a server that is down
CREDENTIALS_HINT = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE and ~/.aws/credentials"
ENDPOINT_HINT = f"{ENDPOINT_ENV} or AWS_ENDPOINT_URL for an S3-compatible store; unset for AWS itself"


class StorageUnreachable(PianolaError):
    """The endpoint did not answer: worth retrying later, unlike a missing bucket or denied access."""


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix ("" or ending in "/") parsed from s3://bucket/prefix."""

    bucket: str
    prefix: str

    def url(self, key: str | None = None) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix if key is None else key}"


def parse_s3_url(url: str) -> S3Location:
    """s3://bucket/some/prefix -> S3Location("bucket", "some/prefix/"); the prefix is a folder, never a name stem."""
    if not url.lower().startswith(S3_SCHEME):
        raise PianolaError(f"{url!r} is not an S3 URL; use s3://BUCKET/PREFIX")
    bucket, _, prefix = url[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise PianolaError(f"{url!r} names no bucket; use s3://BUCKET/PREFIX")
    prefix = prefix.strip("/")
    return S3Location(bucket, prefix + "/" if prefix else "")


def s3_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client: `endpoint_url`, else $PIANOLA_S3_ENDPOINT_URL, else boto3's own resolution."""
    endpoint = endpoint_url or os.environ.get(ENDPOINT_ENV) or None
    custom = endpoint or any(os.environ.get(name) for name in AWS_ENDPOINT_ENVS)
    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        # Virtual-host addressing (bucket.host) needs DNS for every bucket, which self-hosted stores lack.
        s3={"addressing_style": "path"} if custom else None,
    )
    try:
        return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
    except (BotoCoreError, ValueError) as e:  # a missing profile, a malformed endpoint URL
        raise PianolaError(f"cannot set up the S3 client: {e}; check AWS_PROFILE and {ENDPOINT_HINT}") from e


def storage_error(
    error: Exception, client: Any, bucket: str, doing: str, *, bucket_request: bool = False
) -> PianolaError:
    """A PianolaError that says what failed against which bucket and endpoint, and what to check.

    `bucket_request`: a 404 answers a request about the bucket itself (a HEAD, which has no error code).
    """
    endpoint = client.meta.endpoint_url
    where = f"S3 bucket {bucket!r} at {endpoint}"
    if isinstance(error, S3UploadFailedError) and isinstance(error.__context__, ClientError):
        error = error.__context__  # boto3 flattens the upload's ClientError into text
    if isinstance(error, ReadTimeoutError):
        return StorageUnreachable(
            f"the S3 endpoint {endpoint} did not answer within {READ_TIMEOUT_S} s ({doing}, bucket {bucket!r}); "
            "check the server's load and the network, then try again"
        )
    if isinstance(error, (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError)):
        return StorageUnreachable(
            f"cannot reach the S3 endpoint {endpoint} ({doing}, bucket {bucket!r}): {error}; "
            f"check that the server is running and the endpoint URL ({ENDPOINT_HINT})"
        )
    if isinstance(error, NoCredentialsError):
        return PianolaError(f"no AWS credentials for {where} ({doing}); set {CREDENTIALS_HINT}")
    if not isinstance(error, ClientError):
        return PianolaError(f"{doing} failed at {where}: {error}")
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    message = error.response.get("Error", {}).get("Message", "")
    if code == "NoSuchBucket" or (bucket_request and code in ("404", "NotFound")):
        return PianolaError(
            f"{where} does not exist ({doing}); check the bucket name, or create it "
            f"(aws s3 mb {S3_SCHEME}{bucket}, with --endpoint-url {endpoint} for an S3-compatible store)"
        )
    if code == "InvalidAccessKeyId":
        return PianolaError(f"{where} does not know the access key id ({doing}); check {CREDENTIALS_HINT}")
    if code == "SignatureDoesNotMatch":
        return PianolaError(
            f"{where} rejected the request signature ({doing}): the secret access key does not match "
            f"the access key id; check {CREDENTIALS_HINT}"
        )
    if code in ("AccessDenied", "AllAccessDisabled", "403", "Forbidden") or status == 403:
        return PianolaError(
            f"access denied to {where} ({doing}, {code}); check the credentials ({CREDENTIALS_HINT}) "
            "and that the bucket's policy lets them do this"
        )
    return PianolaError(f"{doing} failed at {where}: {code} {message}".rstrip())


def publish(
    local_dir: str | Path,
    url: str,
    *,
    multipart_threshold: int = MULTIPART_THRESHOLD,
    client: Any = None,
) -> list[str]:
    """Upload every file under `local_dir` to the S3 prefix `url`, keeping relative paths; the object URLs.

    Files from `multipart_threshold` bytes up go as multipart uploads (parts uploaded in parallel, each retried alone).
    """
    root = Path(local_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    if not files:
        raise PianolaError(f"nothing to publish: {root} is not a folder holding files")
    location = parse_s3_url(url)
    client = client or s3_client()
    transfer = TransferConfig(
        multipart_threshold=multipart_threshold,
        multipart_chunksize=max(multipart_threshold, MIN_PART_BYTES),
    )
    try:
        # Upload errors arrive flattened to text; a HEAD first gives a clear answer for the common failures.
        client.head_bucket(Bucket=location.bucket)
    except (ClientError, BotoCoreError) as e:
        raise storage_error(e, client, location.bucket, f"publishing {root}", bucket_request=True) from e
    urls = []
    for path in files:
        key = location.prefix + path.relative_to(root).as_posix()
        try:
            client.upload_file(str(path), location.bucket, key, Config=transfer)
        except (ClientError, BotoCoreError, S3UploadFailedError) as e:
            raise storage_error(e, client, location.bucket, f"uploading {path} to {location.url(key)}") from e
        urls.append(location.url(key))
    return urls
