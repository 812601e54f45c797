"""Where ingest gets MIDI files from: `open_source(spec)` picks the kind of source a spec names.

First stage of the flow (sources -> data/raw). Each kind is a module beside this one: `local` (a folder, the
music21 corpus), `web` (an index page to crawl), `s3` (a bucket prefix); all build on `base`.
"""

from __future__ import annotations

from pathlib import Path

from pianola.data.sources.base import Source
from pianola.data.sources.local import MUSIC21_PREFIX, FolderSource, Music21Source
from pianola.data.sources.s3 import S3Source
from pianola.data.sources.web import WebSource
from pianola.errors import PianolaError
from pianola.midi.validate import DEFAULT_MAX_BYTES

DEFAULT_SOURCE = "music21:bach"
ACCEPTED_FORMS = (
    "a local folder of .mid/.midi files, music21:COMPOSER[,COMPOSER...] "
    f"(works bundled with music21, e.g. {DEFAULT_SOURCE}), an index page to crawl (https://...) "
    "or an S3 prefix (s3://BUCKET/PREFIX)"
)


def open_source(spec: str, *, out_dir: Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> Source:
    """The Source for `spec`: `music21:COMPOSER[,COMPOSER...]`, a local folder, http(s)://INDEX or s3://BUCKET/PREFIX.

    `out_dir` (ingest's output folder) lets a web crawl resume; `max_bytes` is where it cuts a download.
    """
    lowered = spec.lower()
    if lowered.startswith(("http://", "https://")):
        return WebSource(spec, out_dir=out_dir, max_bytes=max_bytes)
    if lowered.startswith("s3://"):
        return S3Source(spec, max_bytes=max_bytes)
    if lowered.startswith(MUSIC21_PREFIX):
        composers = [c.strip() for c in spec[len(MUSIC21_PREFIX) :].split(",") if c.strip()]
        if not composers:
            raise PianolaError(f"source {spec!r} names no composer; use e.g. {DEFAULT_SOURCE}")
        return Music21Source(composers)
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path)
    if path.exists():
        raise PianolaError(f"source {spec!r} is a file, not a folder; put it in a folder and give that folder")
    raise PianolaError(f"source {spec!r} is neither an existing folder nor a known source; use {ACCEPTED_FORMS}")
