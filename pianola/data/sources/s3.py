"""A source of MIDI files under an S3 prefix (any S3-compatible store): listed, then read object by object.

Client, endpoints and error messages come from pianola.storage, which also publishes outputs to a bucket.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from pianola.data.sources.base import Source, SourceItem, SourceReadError
from pianola.errors import SourceUnavailable
from pianola.midi import MIDI_SUFFIXES
from pianola.midi.validate import DEFAULT_MAX_BYTES
from pianola.storage import parse_s3_url, s3_client, storage_error


class S3Source(Source):
    """MIDI objects under an S3 prefix, in key order; each object is read only when ingest asks."""

    def __init__(self, url: str, *, max_bytes: int = DEFAULT_MAX_BYTES, client: Any = None):
        self.spec = url
        self.location = parse_s3_url(url)
        self.max_bytes = max_bytes
        self._client = client or s3_client()

    def items(self) -> Iterator[SourceItem]:
        bucket, prefix = self.location.bucket, self.location.prefix
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if key.lower().endswith(MIDI_SUFFIXES):  # folder markers and other files are not candidates
                        yield SourceItem(
                            name=key[len(prefix) :],
                            source=self.location.url(key),
                            read=partial(self._read, key),
                            size=obj["Size"],  # ingest refuses an oversize object before downloading it
                        )
        except (ClientError, BotoCoreError) as e:
            raise storage_error(e, self._client, bucket, f"listing {self.location.url()}") from e

    def _read(self, key: str) -> bytes:
        try:
            body = self._client.get_object(Bucket=self.location.bucket, Key=key)["Body"]
            # One byte past the cap tells an object that grew since it was listed, without loading all of it.
            with body:
                data = body.read(self.max_bytes + 1)
        except (ClientError, BotoCoreError) as e:
            if isinstance(e, ClientError) and e.response.get("Error", {}).get("Code") == "NoSuchKey":
                raise SourceReadError("unreadable: the object was deleted after it was listed") from e
            # Not this object's fault: the store is down or refuses us, and every object after it would fail too.
            raise SourceUnavailable(str(storage_error(e, self._client, self.location.bucket,
                                                      f"reading {self.location.url(key)}"))) from e
        if len(data) > self.max_bytes:
            raise SourceReadError(f"over the size cap: more than {self.max_bytes:,} bytes (grew after listing)")
        return data
