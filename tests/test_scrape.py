"""Web ingest against a local site the tests build: polite crawling, resume, and every hostile answer rejected.

The site mimics piano-midi.de (index -> composer pages -> .mid files) and serves each trap on its own path;
a request log on the server shows what the crawler asked for, when, and with which headers.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import make_midi, scale_notes
from pianola.data.ingest import MANIFEST, ingest
from pianola.data.sources import open_source
from pianola.data.sources.web import CACHE_FILE, WebSource, resolve_link, same_site
from pianola.errors import PianolaError

FAST = {"delay": 0.02, "backoff": 0.01, "timeout": 0.5, "retries": 2}  # a polite crawler, sped up for tests
CAP = 64_000  # the size cap of these tests; every good file is far below it
LAST_MODIFIED = formatdate(1_600_000_000, usegmt=True)


@dataclass
class Request:
    at: float  # time.monotonic() on arrival
    path: str  # as sent, percent-encoding kept
    host: str
    headers: dict[str, str]


Respond = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Site:
    """Routes of the test site and a log of every request it answered."""

    routes: dict[str, Respond] = field(default_factory=dict)
    log: list[Request] = field(default_factory=list)
    endless_sent: list[int] = field(default_factory=list)  # bytes the endless body sent before the client hung up
    url: str = ""

    def paths(self) -> list[str]:
        return [r.path for r in self.log]

    def requests_to(self, path: str) -> list[Request]:
        return [r for r in self.log if r.path == path]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers; every response sets a length or closes
    site: Site

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.site.log.append(Request(time.monotonic(), path, self.headers.get("Host", ""), dict(self.headers)))
        self.site.routes.get(path, not_found)(self)

    def log_message(self, *args: object) -> None:
        pass  # quiet test output


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def not_found(handler: BaseHTTPRequestHandler) -> None:
    send(handler, 404, b"<html><body>not here</body></html>", {"Content-Type": "text/html"})


def page(html: str) -> Respond:
    return lambda h: send(h, 200, f"<html><body>{html}</body></html>".encode(), {"Content-Type": "text/html; charset=utf-8"})


def file(body: bytes, *, etag: bool = False, last_modified: bool = False, disposition: str | None = None) -> Respond:
    """A file answering conditional requests as a real server does."""
    tag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'

    def respond(h: BaseHTTPRequestHandler) -> None:
        headers = {"Content-Type": "audio/midi"}
        if etag:
            headers["ETag"] = tag
        if last_modified:
            headers["Last-Modified"] = LAST_MODIFIED
        if disposition:
            headers["Content-Disposition"] = disposition
        fresh = (etag and h.headers.get("If-None-Match") == tag) or (
            last_modified and not etag and h.headers.get("If-Modified-Since") == LAST_MODIFIED
        )
        send(h, 304, b"", {k: v for k, v in headers.items() if k != "Content-Type"}) if fresh else send(h, 200, body, headers)

    return respond


def failing_first(times: int, then: Respond, fail: Respond) -> Respond:
    count = [0]

    def respond(h: BaseHTTPRequestHandler) -> None:
        count[0] += 1
        (fail if count[0] <= times else then)(h)

    return respond


def unavailable(h: BaseHTTPRequestHandler) -> None:
    send(h, 503, b"busy", {"Content-Type": "text/plain"})


def too_slow(h: BaseHTTPRequestHandler) -> None:
    time.sleep(1.2)  # over the client's 0.5 s timeout
    try:
        send(h, 200, b"late", {"Content-Type": "audio/midi"})
    except OSError:
        pass  # the client gave up long ago


def redirect(location: str) -> Respond:
    return lambda h: send(h, 302, b"", {"Location": location})


def endless(site: Site) -> Respond:
    """A body with no length that never ends: only a client that stops reading ends the request."""

    def respond(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "audio/midi")
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        chunk, sent = b"MThd" + bytes(64 * 1024 - 4), 0
        try:
            while sent < 1_000_000_000:  # 1 GB: a client that read it all would take far longer than the test
                h.wfile.write(chunk)
                sent += len(chunk)
        except OSError:
            pass
        site.endless_sent.append(sent)

    return respond


def announced_huge(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Length", str(50_000_000))
    h.send_header("Connection", "close")
    h.end_headers()
    h.close_connection = True
    try:
        h.wfile.write(b"MThd" + bytes(1000))
    except OSError:
        pass


def midi(tmp_path: Path, pitch: int) -> bytes:
    return make_midi(tmp_path / "made" / f"{pitch}.mid", scale_notes(12, start_pitch=pitch)).read_bytes()


@pytest.fixture
def serve() -> Iterator[Callable[[Site], Site]]:
    """Start a site on 127.0.0.1 (a free port) in a thread; stopped after the test."""
    servers = []

    def start(site: Site) -> Site:
        handler = type("SiteHandler", (Handler,), {"site": site})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        site.url = f"http://127.0.0.1:{server.server_address[1]}"
        return site

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def piano_site(tmp_path: Path, serve: Callable[[Site], Site]) -> Site:
    """index -> two composer pages -> good files and one trap per hostile case."""
    site = serve(Site())
    other_host = site.url.replace("127.0.0.1", "localhost")
    site.routes.update({
        "/robots.txt": lambda h: send(h, 200, b"User-agent: *\nDisallow: /private/\n", {"Content-Type": "text/plain"}),
        "/midi_files.htm": page(
            '<a href="composers/chopin.htm">Fr&eacute;d&eacute;ric  Chopin</a> <a href="composers/bach.htm">J. S. Bach</a>'
            '<a href="/private/secret.htm">Secret</a> <a href="copyright.htm">Copyright</a> <a href="gone.htm">Liszt</a>'
            f'<a href="{other_host}/elsewhere.htm">Elsewhere</a> <a href="mailto:me@example.org">mail</a>'
        ),
        "/copyright.htm": page('MIDI files <a href="http://creativecommons.org/licenses/by-sa/3.0/de/">cc-by-sa</a>'),
        "/composers/chopin.htm": page(
            '<a href="../midis/chopin/etude1.mid">1</a> <a href="../midis/chopin/etude2.mid">2</a>'
            '<a href="../midis/chopin/error.mid">broken</a> <a href="../midis/chopin/flaky.mid">flaky</a>'
            '<a href="../midis/chopin/slow.mid">slow</a> <a href="../midis/chopin/endless.mid">endless</a>'
            '<a href="../midis/chopin/announced.mid">big</a> <a href="../midis/chopin/moved.mid">moved</a>'
            '<a href="../midis/chopin/renamed.mid">renamed</a> <a href="/private/hidden.mid">hidden</a>'
            '<a href="../midis/chopin/etude1.mid#again">the same file again</a>'
        ),
        "/composers/bach.htm": page(
            '<a href="../../etc/passwd.mid">climb</a> <a href="%2e%2e%2f%2e%2e%2fetc%2fpasswd.mid">encoded</a>'
            '<a href="../midis/bach/odd%20name%3B%3C%3E.mid">odd</a> <a href="../midis/bach/attach.mid">cd</a>'
            '<a href="../midis/bach/named.mid">named</a> <a href="../midis/bach/plain.mid">plain</a>'
            f'<a href="{other_host}/midis/bach/far.mid">far</a>'
        ),
        "/midis/chopin/etude1.mid": file(midi(tmp_path, 60), etag=True),
        "/midis/chopin/etude2.mid": file(midi(tmp_path, 62), last_modified=True),
        "/midis/chopin/error.mid": lambda h: send(h, 200, b"<!DOCTYPE html><html>Oops, try later</html>", {"Content-Type": "audio/midi"}),
        "/midis/chopin/flaky.mid": failing_first(2, file(midi(tmp_path, 64)), unavailable),
        "/midis/chopin/slow.mid": failing_first(1, file(midi(tmp_path, 65)), too_slow),
        "/midis/chopin/endless.mid": endless(site),
        "/midis/chopin/announced.mid": announced_huge,
        "/midis/chopin/moved.mid": redirect(f"{other_host}/midis/chopin/etude3.mid"),
        "/midis/chopin/renamed.mid": redirect("/midis/chopin/etude4.mid"),
        "/midis/chopin/etude4.mid": file(midi(tmp_path, 67), etag=True),
        "/private/hidden.mid": file(midi(tmp_path, 69)),
        "/midis/bach/odd%20name%3B%3C%3E.mid": file(midi(tmp_path, 48), etag=True),
        "/midis/bach/attach.mid": file(midi(tmp_path, 50), disposition='attachment; filename="../../../evil.mid"'),
        "/midis/bach/named.mid": file(midi(tmp_path, 52), etag=True, disposition="attachment; filename=bwv_846.mid"),
        "/midis/bach/plain.mid": file(midi(tmp_path, 53)),  # no ETag, no Last-Modified
    })
    return site


def crawl(site: Site, out: Path, **options: object) -> tuple[object, dict[str, dict]]:
    source = WebSource(f"{site.url}/midi_files.htm", out_dir=out, max_bytes=CAP, **{**FAST, **options})
    report = ingest(source, out, max_bytes=CAP, progress=False)
    by_url = {e["source"].removeprefix(site.url): e for e in json.loads((out / MANIFEST).read_text())["files"]}
    return report, by_url


def all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_crawl_keeps_good_files_with_composer_and_license_and_rejects_each_hostile_answer(tmp_path, serve) -> None:
    site = piano_site(tmp_path, serve)
    other_host = site.url.replace("127.0.0.1", "localhost")
    out = tmp_path / "deep" / "out"  # a traversal out of it would land in tmp_path
    before = all_files(tmp_path)

    report, entries = crawl(site, out)

    ok = {url: e["name"] for url, e in entries.items() if e["status"] == "ok"}
    assert ok == {
        "/midis/chopin/etude1.mid": "etude1.mid",
        "/midis/chopin/etude2.mid": "etude2.mid",
        "/midis/chopin/flaky.mid": "flaky.mid",  # two 503s, then served
        "/midis/chopin/slow.mid": "slow.mid",  # one timeout, then served
        "/midis/chopin/renamed.mid": "renamed.mid",  # a redirect on the same host is followed
        "/midis/bach/odd%20name%3B%3C%3E.mid": "odd_name_.mid",  # odd characters sanitised by ingest
        "/midis/bach/named.mid": "bwv_846.mid",  # the name from Content-Disposition
        "/midis/bach/plain.mid": "plain.mid",
    }
    reasons = {url: e["reason"] for url, e in entries.items() if e["status"] == "rejected"}
    assert reasons["/midis/chopin/error.mid"] == "looks like HTML, not MIDI"
    assert reasons["/midis/chopin/endless.mid"].startswith(f"over the size cap: more than {CAP:,} bytes")
    assert reasons["/midis/chopin/announced.mid"].startswith("over the size cap: the server announces 50,000,000 bytes")
    assert reasons["/midis/chopin/moved.mid"].startswith("redirected to another host: http://localhost:")
    assert reasons["/private/hidden.mid"] == "disallowed by robots.txt"
    assert "climbs above the site root" in reasons["/etc/passwd.mid"]
    assert reasons["/composers/%2e%2e%2f%2e%2e%2fetc%2fpasswd.mid"].startswith("path traversal in the file name from the URL")
    assert reasons["/midis/bach/attach.mid"].startswith("path traversal in the file name from the Content-Disposition")
    assert reasons[f"{other_host}/midis/bach/far.mid"].startswith("on another host (not followed)")
    assert reasons["/gone.htm"] == "composer page not read: HTTP 404 Not Found"  # its files may be missing
    assert len(entries) == len(ok) + len(reasons) == 18  # etude1 linked twice is one input

    assert entries["/midis/chopin/etude1.mid"]["composer"] == "Frédéric Chopin"  # the index's link text
    assert entries["/midis/bach/plain.mid"]["composer"] == "J. S. Bach"
    licenses = {e["license"] for e in entries.values() if e["status"] == "ok"}
    assert licenses == {f"CC BY-SA 3.0 DE, https://creativecommons.org/licenses/by-sa/3.0/de/ (stated on {site.url}/copyright.htm)"}
    assert report.ok == 8 and (out / "bwv_846.mid").read_bytes() == midi(tmp_path, 52)

    # The traps were never fetched, and nothing landed outside the output folder.
    paths = site.paths()
    assert paths[0] == "/robots.txt"
    assert not [p for p in paths if p.startswith("/private/") or "passwd" in p or "elsewhere" in p]
    assert {r.host for r in site.log} == {site.url.removeprefix("http://")}  # never the other host name
    assert paths.count("/copyright.htm") == 1  # read for the license, not again as a composer page
    assert all(r.headers.get("User-Agent", "").startswith("pianola-ingest/") for r in site.log)
    assert {p for p in all_files(tmp_path) - before if not p.is_relative_to(out)} == set()
    assert sorted(p.name for p in all_files(out)) == sorted([*ok.values(), MANIFEST, CACHE_FILE])


def test_downloads_are_cut_at_the_size_cap_not_read_to_the_end(tmp_path, serve) -> None:
    site = piano_site(tmp_path, serve)
    crawl(site, tmp_path / "out")
    deadline = time.monotonic() + 5
    while not site.endless_sent and time.monotonic() < deadline:
        time.sleep(0.05)
    # The server stopped on the client's hang-up; what it sent is socket buffers, not the endless body.
    assert site.endless_sent and site.endless_sent[0] < 16_000_000
    assert len(site.requests_to("/midis/chopin/endless.mid")) == 1  # an oversize body is not retried


def test_transient_failures_are_retried_with_exponential_backoff(tmp_path, serve) -> None:
    site = piano_site(tmp_path, serve)
    crawl(site, tmp_path / "out", backoff=0.1, delay=0.0)
    flaky = [r.at for r in site.requests_to("/midis/chopin/flaky.mid")]
    assert len(flaky) == 3
    assert flaky[1] - flaky[0] >= 0.1 - 0.02 and flaky[2] - flaky[1] >= 0.2 - 0.02  # base, then doubled
    assert len(site.requests_to("/midis/chopin/slow.mid")) == 2


def test_requests_to_the_site_are_spaced_by_the_delay(tmp_path, serve) -> None:
    site = serve(Site())
    site.routes.update({
        "/robots.txt": not_found,
        "/midi_files.htm": page('<a href="a.htm">A</a>'),
        "/a.htm": page("".join(f'<a href="m{i}.mid">{i}</a>' for i in range(6))),
        **{f"/m{i}.mid": file(midi(tmp_path, 50 + i)) for i in range(6)},
    })
    delay = 0.2
    crawl(site, tmp_path / "out", delay=delay, concurrency=2)
    arrivals = sorted(r.at for r in site.log)
    assert len(arrivals) == 9
    # The crawler spaces the starts exactly; arrivals jitter by the scheduling of a busy machine.
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert min(gaps) >= delay / 2 and arrivals[-1] - arrivals[0] >= 8 * delay - 0.05, gaps


def test_a_second_run_asks_conditionally_gets_304s_and_rewrites_nothing(tmp_path, serve) -> None:
    site = piano_site(tmp_path, serve)
    out = tmp_path / "out"
    first, _ = crawl(site, out)
    cache = json.loads((out / CACHE_FILE).read_text())
    assert set(cache[f"{site.url}/midis/chopin/etude1.mid"]) == {"etag"}
    assert set(cache[f"{site.url}/midis/chopin/etude2.mid"]) == {"last_modified"}
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mid")}
    site.log.clear()

    second, entries = crawl(site, out)

    assert (second.ok, second.written, second.unchanged) == (first.ok, 0, first.ok)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("*.mid")}
    (etude1,) = site.requests_to("/midis/chopin/etude1.mid")
    assert etude1.headers["If-None-Match"] == json.loads((out / CACHE_FILE).read_text())[f"{site.url}/midis/chopin/etude1.mid"]["etag"]
    (etude2,) = site.requests_to("/midis/chopin/etude2.mid")
    assert etude2.headers["If-Modified-Since"] == LAST_MODIFIED
    # A file the server gave no validators for is not asked for again; the redirected one follows to its 304.
    assert site.requests_to("/midis/bach/plain.mid") == []
    assert "If-None-Match" in site.requests_to("/midis/chopin/etude4.mid")[0].headers
    assert entries["/midis/bach/plain.mid"]["status"] == entries["/midis/bach/named.mid"]["status"] == "ok"


def test_license_falls_back_to_the_configured_default(tmp_path, serve) -> None:
    site = serve(Site())
    site.routes.update({
        "/robots.txt": not_found,
        "/midi_files.htm": page('<a href="p.htm">P</a>'),
        "/p.htm": page('<a href="x.mid">x</a>'),
        "/x.mid": file(midi(tmp_path, 60)),
    })
    _, entries = crawl(site, tmp_path / "out", default_license="CC0, as agreed with the site")
    assert entries["/x.mid"]["license"] == "CC0, as agreed with the site"
    assert entries["/x.mid"]["composer"] == "P"


def test_an_http_spec_crawls_through_plain_ingest(tmp_path, serve) -> None:
    site = serve(Site())
    site.routes.update({
        "/robots.txt": not_found,
        "/midi_files.htm": page('Files under CC BY-SA 3.0 DE. <a href="mozart.htm"></a>'),
        "/mozart.htm": page('<a href="k545.mid">Sonata</a>'),
        "/k545.mid": file(midi(tmp_path, 60)),
    })
    assert isinstance(open_source(f"{site.url}/midi_files.htm"), WebSource)
    report = ingest(f"{site.url}/midi_files.htm", tmp_path / "out", progress=False)  # default delay, 4 requests
    (entry,) = json.loads((tmp_path / "out" / MANIFEST).read_text())["files"]
    assert report.ok == 1 and entry["composer"] == "mozart"  # an empty link text: the page's name
    assert entry["license"] == f"CC BY-SA 3.0 DE (stated on {site.url}/midi_files.htm)"


def test_an_index_robots_txt_forbids_or_an_unreachable_site_is_a_clear_error(tmp_path, serve) -> None:
    site = serve(Site())
    site.routes["/robots.txt"] = lambda h: send(h, 200, b"User-agent: *\nDisallow: /\n")
    with pytest.raises(PianolaError, match="robots.txt of 127.0.0.1 disallows"):
        list(WebSource(f"{site.url}/midi_files.htm", **FAST).items())
    assert site.paths() == ["/robots.txt"]

    site.routes["/robots.txt"] = unavailable
    with pytest.raises(PianolaError, match=r"cannot read .*/robots.txt: HTTP 503 .*gave up after 3 tries"):
        list(WebSource(f"{site.url}/midi_files.htm", **FAST).items())

    closed = site.url.rsplit(":", 1)[0] + ":9"  # discard port: nothing listens on the loopback
    with pytest.raises(PianolaError, match="cannot read http://127.0.0.1:9/robots.txt: connection failed"):
        list(WebSource(f"{closed}/midi_files.htm", **FAST).items())


def test_link_and_host_checks() -> None:
    base = "http://h.org/composers/bach.htm"
    assert resolve_link(base, "../midis/a.mid") == ("http://h.org/midis/a.mid", None)
    assert resolve_link(base, "mailto:x@h.org") == (None, None)
    assert "climbs above" in resolve_link(base, "%2e%2e/%2E%2E/x.mid")[1]
    assert "climbs above" in resolve_link(base, "/../x.mid")[1]
    assert same_site("https://h.org/a", "http://h.org/") and same_site("http://H.org:80/a", "http://h.org/")
    assert not same_site("http://h.org:8080/a", "http://h.org/") and not same_site("http://evil.org/", "http://h.org/")
