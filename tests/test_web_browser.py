"""The page in a real headless Chromium (Debian's `chromium` package, driven by Playwright from
pip through `executable_path`: Playwright's own browser download needs the internet). The
server runs in a thread on a free port with the shipped default model, which is small (3 M
parameters, a few seconds here) and, unlike an untrained test model, writes notes to draw.

Chooses guitar + drums, 2 variants of 2 bars, Generate; each card must have an audio source
that is served as MP3 and loads, a MIDI link that downloads a MIDI file, a piano roll with
pixels drawn; no request may go to another host. Saves a screenshot (see SCREENSHOT).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from midi_fixtures import band, save

pytestmark = pytest.mark.slow

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")

# The README's screenshot is refreshed only on request:
#   BANGER_SCREENSHOT=docs/web-screenshot.png python -m pytest -m slow tests/test_web_browser.py
SCREENSHOT = os.environ.get("BANGER_SCREENSHOT")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The base URL of `banger web` serving the default model from a thread."""
    import uvicorn

    from bangercli.api import load_model
    from bangercli.web import create_app

    app = create_app(load_model("default"), tmp_path_factory.mktemp("web-out"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    server.should_exit = True
    thread.join(30)
    app.state.jobs.close()
    listener.close()


@pytest.fixture
def page(server):
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        page = context.new_page()
        page.requests = []
        page.on("request", lambda request: page.requests.append(request.url))
        page.set_default_timeout(120_000)
        yield page
        context.close()
        browser.close()


CANVAS_PIXELS = """canvas => {
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let coloured = 0;
    for (let i = 0; i < data.length; i += 4) {
        const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
        if (a > 0 && Math.max(r, g, b) - Math.min(r, g, b) > 40) coloured++;  // not a grey bar line
    }
    return coloured;
}"""

LOADED_SECONDS = """audio => new Promise((ok, fail) => {
    if (audio.readyState >= 1) return ok(audio.duration);
    audio.onloadedmetadata = () => ok(audio.duration);
    audio.onerror = () => fail(new Error("cannot play: code " + audio.error.code));
})"""

FETCH = """async url => {
    const response = await fetch(url);
    const bytes = new Uint8Array(await response.arrayBuffer());
    return [response.status, response.headers.get("content-type"), bytes.length];
}"""


def test_generate_two_variants_in_the_browser(server, page, tmp_path):
    page.goto(server + "/")
    page.wait_for_selector("#more input[value=guitar]", state="attached")
    page.select_option("#lead", "guitar")
    page.click("label:has(> input[name=drums][value=on])")
    assert page.is_checked("input[name=drums][value=on]")
    page.fill("#length", "2")
    page.fill("#variants", "2")
    page.click("#random")  # a fixed seed: the same screenshot every run
    page.fill("#seed", "1")
    page.click("#generate")
    sync_api.expect(page.locator(".card")).to_have_count(2, timeout=120_000)
    assert page.is_hidden("#error")

    for card in page.query_selector_all(".card"):
        assert "guitar" in card.query_selector(".title").inner_text().lower()
        src = card.query_selector("audio").get_attribute("src")
        status, kind, size = page.evaluate(FETCH, src)
        assert (status, kind) == (200, "audio/mpeg") and size > 1000
        duration = card.query_selector("audio").evaluate(LOADED_SECONDS)
        assert duration > 3  # 2 bars at 120 bpm are 4 s (plus the release tail)
        with page.expect_download() as download:
            card.query_selector("a.midi").click()
        data = Path(download.value.path()).read_bytes()
        assert data.startswith(b"MThd") and download.value.suggested_filename.endswith(".mid")
        assert card.query_selector("canvas").evaluate(CANVAS_PIXELS) > 100

    page.screenshot(path=str(Path(SCREENSHOT) if SCREENSHOT else tmp_path / "desktop.png"))
    page.set_viewport_size({"width": 390, "height": 844})  # a phone, for a look by hand
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)

    page.fill("#length", "0")  # a bad value: the library's message, in the page
    page.click("#generate")
    page.wait_for_selector("#error:not([hidden])")
    assert "at least 1" in page.inner_text("#error")
    assert page.query_selector_all(".card").__len__() == 2

    # "continue this one" and "more like this" each add two cards; an uploaded file is described
    page.click(".card:first-child button.continue")
    sync_api.expect(page.locator(".card")).to_have_count(4, timeout=120_000)
    assert page.is_hidden("#error") and page.is_visible("#prompt")
    page.click("#prompt-clear")
    page.click(".card:first-child button.more")
    sync_api.expect(page.locator(".card")).to_have_count(6, timeout=120_000)
    page.set_input_files("#file", str(save(band(bars=4), tmp_path / "song.mid")))
    sync_api.expect(page.locator("#prompt-text")).to_contain_text("song.mid: 4 bars, piano, bass")
    # "add parts": the instruments chosen above (guitar, drums on) play along with the file
    page.click("label:has(> input[name=mode][value=add])")
    sync_api.expect(page.locator("#mode-hint")).to_contain_text("play along")
    page.fill("#variants", "1")
    page.click("#generate")
    sync_api.expect(page.locator(".card")).to_have_count(7, timeout=120_000)
    assert page.is_hidden("#error")
    assert "guitar" in page.inner_text(".card:first-child .title").lower()
    page.click("label:has(> input[name=mode][value=rewrite])")
    assert page.is_visible("#rewrite-range")
    page.set_input_files("#file", str(save(b"not midi", tmp_path / "bad.mid")))
    sync_api.expect(page.locator("#error")).to_contain_text("bad.mid:")
    assert page.is_hidden("#prompt")

    others = [url for url in page.requests if not url.startswith(server + "/")
              and not url.startswith("data:") and not url.startswith("blob:")]
    assert others == []
    assert any("/api/generate" in url for url in page.requests)
