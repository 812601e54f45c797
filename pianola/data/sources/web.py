"""The web as an ingest source: crawl an index page's composer pages (piano-midi.de style) for .mid links.

First stage of the flow (a site -> SourceItems -> ingest validates, dedupes and writes); polite, resumable,
and never trusting the server: every hostile answer becomes a rejected item with its reason.
"""

from __future__ import annotations

import email.message
import hashlib
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from html.parser import HTMLParser
from itertools import islice
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlsplit
from urllib.robotparser import RobotFileParser

import httpx

from pianola.data.sources.base import MIDI_SUFFIXES, Source, SourceItem
from pianola.errors import PianolaError
from pianola.io import atomic_write_json
from pianola.midi.validate import DEFAULT_MAX_BYTES

CACHE_FILE = ".scrape-cache.json"  # in the output folder: validators for conditional requests
MANIFEST = "manifest.json"  # ingest's, read to find the files a previous run already has
DEFAULT_DELAY_S = 0.5  # between the starts of two requests to the site
DEFAULT_CONCURRENCY = 2
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 1.0  # first retry after this, then doubling
DEFAULT_TIMEOUT_S = 20.0
DEFAULT_LICENSE = "unknown: the index page states no license; check the site's terms before use"
USER_AGENT = "pianola-ingest/0.1 (honours robots.txt)"
MAX_PAGE_BYTES = 2_000_000
MAX_ROBOTS_BYTES = 500_000
MAX_REDIRECTS = 5
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
DEFAULT_PORTS = {"http": 80, "https": 443}
PAGE_SUFFIXES = ("", ".htm", ".html", ".shtml", ".php", ".asp", ".aspx")
LICENSE_WORDS = ("license", "licence", "lizenz", "copyright")
CC_LICENSE_URL = re.compile(r"creativecommons\.org/licenses/([a-z-]+)/(\d+(?:\.\d+)?)(?:/([a-z]{2}))?", re.I)
# "CC BY-SA 3.0 DE", "cc-by-sa Germany": how sites name a Creative Commons license in prose.
CC_LICENSE_TEXT = re.compile(
    r"\bCC[ -]BY(?:[ -](?:SA|NC|ND))*(?:[ -]\d\.\d)?(?:[ -](?:Germany|Deutschland|DE))?\b", re.IGNORECASE
)


class FetchError(Exception):
    """A response (or its absence) that gives no usable body; the message is the rejection reason."""

    def __init__(self, reason: str, status: int | None = None):
        super().__init__(reason)
        self.status = status


class _Retryable(FetchError):
    """A failure worth another try after a pause: 5xx, 429, a timeout, a dropped connection."""


@dataclass(frozen=True)
class Fetched:
    status: int  # 200, or 304 for a conditional request
    url: str  # after same-site redirects
    body: bytes
    headers: httpx.Headers


@dataclass(frozen=True)
class Link:
    """A MIDI link found by the crawl; `reason` rejects it before any request."""

    url: str
    name: str  # the file name the URL ends with, percent-decoded
    composer: str | None
    reason: str | None = None


@dataclass(frozen=True)
class _Copy:
    """A file a previous run wrote for this URL, per its manifest."""

    name: str
    path: Path
    sha256: str

    def read(self) -> bytes | None:
        """The file's bytes while they still match the manifest; None once changed or gone."""
        try:
            data = self.path.read_bytes()
        except OSError:
            return None
        return data if hashlib.sha256(data).hexdigest() == self.sha256 else None


class _Pacer:
    """Spaces the starts of requests `gap` seconds apart across threads."""

    def __init__(self, gap: float):
        self.gap = gap
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.gap
        time.sleep(start - now)


class PoliteClient:
    """GETs to one site: robots.txt obeyed, requests spaced, retries with backoff, same-site redirects only,
    bodies streamed and cut at a size cap. Safe to share between threads."""

    def __init__(
        self,
        start_url: str,
        *,
        delay: float = DEFAULT_DELAY_S,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF_S,
        timeout: float = DEFAULT_TIMEOUT_S,
        user_agent: str = USER_AGENT,
    ):
        self.start_url = start_url
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.user_agent = user_agent
        self._pacer = _Pacer(delay)
        # identity: a compressed body would slip past the size cap, which counts the bytes on the wire.
        headers = {"User-Agent": user_agent, "Accept-Encoding": "identity"}
        self._http = httpx.Client(headers=headers, timeout=timeout, follow_redirects=False)
        self._robots = RobotFileParser()
        self._robots.allow_all = True  # until robots.txt is read

    def __enter__(self) -> PoliteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def read_robots(self) -> None:
        """Fetch the site's robots.txt; Crawl-delay, when longer, replaces the configured delay."""
        url = urljoin(self.start_url, "/robots.txt")
        robots = RobotFileParser(url)
        try:
            body = self.get(url, max_bytes=MAX_ROBOTS_BYTES, check_robots=False).body
            robots.parse(body.decode("utf-8", errors="replace").splitlines())
        except FetchError as e:
            # The same reading as urllib.robotparser: 401/403 forbid everything, another 4xx means no rules.
            if e.status in (401, 403):
                robots.disallow_all = True
            elif e.status is not None and 400 <= e.status < 500:
                robots.allow_all = True
            else:
                raise PianolaError(
                    f"cannot read {url}: {e}; the crawl needs it to know what it may fetch. "
                    "Check the URL and that the site is up, then try again"
                ) from e
        self._robots = robots
        crawl_delay = robots.crawl_delay(self.user_agent)
        if crawl_delay is not None:
            self._pacer.gap = max(self._pacer.gap, float(crawl_delay))

    def allowed(self, url: str) -> bool:
        return self._robots.can_fetch(self.user_agent, url)

    def get(
        self, url: str, *, max_bytes: int, headers: dict[str, str] | None = None, check_robots: bool = True
    ) -> Fetched:
        """The body at `url` (or a 304), retrying transient failures; raises FetchError with the reason."""
        for attempt in range(self.retries + 1):
            try:
                return self._get(url, max_bytes, headers or {}, check_robots)
            except _Retryable as e:
                if attempt == self.retries:
                    raise FetchError(f"{e} (gave up after {attempt + 1} tries)", e.status) from e
                time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable: the loop returns or raises")

    def _get(self, url: str, max_bytes: int, headers: dict[str, str], check_robots: bool) -> Fetched:
        for _ in range(MAX_REDIRECTS + 1):
            if check_robots and not self.allowed(url):
                raise FetchError(f"disallowed by robots.txt: {url}")
            self._pacer.wait()
            try:
                with self._http.stream("GET", url, headers=headers) as response:
                    status = response.status_code
                    if status in REDIRECT_STATUSES and "location" in response.headers:
                        target = urldefrag(urljoin(url, response.headers["location"])).url
                        if not same_site(target, self.start_url):
                            raise FetchError(f"redirected to another host: {target}", status)
                        url = target
                        continue
                    if status in RETRY_STATUSES:
                        raise _Retryable(f"HTTP {status} {response.reason_phrase}", status)
                    if status == 304:
                        return Fetched(status, url, b"", response.headers)
                    if status != 200:
                        raise FetchError(f"HTTP {status} {response.reason_phrase}", status)
                    body = _read_capped(response, max_bytes, self.timeout)
                    return Fetched(status, url, body, response.headers)
            except httpx.TimeoutException as e:
                raise _Retryable(f"timed out: {type(e).__name__}") from e
            except httpx.TransportError as e:
                raise _Retryable(f"connection failed: {type(e).__name__}: {e}") from e
        raise FetchError(f"more than {MAX_REDIRECTS} redirects")


def _read_capped(response: httpx.Response, max_bytes: int, timeout: float) -> bytes:
    """The body, streamed; refused once it passes `max_bytes` or trickles in for too long."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(f"over the size cap: the server announces {int(declared):,} bytes > {max_bytes:,}")
    # A read timeout bounds each chunk's wait; this bounds a body dripped one byte at a time.
    deadline = time.monotonic() + 10 * timeout
    chunks, size = [], 0
    for chunk in response.iter_raw():
        size += len(chunk)
        if size > max_bytes:
            raise FetchError(f"over the size cap: more than {max_bytes:,} bytes (download stopped there)")
        if time.monotonic() > deadline:
            raise _Retryable(f"too slow: {size:,} bytes in {10 * timeout:.0f} s")
        chunks.append(chunk)
    return b"".join(chunks)


class WebSource(Source):
    """MIDI files linked from the pages an index page links to (index -> composer pages -> .mid), on one site.

    With `out_dir`, a re-run resumes: a file the previous manifest lists with the same sha256 is asked for with
    its ETag / Last-Modified (a 304 costs no download) or, when the server gave neither, not asked for at all.
    """

    def __init__(
        self,
        url: str,
        *,
        out_dir: Path | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        delay: float = DEFAULT_DELAY_S,
        concurrency: int = DEFAULT_CONCURRENCY,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF_S,
        timeout: float = DEFAULT_TIMEOUT_S,
        default_license: str = DEFAULT_LICENSE,
    ):
        parts = urlsplit(url)
        if parts.scheme.lower() not in DEFAULT_PORTS or not parts.hostname:
            raise PianolaError(
                f"source {url!r} is not an http(s) URL of an index page, e.g. https://www.piano-midi.de/midi_files.htm"
            )
        self.spec = url
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.max_bytes = max_bytes
        self.concurrency = max(1, concurrency)
        self.default_license = default_license
        self._client_options = {"delay": delay, "retries": retries, "backoff": backoff, "timeout": timeout}

    def items(self) -> Iterator[SourceItem]:
        with PoliteClient(self.spec, **self._client_options) as client:
            client.read_robots()
            links, license = self._crawl(client)
            copies = self._previous_copies()
            cache = self._read_cache()
            fresh: dict[str, dict[str, str]] = {}
            pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="pianola-scrape")
            pending: deque[Future] = deque()
            todo = iter(links)

            def submit(count: int) -> None:
                for link in islice(todo, count):
                    copy, validators = copies.get(link.url), cache.get(link.url)
                    pending.append(pool.submit(self._fetch, client, link, license, copy, validators))

            try:
                # A short look-ahead keeps `concurrency` downloads busy while ingest validates and writes.
                submit(2 * self.concurrency)
                while pending:
                    item, validators = pending.popleft().result()
                    submit(1)
                    if validators:
                        fresh[item.source] = validators
                    yield item
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
                # Only after ingest wrote something: a run that rejected everything leaves the folder alone.
                if self.out_dir is not None and self.out_dir.is_dir():
                    atomic_write_json(self.out_dir / CACHE_FILE, fresh)

    def _crawl(self, client: PoliteClient) -> tuple[list[Link], str]:
        """Every MIDI link of the index and of the pages it links to, in page order, and the site's license."""
        if not client.allowed(self.spec):
            host = urlsplit(self.spec).hostname
            raise PianolaError(f"robots.txt of {host} disallows {self.spec}; pianola will not crawl it")
        try:
            index = client.get(self.spec, max_bytes=MAX_PAGE_BYTES)
        except FetchError as e:
            raise PianolaError(
                f"cannot fetch the index page {self.spec}: {e}; check the URL and that the site is up"
            ) from e
        fetched: dict[str, Fetched | FetchError] = {index.url: index}

        def fetch_page(url: str) -> Fetched:
            """Each page once, though the license search and the crawl may both want it."""
            if url not in fetched:
                try:
                    fetched[url] = client.get(url, max_bytes=MAX_PAGE_BYTES)
                except FetchError as e:
                    fetched[url] = e
            if isinstance(found := fetched[url], FetchError):
                raise found
            return found

        anchors, text = parse_page(index.body, index.headers)
        license = self._license(client, fetch_page, index.url, anchors, text)
        links: dict[str, Link] = {}
        pages: dict[str, str] = {}  # composer page URL -> its link text, in index order
        for href, label in anchors:
            url, reason = resolve_link(index.url, href)
            if url is None:
                continue
            if _is_midi_url(url):
                links.setdefault(url, self._link(client, url, None, reason))
            elif reason is None and _is_page_url(url) and same_site(url, self.spec) and client.allowed(url):
                pages.setdefault(url, label)
        pages.pop(index.url, None)
        for page_url, label in pages.items():
            composer = label or _stem(page_url)
            try:
                page = fetch_page(page_url)
            except FetchError as e:
                # Listed, so that the manifest shows which files may be missing and why; the run goes on.
                links[page_url] = Link(page_url, _stem(page_url), composer, f"composer page not read: {e}")
                continue
            for href, _ in parse_page(page.body, page.headers)[0]:
                url, reason = resolve_link(page.url, href)
                if url is not None and _is_midi_url(url):
                    links.setdefault(url, self._link(client, url, composer, reason))
        return list(links.values()), license

    def _link(self, client: PoliteClient, url: str, composer: str | None, reason: str | None) -> Link:
        """A MIDI link, with the reason it will not be fetched where there is one."""
        name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
        if reason is None and not same_site(url, self.spec):
            reason = f"on another host (not followed): {url}"
        elif reason is None and not client.allowed(url):
            reason = "disallowed by robots.txt"
        return Link(url, name, composer, reason or unsafe_name_reason(name, "URL"))

    def _license(
        self,
        client: PoliteClient,
        fetch_page: Callable[[str], Fetched],
        index_url: str,
        anchors: list[tuple[str, str]],
        text: str,
    ) -> str:
        """A Creative Commons link on the index or its license/copyright page, a CC name in its text, or the default."""
        for href, _ in anchors:
            if license := _cc_license(href):
                return f"{license} (stated on {index_url})"
        for href, label in anchors:
            url, reason = resolve_link(index_url, href)
            words = f"{href} {label}".lower()
            if url is None or reason or not any(w in words for w in LICENSE_WORDS):
                continue
            if not same_site(url, self.spec) or not client.allowed(url):
                return f"see {url} ({label or 'license'})"
            try:
                page = fetch_page(url)
            except FetchError:
                return f"see {url} ({label or 'license'})"
            page_anchors, page_text = parse_page(page.body, page.headers)
            for page_href, _ in page_anchors:
                if license := _cc_license(page_href):
                    return f"{license} (stated on {url})"
            if found := CC_LICENSE_TEXT.search(page_text):
                return f"{found.group(0)} (stated on {url})"
            return f"see {url} ({label or 'license'})"
        if found := CC_LICENSE_TEXT.search(text):
            return f"{found.group(0)} (stated on {index_url})"
        return self.default_license

    def _fetch(
        self, client: PoliteClient, link: Link, license: str, copy: _Copy | None, validators: dict[str, str] | None
    ) -> tuple[SourceItem, dict[str, str] | None]:
        """One MIDI link -> its item (bytes in memory, or a rejection) and the validators to remember."""
        if link.reason:
            return SourceItem.reject(link.name, link.url, link.reason), None
        local = copy.read() if copy else None
        headers: dict[str, str] = {}
        if copy is not None and local is not None:
            if not validators:
                return self._item(copy.name, link, license, local), None  # resume: nothing to ask the server with
            if "etag" in validators:
                headers["If-None-Match"] = validators["etag"]
            if "last_modified" in validators:
                headers["If-Modified-Since"] = validators["last_modified"]
        try:
            got = client.get(link.url, max_bytes=self.max_bytes, headers=headers)
        except FetchError as e:
            return SourceItem.reject(link.name, link.url, str(e)), None
        if got.status == 304:
            if copy is None or local is None:
                return SourceItem.reject(link.name, link.url, "HTTP 304 Not Modified to an unconditional request"), None
            return self._item(copy.name, link, license, local), _validators(got.headers) or validators
        name, where = link.name, "URL"
        if disposed := _disposition_name(got.headers):
            name, where = disposed, "Content-Disposition"
        if reason := unsafe_name_reason(name, where):
            return SourceItem.reject(name, link.url, reason), None
        return self._item(name, link, license, got.body), _validators(got.headers)

    def _item(self, name: str, link: Link, license: str, data: bytes) -> SourceItem:
        return SourceItem(
            name=name, source=link.url, read=lambda: data, size=len(data), composer=link.composer, license=license
        )

    def _previous_copies(self) -> dict[str, _Copy]:
        """URL -> the file the previous run wrote for it (ingest's manifest lists name, sha256 and source)."""
        if self.out_dir is None:
            return {}
        try:
            files = json.loads((self.out_dir / MANIFEST).read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return {}  # no usable manifest: a fresh crawl
        copies = {}
        for entry in files:
            if isinstance(entry, dict) and entry.get("status") == "ok" and entry.get("sha256"):
                name = str(entry.get("name", ""))
                if name and not unsafe_name_reason(name, "manifest"):
                    copies[str(entry.get("source"))] = _Copy(name, self.out_dir / name, str(entry["sha256"]))
        return copies

    def _read_cache(self) -> dict[str, dict[str, str]]:
        if self.out_dir is None:
            return {}
        try:
            cache = json.loads((self.out_dir / CACHE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return {url: v for url, v in cache.items() if isinstance(v, dict)} if isinstance(cache, dict) else {}


class _PageParser(HTMLParser):
    """<a href> targets with their text, and the page's visible text (for a license statement)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[tuple[str, str]] = []
        self.text: list[str] = []
        self._href: str | None = None
        self._label: list[str] = []
        self._hidden = 0  # depth inside <script>/<style>

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._hidden += 1
        elif tag == "a":
            self._close_anchor()  # an unclosed <a> ends where the next starts
            href = dict(attrs).get("href")
            if href and href.strip():
                self._href, self._label = href.strip(), []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._hidden:
            self._hidden -= 1
        elif tag == "a":
            self._close_anchor()

    def handle_data(self, data: str) -> None:
        if self._hidden:
            return
        self.text.append(data)
        if self._href is not None:
            self._label.append(data)

    def close(self) -> None:
        super().close()
        self._close_anchor()

    def _close_anchor(self) -> None:
        if self._href is not None:
            self.anchors.append((self._href, " ".join("".join(self._label).split())))
            self._href = None


def parse_page(body: bytes, headers: httpx.Headers) -> tuple[list[tuple[str, str]], str]:
    """(href, link text) pairs and the visible text of an HTML page."""
    message = email.message.Message()
    message["content-type"] = headers.get("content-type", "text/html")
    charset = message.get_content_charset()
    try:
        html = body.decode(charset or "utf-8")
    except (LookupError, UnicodeDecodeError):
        html = body.decode("cp1252", errors="replace")  # old sites (piano-midi.de among them) are Latin-1
    parser = _PageParser()
    parser.feed(html)
    parser.close()
    return parser.anchors, " ".join(" ".join(parser.text).split())


def resolve_link(base: str, href: str) -> tuple[str | None, str | None]:
    """(absolute URL, None), (URL, why it is refused) or (None, None) for links that lead to no web page."""
    url = urldefrag(urljoin(base, href)).url
    if urlsplit(url).scheme.lower() not in DEFAULT_PORTS:
        return None, None  # mailto:, javascript:, ...
    # urljoin stops "../" at the root; a link that tries to climb above it is probing, not navigating.
    ref = urlsplit(href)
    relative = not (ref.scheme or ref.netloc or ref.path.startswith("/"))
    path = urlsplit(base).path.rsplit("/", 1)[0] + "/" + ref.path if relative else ref.path
    depth = 0
    for segment in path.split("/"):
        segment = unquote(segment)
        if segment == "..":
            depth -= 1
            if depth < 0:
                return url, f"path traversal: the link {href!r} climbs above the site root"
        elif segment not in ("", "."):
            depth += 1
    return url, None


def unsafe_name_reason(name: str, where: str) -> str | None:
    """Why a file name from the server may not name a file, or None (ingest sanitises the rest)."""
    if "/" in name or "\\" in name or name.strip() in ("", ".", ".."):
        return f"path traversal in the file name from the {where}: {name!r}"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"control characters in the file name from the {where}: {name!r}"
    return None


def same_site(url: str, start: str) -> bool:
    """Same host name and port (a default port counts as the scheme's, so http -> https on one host is fine)."""
    a, b = urlsplit(url), urlsplit(start)
    try:
        a_port, b_port = a.port or DEFAULT_PORTS.get(a.scheme.lower()), b.port or DEFAULT_PORTS.get(b.scheme.lower())
    except ValueError:  # a port that is not a number
        return False
    both_default = a_port == DEFAULT_PORTS.get(a.scheme.lower()) and b_port == DEFAULT_PORTS.get(b.scheme.lower())
    return a.hostname is not None and a.hostname == b.hostname and (a_port == b_port or both_default)


def _disposition_name(headers: httpx.Headers) -> str | None:
    """The filename of a Content-Disposition header (RFC 6266 / 2231 forms), if any."""
    if "content-disposition" not in headers:
        return None
    message = email.message.Message()
    message["content-disposition"] = headers["content-disposition"]
    return message.get_filename()


def _validators(headers: httpx.Headers) -> dict[str, str]:
    found = {"etag": headers.get("etag"), "last_modified": headers.get("last-modified")}
    return {k: v for k, v in found.items() if v}


def _is_midi_url(url: str) -> bool:
    return unquote(urlsplit(url).path).lower().endswith(MIDI_SUFFIXES)


def _is_page_url(url: str) -> bool:
    last = urlsplit(url).path.rsplit("/", 1)[-1].lower()
    return ("." + last.rsplit(".", 1)[-1] if "." in last else "") in PAGE_SUFFIXES


def _stem(url: str) -> str:
    return unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]).rsplit(".", 1)[0] or urlsplit(url).hostname or ""


def _cc_license(href: str) -> str | None:
    """'CC BY-SA 3.0 DE' for a creativecommons.org/licenses/by-sa/3.0/de/ link."""
    found = CC_LICENSE_URL.search(href)
    if not found:
        return None
    kind, version, country = found.groups()
    name = f"CC {kind.upper()} {version}" + (f" {country.upper()}" if country else "")
    return f"{name}, https://{found.group(0)}/"

