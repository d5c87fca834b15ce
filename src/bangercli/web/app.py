"""`banger web`'s server: one static page, a JSON API, and the files it wrote. Nothing else.

    app = create_app(load_model("default"), out_dir)   # any ASGI server runs it

Routes: `GET /` the page (and `/static/<file>` its script and style), `GET /api/instruments`,
`POST /api/generate`, `POST /api/uploads` (a MIDI file to continue), `GET /api/progress`, and
`GET /files/<name>` for the files this server wrote or received, by exact name only: no other
file in the folder, no folders, no listing. Generation runs in one worker thread behind a
bounded queue (jobs.py). Every answer carries a Content-Security-Policy that lets the page load
nothing from another host.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import sys
import threading
import traceback
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request as HttpRequest
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..atomic_files import atomic_write
from ..errors import BangerError, UsageError
from ..generation.save import finished_piece, save_pieces, start_previews
from ..midi.instruments import INSTRUMENTS
from ..midi.merge import PromptFile
from .jobs import Busy, GenerationQueue
from .options import WebConfig, piece_json, prompt_name, request_from

STATIC = Path(__file__).resolve().parent / "static"
PAGE_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
              "style.css": "text/css; charset=utf-8"}
MEDIA_TYPES = {".mid": "audio/midi", ".mp3": "audio/mpeg"}
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,200}")  # what save_pieces and uploads name
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self'; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class TooLarge(Exception):
    """A request body over its ceiling: answered 413."""


class Files:
    """The output folder and the names this server put there: the only files it serves."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._names: set[str] = set()
        self._lock = threading.Lock()

    def add(self, path: Path) -> str:
        with self._lock:
            self._names.add(path.name)
        return f"/files/{path.name}"

    def path(self, name: str) -> Path | None:
        """The file called `name` if this server wrote or received it, else None."""
        with self._lock:
            known = name in self._names
        if not known or not SAFE_NAME.fullmatch(name):
            return None
        path = self.folder / name
        return path if path.is_file() and path.resolve().parent == self.folder.resolve() else None


LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]


def create_app(banger, out_dir: str | Path, *, config: WebConfig = WebConfig(),
               allowed_hosts: list[str] | None = None) -> Starlette:
    """The ASGI app serving `banger` (a loaded model); files are written into `out_dir`.
    With `allowed_hosts` (`banger web` on loopback passes LOOPBACK_NAMES), a request whose
    Host header names another host gets 400: a page on another site cannot reach this
    server through a DNS name it rebinds to 127.0.0.1."""
    server = Server(banger, Path(out_dir), config)
    routes = [
        Route("/", server.page), Route("/static/{name}", server.page),
        Route("/api/instruments", server.instruments), Route("/api/progress", server.progress),
        Route("/api/generate", server.generate, methods=["POST"]),
        Route("/api/uploads", server.upload, methods=["POST"]),
        Route("/files/{name}", server.serve_file),
    ]
    middleware = ([Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)]
                  if allowed_hosts else [])
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={404: not_found, 405: not_allowed})
    app.state.jobs = server.jobs
    app.state.files = server.files
    return app


class Server:
    """The handlers, around one model, one output folder and one generation queue."""

    def __init__(self, banger, out_dir: Path, config: WebConfig) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.banger, self.out_dir, self.config = banger, out_dir, config
        self.files = Files(out_dir)
        self.jobs = GenerationQueue(max_waiting=config.max_waiting)

    async def page(self, request: HttpRequest) -> Response:
        name = request.path_params.get("name", "index.html")
        if name not in PAGE_FILES:
            return error(404, "not found")
        return FileResponse(STATIC / name, media_type=PAGE_FILES[name], headers=HEADERS)

    async def instruments(self, request: HttpRequest) -> Response:
        listed = [{"index": inst.index, "name": inst.name, "drums": inst.is_drums,
                   "programs": [inst.programs.start, inst.programs.stop - 1] if inst.programs
                   else [], "aliases": list(inst.aliases)} for inst in INSTRUMENTS]
        config = self.config
        limits = {"variants": config.max_variants, "bars": config.max_bars,
                  "tokens": config.max_tokens, "upload_bytes": config.max_upload_bytes}
        return answer({"instruments": listed, "limits": limits})

    async def progress(self, request: HttpRequest) -> Response:
        return answer(self.jobs.status())

    async def upload(self, request: HttpRequest) -> Response:
        if not same_origin(request):
            return error(403, "requests from other web sites are refused")
        try:
            data = await read_upload(request, self.config)
            stored = await run_in_threadpool(self.store_prompt, data)
        except TooLarge as err:
            return error(413, str(err))
        except BangerError as err:
            return error(400, err.message, err.hint)
        counts = stored["score"].note_counts()
        return answer({"prompt": stored["url"], "bars": stored["bars"], "bpm": stored["score"].bpm,
                       "instruments": [INSTRUMENTS[i].name for i in counts
                                       if not INSTRUMENTS[i].is_drums],
                       "drums": any(INSTRUMENTS[i].is_drums for i in counts)}, status=201)

    def store_prompt(self, data: bytes) -> dict:
        """Read `data` with banger's MIDI reader; keep it under a name made from its content."""
        tokenizer = self.banger.tokenizer
        score = tokenizer.read(data)  # MidiReadError: the reader's own message
        if not score.notes:
            raise UsageError("the MIDI file has no notes", hint="upload a file with notes in it")
        path = self.out_dir / f"prompt-{hashlib.sha256(data).hexdigest()[:16]}.mid"
        if not path.exists():
            atomic_write(path, lambda temporary: temporary.write_bytes(data))
        # counted in the prompt's own time signatures, as --prompt-bars and --rewrite count
        # them (a 3/4 waltz of 12 bars is 12 bars, not 9 bars of 4/4)
        starts = PromptFile(data, tokenizer.grid).bar_starts(max(n.start for n in score.notes) + 1)
        return {"url": self.files.add(path), "score": score, "bars": len(starts) - 1}

    async def generate(self, request: HttpRequest) -> Response:
        if not same_origin(request):
            return error(403, "requests from other web sites are refused")
        try:
            options, prompt = await self.read_options(request)
            piece_request = request_from(options, self.config, prompt=prompt)
            future = self.jobs.submit(lambda report: self.run(piece_request, report))
        except TooLarge as err:
            return error(413, str(err))
        except Busy as err:
            return error(503, f"{err}; try again in a moment")
        except BangerError as err:
            return error(400, err.message, err.hint)
        try:
            return answer({"pieces": await asyncio.wrap_future(future)})
        except UsageError as err:  # e.g. a prompt with nothing left after --prompt-bars
            return error(400, err.message, err.hint)
        except BangerError as err:  # the disk is full, the model file is broken, ...
            return error(500, err.message, err.hint)
        except Exception:  # a bug: keep the traceback for the terminal, plain words for the page
            traceback.print_exc(file=sys.stderr)
            return error(500, "generation failed (an internal error; see the terminal)")

    async def read_options(self, request: HttpRequest) -> tuple[object, bytes | None]:
        """The options of a generate request and the bytes of its prompt, if any: a JSON
        body naming an earlier upload or piece, or a form with `options` and a `file`."""
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            data, text = await read_form(request, self.config)
            await run_in_threadpool(self.store_prompt, data)  # the reader's checks (off the loop)
            return parse_json(text or "{}"), data
        options = parse_json(await read_body(request, self.config.max_json_bytes, "options"))
        if isinstance(options, dict) and options.get("prompt") is not None:
            return options, await run_in_threadpool(self.read_held, options["prompt"])
        return options, None

    def read_held(self, value: object) -> bytes:
        """The bytes of a MIDI file this server holds, named by its URL (to continue it)."""
        path = self.files.path(prompt_name(value))
        if path is None or path.suffix != ".mid":
            raise UsageError(f"no MIDI file {value!r} on this server",
                             hint="upload the file to /api/uploads first, or use a piece's midi URL")
        data = path.read_bytes()
        if not self.banger.tokenizer.read(data).notes:
            raise UsageError(f"the prompt {value} has no notes", hint="continue a piece with notes")
        return data

    def run(self, piece_request, report) -> list[dict]:
        """The worker's job: generate, write MIDI and MP3, describe them (a bad prompt
        was refused before queueing, so the reader's errors here are the library's)."""
        tokenizer = self.banger.tokenizer
        # the previews of pieces that end first are made while the others are written
        previews = start_previews("mp3", synth="builtin", soundfont=None,
                                  variants=piece_request.variants)
        try:
            pieces = self.banger.generate(piece_request, progress=report,
                                          finished=finished_piece(previews))
            # a fresh suffix per request: the same seed twice gives the same music, two files
            template = "{lead}-{seed}-{n}-" + secrets.token_hex(3)
            saved = save_pieces(pieces, self.out_dir, template=template, audio="mp3",
                                steps_per_bar=tokenizer.config.steps_per_bar, previews=previews)
        finally:
            if previews is not None:
                previews.close()
        return [piece_json(record.piece, midi=self.files.add(record.midi),
                           audio=self.files.add(record.audio) if record.audio else None,
                           steps_per_quarter=tokenizer.grid.steps_per_quarter)
                for record in saved]

    async def serve_file(self, request: HttpRequest) -> Response:
        path = self.files.path(request.path_params["name"])
        if path is None:
            return error(404, "not found")
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
                            headers=HEADERS, filename=path.name if path.suffix == ".mid" else None)


async def read_body(request: HttpRequest, limit: int, what: str) -> bytes:
    """The body, read in chunks and refused as soon as it passes `limit` bytes (a client
    can lie in Content-Length or send none)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the {what} are too large (over {limit:,} bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"the {what} are too large (over {limit:,} bytes)")
    return bytes(body)


async def read_upload(request: HttpRequest, config: WebConfig) -> bytes:
    """A MIDI file: the `file` field of a form, or the raw body."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return (await read_form(request, config))[0]
    return await read_body(request, config.max_upload_bytes, "file's bytes")


async def read_form(request: HttpRequest, config: WebConfig) -> tuple[bytes, str | None]:
    """(the `file` field's bytes, the `options` field) of a bounded multipart form."""
    limit = config.max_upload_bytes
    body = await read_body(request, limit + config.max_json_bytes + 4096, "form's fields")

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async with HttpRequest(request.scope, receive=replay).form(max_files=1, max_fields=2) as form:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise UsageError("the form has no MIDI file", hint="send it in a field named 'file'")
        data = await upload.read(limit + 1)
        options = form.get("options")
    if len(data) > limit:
        raise TooLarge(f"the file is too large (over {limit:,} bytes)")
    return data, options if isinstance(options, str) else None


def same_origin(request: HttpRequest) -> bool:
    """False for a POST that a page of another site makes the browser send (a plain form
    needs no CORS preflight): browsers name the page's origin, scripts like curl send none."""
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.headers.get('host')}"


def parse_json(text: str | bytes) -> object:
    try:
        return json.loads(text or b"{}")
    except (ValueError, UnicodeDecodeError) as err:
        raise UsageError(f"the options are not JSON: {err}",
                         hint='send a JSON object, e.g. {"bars": 8}') from None


def answer(content: dict, *, status: int = 200) -> JSONResponse:
    return JSONResponse(content, status_code=status, headers=HEADERS)


def error(status: int, message: str, hint: str | None = None) -> JSONResponse:
    """The API's one error shape: {"error": message} (plus "hint" when there is one)."""
    return answer({"error": message, **({"hint": hint} if hint else {})}, status=status)


async def not_found(request: HttpRequest, exc: Exception) -> Response:
    return error(404, "not found")


async def not_allowed(request: HttpRequest, exc: Exception) -> Response:
    return error(405, f"{request.method} is not allowed here")
