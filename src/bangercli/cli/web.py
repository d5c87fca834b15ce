"""`banger web`: serve the page (web/) on this machine and open it in the browser."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import sys
import tempfile
import threading
import time
import webbrowser
from pathlib import Path
from typing import Optional

import typer

from .common import check_model_name, check_output_folder, stderr
from ..errors import BangerError, UsageError

EXTRA_HINT = "pip install 'banger[web]'"


def web(
    *,  # typer passes every argument and option by keyword
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (another than "
                             "127.0.0.1 exposes the page to the network)."),
    port: int = typer.Option(8000, "--port", help="Port to listen on (0: any free port)."),
    model: str = typer.Option("default", "--model", "-m", help="Model name or checkpoint path."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder to keep the files in "
                                       "(default: a temporary folder removed on exit)."),
    no_browser: bool = typer.Option(False, "--no-browser", help="Do not open the page."),
) -> None:
    """Serve a web page to generate music in the browser (needs the web extra)."""
    uvicorn = _web_extra()
    check_model_name(model)
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {port}")
    if out is not None:
        check_output_folder(out)
    listener = _listen(host, port)  # before the model loads: a taken port fails at once
    if not _is_loopback(host):
        stderr.print(f"warning: --host {host} lets other machines on the network use this page "
                     "(no password, no encryption)", soft_wrap=True, markup=False)
    from ..api import load_model
    from ..web.app import LOOPBACK_NAMES, create_app

    stderr.print(f"loading model {model} ...", markup=False, soft_wrap=True)
    banger = load_model(model)
    folder = out if out is not None else Path(tempfile.mkdtemp(prefix="banger-web-"))
    app = create_app(banger, folder,
                     allowed_hosts=LOOPBACK_NAMES if _is_loopback(host) else None)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off",
                                           timeout_graceful_shutdown=3))
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{listener.getsockname()[1]}/"
    print(url, flush=True)  # the result: where the page is
    stderr.print(f"serving {url} (files in {folder}); Ctrl-C to stop", markup=False,
                 soft_wrap=True)
    if not no_browser:
        threading.Thread(target=_open_when_started, args=(server, url), daemon=True).start()
    try:
        server.run(sockets=[listener])  # Ctrl-C: uvicorn shuts down, then raises it again
    except KeyboardInterrupt:
        pass  # stopping is what Ctrl-C asks for: not an error
    finally:
        app.state.jobs.close()
        listener.close()
        if out is None:
            shutil.rmtree(folder, ignore_errors=True)
    stderr.print("stopped", markup=False, soft_wrap=True)


def _web_extra():
    """uvicorn, once the web extra's packages are known to import; else one clear error."""
    try:
        import multipart  # noqa: F401  python-multipart: the upload form
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise BangerError("banger web needs the web extra", hint=EXTRA_HINT) from None
    return uvicorn


def _listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket, or a one-line error (port taken, unknown address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise UsageError(f"--host {host}: {err.strerror}") from None
    family, kind, proto, _, address = infos[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
        listener.listen(64)
    except OSError as err:
        listener.close()
        raise UsageError(f"cannot listen on {host}:{port}: {err.strerror or err}",
                         hint="choose another --port, or --port 0 for any free one") from None
    return listener


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _open_when_started(server, url: str) -> None:
    for _ in range(600):  # up to a minute
        if server.started:
            if not webbrowser.open(url):
                print(f"open {url} in a browser", file=sys.stderr)
            return
        time.sleep(0.1)
