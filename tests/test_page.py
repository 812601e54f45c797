"""The page `pianola serve` serves at /, in a real headless browser (Debian's chromium, driven by playwright)
against a real server: defaults filled from /v1/model, a piece generated, its WAV playable, its roll shown,
its MIDI downloadable, the gallery listing it; a primer uploaded; a bad primer's error shown."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import free_port, make_midi, motif_notes

CHROMIUM = Path("/usr/bin/chromium")

TIMEOUT_MS = 60_000  # generation, and WAV rendering by FluidSynth, on a busy 2-core machine


@contextmanager
def serving(bundle_dir: Path, store: Path, prefix: str = "", **options):
    """The app on 127.0.0.1 (uvicorn in a thread; under `prefix`, as a reverse proxy would put it) for the block;
    the server's base URL."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from pianola.serving.app import Service, create_app

    service = Service(str(bundle_dir), store, **options)
    app = create_app(service)
    if prefix:
        app = Starlette(routes=[Mount(prefix, app=app)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        service.close()


@pytest.fixture
def server(bundle_dir: Path, tmp_path: Path):
    with serving(bundle_dir, tmp_path / "served") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), f"no chromium at {CHROMIUM}: `make setup` installs Debian's"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--autoplay-policy=no-user-gesture-required", "--disable-dev-shm-usage",
            "--disable-gpu", "--mute-audio"])
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, url: str):
    """A new page at `url`, once the page has read /v1/model; console errors collected in page.problems."""
    context = browser.new_context(base_url=url)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
    page.on("console", lambda m: page.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.goto(url)
    page.wait_for_selector("body[data-ready='true']")
    return page


@pytest.fixture
def page(browser, server):
    page = open_page(browser, server)
    yield page
    page.context.close()


def pieces_in(page) -> list[str]:
    return page.eval_on_selector_all("#result .piece", "nodes => nodes.map(n => n.dataset.pieceId)")


def generate(page) -> str:
    """Click Generate and wait for the piece; its id."""
    page.click("#generate")
    page.wait_for_function("() => document.querySelector('#generate').disabled === false "
                           "&& document.querySelector('#result').getAttribute('aria-busy') === 'false'")
    assert not page.is_visible("#error"), page.text_content("#error")
    ids = pieces_in(page)
    assert len(ids) == 1
    return ids[0]


def check_piece(page, piece_id: str) -> None:
    """The piece's audio plays, its roll is shown, its MIDI link downloads MIDI, the gallery lists it."""
    piece = f"#result .piece[data-piece-id='{piece_id}']"
    audio = page.evaluate(f"""async () => {{
        const audio = document.querySelector("{piece} audio");
        audio.load();
        const start = Date.now();
        while (audio.readyState < 1 && audio.error === null && Date.now() - start < {TIMEOUT_MS}) {{
            await new Promise(r => setTimeout(r, 100));
        }}
        return {{src: audio.currentSrc, readyState: audio.readyState, duration: audio.duration,
                 error: audio.error && audio.error.message}};
    }}""")
    assert audio["src"].endswith(f"/v1/pieces/{piece_id}.wav"), audio
    assert audio["error"] is None, audio
    assert audio["readyState"] >= 1, audio
    assert audio["duration"] > 0, audio

    page.wait_for_function(f"""() => {{
        const img = document.querySelector("{piece} img.roll");
        return img && img.complete && img.naturalWidth > 0;
    }}""")
    assert page.get_attribute(f"{piece} img.roll", "src") == f"v1/pieces/{piece_id}.png"

    link = page.query_selector(f"{piece} a[download]")
    assert link.get_attribute("href") == f"v1/pieces/{piece_id}.mid"
    head = page.evaluate("""async (href) => {
        const response = await fetch(href);
        const bytes = new Uint8Array(await response.arrayBuffer());
        return {status: response.status, head: String.fromCharCode(...bytes.slice(0, 4))};
    }""", link.get_attribute("href"))
    assert head == {"status": 200, "head": "MThd"}

    item = f"#gallery .gallery-item[data-piece-id='{piece_id}']"
    page.wait_for_selector(item)
    assert page.get_attribute(f"{item} img.thumb", "src") == f"v1/pieces/{piece_id}.png"
    assert page.get_attribute(f"{item} audio", "preload") == "none"
    assert page.get_attribute(f"{item} a[download]", "href") == f"v1/pieces/{piece_id}.mid"


def test_page_works_under_a_path_prefix(bundle_dir: Path, tmp_path: Path, browser) -> None:
    """Behind a reverse proxy at /pianola/, the page's relative URLs reach the app (docs/serving.md)."""
    with serving(bundle_dir, tmp_path / "served", prefix="/pianola") as url:
        page = open_page(browser, f"{url}/pianola/")
        page.fill("#length", "40")
        check_piece(page, generate(page))
        assert not page.problems, page.problems


def test_page_generates_a_playable_piece(page):
    model = page.evaluate("() => fetch('/v1/model').then(r => r.json())")
    defaults, limits = model["defaults"], model["limits"]
    for name in ("n", "length", "seed", "temperature", "top_p", "repetition_penalty"):
        assert float(page.input_value(f"#{name}")) == pytest.approx(defaults[name]), name
    assert page.input_value("#strategy") == defaults["strategy"]
    assert page.get_attribute("#n", "max") == str(limits["max_n"])
    assert page.get_attribute("#length", "max") == str(limits["max_length"])
    assert model["model"] in page.text_content("#model-info")
    page.wait_for_function("() => document.querySelector('#health').dataset.state === 'ok'")

    # Only the options of the chosen strategy are offered.
    page.select_option("#strategy", "greedy")
    assert page.is_disabled("#temperature") and page.is_hidden("#temperature")
    assert page.is_enabled("#repetition_penalty")
    page.select_option("#strategy", "top_k")
    assert page.is_enabled("#top_k") and page.is_enabled("#temperature") and page.is_disabled("#top_p")
    page.select_option("#strategy", defaults["strategy"])

    page.fill("#length", "120")
    piece_id = generate(page)
    check_piece(page, piece_id)
    tokens = page.text_content(f"#result .piece[data-piece-id='{piece_id}'] table.metrics tr[data-metric='tokens'] td")
    assert tokens.strip() == "120"
    assert page.problems == []


def test_page_generates_from_an_uploaded_primer(page, tmp_path):
    primer = make_midi(tmp_path / "primer.mid", motif_notes(2, bars=4))
    page.set_input_files("#primer", str(primer))
    page.wait_for_function("() => document.querySelector('#primer-status').textContent.includes('primer.mid')")
    page.fill("#length", "120")
    piece_id = generate(page)
    check_piece(page, piece_id)
    record = page.evaluate(f"() => fetch('/v1/pieces/{piece_id}').then(r => r.json())")
    assert record["primer"] == "midi"
    assert "uploaded MIDI" in page.text_content(f"#gallery .gallery-item[data-piece-id='{piece_id}']")
    assert page.problems == []


def test_page_shows_the_server_error_for_a_bad_primer(page, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("these are not the notes you are looking for\n" * 20)
    page.set_input_files("#primer", str(bad))
    page.wait_for_function("() => document.querySelector('#primer-status').textContent.includes('notes.txt')")
    page.fill("#length", "120")
    page.click("#generate")
    alert = page.wait_for_selector("#error[role='alert']:not([hidden])")
    assert "only piano MIDI is accepted" in alert.text_content()
    assert page.is_enabled("#generate")
    assert pieces_in(page) == []
    assert page.eval_on_selector_all("#gallery .gallery-item", "nodes => nodes.length") == 0


def test_page_refuses_a_primer_over_the_size_cap(browser, bundle_dir, tmp_path):
    """Checked in the browser, before anything is sent: a server with a small cap, a primer over it."""
    from pianola.serving.composer import Limits

    with serving(bundle_dir, tmp_path / "served", limits=Limits(max_primer_bytes=100)) as url:
        page = open_page(browser, url)
        sent: list[str] = []
        page.on("request", lambda r: sent.append(r.post_data or "") if r.url.endswith("/v1/generate") else None)
        big = make_midi(tmp_path / "big.mid", motif_notes(0, bars=8))
        assert big.stat().st_size > 100
        page.set_input_files("#primer", str(big))
        alert = page.wait_for_selector("#error[role='alert']:not([hidden])")
        assert "over the limit of 100 bytes" in alert.text_content()
        assert page.input_value("#primer") == ""
        page.fill("#length", "60")
        page.click("#generate")  # from training music: the refused primer is not sent
        page.wait_for_selector("#result .piece")
        assert len(sent) == 1 and "primer_midi" not in sent[0]
        assert not page.is_visible("#error")
        page.context.close()
