"""`banger web`'s server through Starlette's in-process client, with a tiny untrained model:
the JSON contract, seeded determinism, the library's messages for bad options, the page's
ceilings, uploads (bounded, read by banger's reader), files served by exact name only, the
bounded queue, the page referencing no other host, and the command without the extra."""

from __future__ import annotations

import io
import re
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("multipart")
pytest.importorskip("httpx")

import mido  # noqa: E402
import torch  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from bangercli.api import load_model  # noqa: E402
from bangercli.midi.instruments import INSTRUMENTS  # noqa: E402
from bangercli.midi.tokenizer import TokenizerConfig  # noqa: E402
from bangercli.model.checkpoint import save_checkpoint  # noqa: E402
from bangercli.model.network import PRESETS, build_model  # noqa: E402
from bangercli.web import WebConfig, create_app  # noqa: E402
from bangercli.web.app import STATIC  # noqa: E402
from cli_runner import run_cli  # noqa: E402
from midi_fixtures import band, save  # noqa: E402

CONFIG = PRESETS["tiny"]
SMALL = {"instruments": ["guitar"], "drums": True, "bars": 2, "variants": 2, "seed": 5}


@pytest.fixture(scope="module")
def banger(tmp_path_factory):
    """A tiny untrained model, saved and loaded the way `banger web --model FILE` loads one."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_checkpoint(path, build_model(CONFIG), config=CONFIG, tokenizer_config=TokenizerConfig())
    return load_model(str(path))


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out"


@pytest.fixture
def client(banger, out):
    app = create_app(banger, out)
    with TestClient(app) as client:
        yield client
    app.state.jobs.close()


def midi_of(client, url: str) -> bytes:
    response = client.get(url)
    assert response.status_code == 200
    return response.content


# --- the contract ------------------------------------------------------------------------------


def test_generate_returns_pieces_with_served_midi_and_audio(client, out):
    response = client.post("/api/generate", json=SMALL)
    assert response.status_code == 200, response.text
    pieces = response.json()["pieces"]
    assert len(pieces) == 2
    for piece in pieces:
        assert {"seed", "midi", "audio", "instruments", "drums", "bars", "bpm", "notes"} <= set(piece)
        assert piece["seed"] == 5 and piece["bars"] == 2 and piece["bpm"] == 120
        assert piece["midi"].startswith("/files/") and piece["audio"].startswith("/files/")
        midi = client.get(piece["midi"])
        assert midi.headers["content-type"] == "audio/midi"
        assert midi.content.startswith(b"MThd")
        mido.MidiFile(file=io.BytesIO(midi.content))  # a MIDI file mido reads
        audio = client.get(piece["audio"])
        assert audio.status_code == 200 and audio.headers["content-type"] == "audio/mpeg"
        assert len(audio.content) > 1000
        seconds = piece["seconds"]
        for start, duration, pitch, instrument in piece["notes"]:
            assert 0 <= start < seconds and 0 < duration <= seconds - start + 1e-3
            assert 0 <= pitch <= 127 and 0 <= instrument < len(INSTRUMENTS)
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".mid") == sorted(
        piece["midi"].removeprefix("/files/") for piece in pieces)


def test_same_options_and_seed_give_the_same_midi(client):
    first = client.post("/api/generate", json=SMALL).json()["pieces"]
    again = client.post("/api/generate", json=SMALL).json()["pieces"]
    assert [p["midi"] for p in first] != [p["midi"] for p in again]  # new files, not clobbered
    assert [midi_of(client, p["midi"]) for p in first] == [midi_of(client, p["midi"]) for p in again]
    assert [p["notes"] for p in first] == [p["notes"] for p in again]


def test_a_missing_seed_is_drawn_and_returned(client):
    pieces = client.post("/api/generate", json={**SMALL, "variants": 1, "seed": None}).json()["pieces"]
    seed = pieces[0]["seed"]
    assert isinstance(seed, int) and 0 <= seed < 1_000_000
    again = client.post("/api/generate", json={**SMALL, "variants": 1, "seed": seed}).json()["pieces"]
    assert midi_of(client, again[0]["midi"]) == midi_of(client, pieces[0]["midi"])


def test_tokens_instead_of_bars(client):
    response = client.post("/api/generate", json={"tokens": 12, "seed": 1, "drums": False})
    assert response.status_code == 200, response.text
    assert response.json()["pieces"][0]["bars"] >= 1


def test_instruments_lists_the_categories_and_the_page_limits(client):
    body = client.get("/api/instruments").json()
    assert [i["name"] for i in body["instruments"]] == [inst.name for inst in INSTRUMENTS]
    assert sum(not i["drums"] for i in body["instruments"]) == 11
    assert body["instruments"][3]["programs"] == [24, 31]
    assert body["limits"]["variants"] == 8 and body["limits"]["bars"] == 64


# --- bad requests: the library's messages --------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    ({"instruments": ["kazoo"]}, "unknown instrument 'kazoo'"),
    ({"bars": 2, "tokens": 10}, "--bars and --tokens contradict each other"),
    ({"temperature": 0}, "--temperature must be > 0, got 0"),
    ({"bars": 2.5}, "--bars must be a whole number, got 2.5"),
    ({"drums": "yes"}, "--drums must be True or False, got 'yes'"),
    ({"only": True}, "--only needs at least one --instrument"),
    ({"seed": -1}, "seed"),
    ({"bars": 300}, "--bars must be at most 256, got 300"),  # the library's ceiling first
])
def test_bad_options_get_400_with_the_library_message(client, options, message):
    response = client.post("/api/generate", json={"seed": 1, **options})
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_unknown_keys_and_bodies_that_are_not_an_object_get_400(client):
    response = client.post("/api/generate", json={"bars": 2, "colour": "blue"})
    assert response.status_code == 400
    assert response.json()["error"] == "unknown option(s): 'colour'"
    assert "instruments" in response.json()["hint"]
    for body in (b"[1, 2]", b"not json", b'"bars"'):
        response = client.post("/api/generate", content=body,
                               headers={"content-type": "application/json"})
        assert response.status_code == 400 and response.json()["error"]


@pytest.mark.parametrize(("options", "message"), [
    ({"variants": 9}, "variants must be at most 8 on this page, got 9"),
    ({"bars": 65}, "bars must be at most 64 on this page, got 65"),
    ({"tokens": 10_000}, "tokens must be at most 8192 on this page, got 10000"),
])
def test_the_page_ceilings(client, options, message):
    response = client.post("/api/generate", json={"seed": 1, **options})
    assert response.status_code == 400
    assert response.json()["error"] == message


def test_an_oversized_json_body_gets_413(client):
    response = client.post("/api/generate", content=b"{" + b" " * 70_000 + b"}",
                           headers={"content-type": "application/json"})
    assert response.status_code == 413


# --- files: by exact name, from the output folder only --------------------------------------------


def test_only_files_this_server_wrote_are_served(client, out):
    piece = client.post("/api/generate", json={**SMALL, "variants": 1}).json()["pieces"][0]
    (out / "mine.mid").write_bytes(b"MThd not served")  # in the folder, but not written by it
    (out.parent / "secret.txt").write_text("secret")
    name = piece["midi"].removeprefix("/files/")
    attempts = [
        "/files/mine.mid", "/files/../secret.txt", "/files/%2e%2e/secret.txt",
        "/files/%2e%2e%2fsecret.txt", "/files/..%2Fsecret.txt", "/files/%2E%2E",
        "/files//etc/passwd", "/files/%2Fetc%2Fpasswd", "/files/" + str(out.parent / "secret.txt"),
        "/files/" + "%2F".join(str(out.parent / "secret.txt").split("/")),
        "/files/", "/files", f"/files/.{name}", f"/files/{name}%00.txt",
        "/static/../web/app.py", "/static/%2e%2e%2fapp.py", "/static/", "/static/app.py",
    ]
    for url in attempts:
        response = client.get(url)
        assert response.status_code in (404, 405), url
        assert b"secret" not in response.content and b"MThd" not in response.content, url
    assert client.get(piece["midi"]).status_code == 200


def test_posts_from_another_site_are_refused(client, tmp_path):
    foreign = {"origin": "http://evil.example"}
    assert client.post("/api/generate", json=SMALL, headers=foreign).status_code == 403
    assert client.post("/api/uploads", content=song(tmp_path), headers=foreign).status_code == 403
    same = {"origin": "http://testserver"}  # the page itself
    assert client.post("/api/uploads", content=song(tmp_path), headers=same).status_code == 201


def test_static_files_and_security_headers(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/style.css").status_code == 200


def test_the_page_references_no_other_host():
    for path in STATIC.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text, re.IGNORECASE), path.name
        assert "@import" not in text and "url(http" not in text


# --- uploads -------------------------------------------------------------------------------------


def song(tmp_path) -> bytes:
    return save(band(bars=4), tmp_path / "song.mid").read_bytes()


@pytest.mark.slow  # a real process or a whole run: about 1.5 s or more (CI runs it)
def test_an_upload_is_read_and_continued(client, tmp_path):
    data = song(tmp_path)
    response = client.post("/api/uploads", files={"file": ("song.mid", data, "audio/midi")})
    assert response.status_code == 201, response.text
    info = response.json()
    assert info["bars"] >= 4 and info["prompt"].startswith("/files/prompt-")
    assert client.get(info["prompt"]).content == data
    options = {"prompt": info["prompt"], "prompt_bars": 2, "bars": 2, "seed": 3}
    continued = client.post("/api/generate", json=options)
    assert continued.status_code == 200, continued.text
    assert continued.json()["pieces"][0]["bars"] == 4  # 2 kept + 2 new
    # the same in one multipart request, and "continue this one" with a piece's own URL
    form = client.post("/api/generate", files={"file": ("song.mid", data, "audio/midi")},
                       data={"options": '{"prompt_bars": 2, "bars": 2, "seed": 3}'})
    assert form.status_code == 200, form.text
    assert (midi_of(client, form.json()["pieces"][0]["midi"])
            == midi_of(client, continued.json()["pieces"][0]["midi"]))
    piece = continued.json()["pieces"][0]
    again = client.post("/api/generate", json={"prompt": piece["midi"], "bars": 1, "seed": 1})
    assert again.status_code == 200, again.text  # its bars up to its last note, plus one
    assert again.json()["pieces"][0]["bars"] >= 2


@pytest.mark.slow  # a real process or a whole run: about 1.5 s or more (CI runs it)
def test_an_upload_gets_parts_added_and_bars_rewritten(client, tmp_path):
    """The page's "add parts" and "rewrite bars" are the library's add and rewrite options."""
    data = song(tmp_path)
    info = client.post("/api/uploads", files={"file": ("song.mid", data, "audio/midi")}).json()
    added = client.post("/api/generate", json={"prompt": info["prompt"], "add": ["bass"],
                                                "bars": 0, "seed": 1})
    assert added.status_code == 200, added.text
    piece = added.json()["pieces"][0]
    assert piece["bars"] == info["bars"] and "bass" in piece["instruments"]
    rewritten = client.post("/api/generate", json={"prompt": info["prompt"], "rewrite": [1, 2],
                                                    "bars": 0, "seed": 1})
    assert rewritten.status_code == 200, rewritten.text
    outside = client.post("/api/generate", json={"prompt": info["prompt"], "rewrite": [1, 99]})
    assert outside.status_code == 400 and "reaches past the prompt" in outside.json()["error"]
    longer = client.post("/api/generate", json={"prompt": info["prompt"], "prompt_bars": 99,
                                                 "bars": 1, "seed": 1})
    assert "all of it is kept" in longer.json()["pieces"][0]["warnings"][0]


def test_a_raw_upload_body_works_too(client, tmp_path):
    response = client.post("/api/uploads", content=song(tmp_path),
                           headers={"content-type": "audio/midi"})
    assert response.status_code == 201


@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty file"),
    (b"RIFF\x00\x00\x00\x00WAVE", "MIDI"),
    (b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x00\x60MTrk\x00\x00\xff\xff", "truncated"),
])
def test_a_bad_file_gets_400_with_the_reader_message(client, data, message):
    response = client.post("/api/uploads", files={"file": ("bad.mid", data, "audio/midi")})
    assert response.status_code == 400
    assert message.lower() in response.json()["error"].lower()


def test_an_oversized_upload_gets_413(client):
    big = b"MThd" + bytes(5 * 1024 * 1024 - 3)  # one byte over 5 MB
    assert client.post("/api/uploads", files={"file": ("big.mid", big)}).status_code == 413
    assert client.post("/api/uploads", content=big).status_code == 413
    response = client.post("/api/generate", files={"file": ("big.mid", big)}, data={"options": "{}"})
    assert response.status_code == 413
    assert "too large" in response.json()["error"]


def test_a_prompt_must_be_a_file_this_server_holds(client, out):
    for prompt in ("/etc/passwd", "../x.mid", "/files/nothing.mid", 3):
        response = client.post("/api/generate", json={"prompt": prompt, "seed": 1})
        assert response.status_code == 400, prompt


# --- the bounded queue ------------------------------------------------------------------------------


class SlowBanger:
    """The tiny model, but each generate waits until the test lets it go."""

    def __init__(self, banger) -> None:
        self.inner, self.go = banger, threading.Event()
        self.tokenizer = banger.tokenizer

    def generate(self, request, **kwargs):
        assert self.go.wait(60)
        return self.inner.generate(request, **kwargs)


def test_a_full_queue_gets_503_and_frees_up(banger, out):
    slow = SlowBanger(banger)
    app = create_app(slow, out, config=WebConfig(max_waiting=2))
    answers = []
    with TestClient(app) as client:
        def post():
            answers.append(client.post("/api/generate", json={**SMALL, "variants": 1}))

        threads = [threading.Thread(target=post) for _ in range(3)]  # one runs, two wait
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while app.state.jobs.status()["waiting"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert app.state.jobs.status() == {"running": True, "waiting": 2, "done": 0, "total": 0}
        refused = client.post("/api/generate", json=SMALL)
        assert refused.status_code == 503
        assert refused.json()["error"].startswith("busy")
        assert client.get("/api/progress").json()["waiting"] == 2  # the rest still answers
        slow.go.set()
        for thread in threads:
            thread.join(60)
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert client.post("/api/generate", json={**SMALL, "variants": 1}).status_code == 200
    app.state.jobs.close()


# --- the command ------------------------------------------------------------------------------------


def test_without_the_extra_the_command_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` raises ImportError
    code, stdout, stderr = run_cli(monkeypatch, capsys, "web", "--no-browser")
    assert code == 1 and stdout == ""
    assert stderr == "error: banger web needs the web extra (hint: pip install 'banger[web]')\n"


def test_a_taken_port_is_one_error_line(monkeypatch, capsys):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        code, _, stderr = run_cli(monkeypatch, capsys, "web", "--no-browser", "--port",
                                  taken.getsockname()[1])
    finally:
        taken.close()
    assert code == 2 and stderr.startswith("error: cannot listen on 127.0.0.1:")
    assert stderr.count("\n") == 1


def test_the_command_serves_warns_off_loopback_opens_the_page_and_cleans_up(
        banger, monkeypatch, capsys):
    import webbrowser

    import uvicorn

    seen = {}

    def run(server, sockets):  # instead of serving: look at what would be served
        seen["folder"] = Path(server.config.app.state.files.folder)
        server.started = True
        time.sleep(0.5)  # the page opens once the server has started
        raise KeyboardInterrupt  # Ctrl-C

    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.setattr(webbrowser, "open", lambda url: seen.setdefault("opened", url) or True)
    code, stdout, stderr = run_cli(monkeypatch, capsys, "web", "--host", "0.0.0.0", "--port", 0,
                                   "--model", banger.path)
    assert code == 0, stderr
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\n", stdout)
    assert "warning: --host 0.0.0.0 lets other machines" in stderr
    assert seen["opened"] == stdout.strip()
    assert seen["folder"].name.startswith("banger-web-") and not seen["folder"].exists()
    assert stderr.endswith("stopped\n")


def test_on_loopback_a_foreign_host_header_is_refused(banger, tmp_path):
    """DNS rebinding: evil.example resolving to 127.0.0.1 must not reach the API."""
    from bangercli.web.app import LOOPBACK_NAMES

    app = create_app(banger, tmp_path, allowed_hosts=LOOPBACK_NAMES)
    assert TestClient(app, base_url="http://evil.example").get("/api/instruments").status_code == 400
    assert TestClient(app, base_url="http://127.0.0.1:8000").get(
        "/api/instruments").status_code == 200
