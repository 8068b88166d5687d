"""The explorer's HTTP server: the page, its assets and the JSON endpoints, on one host and port.

    GET  /                     the page (static/index.html)
    GET  /static/<file>        its script and style sheet (package data)
    GET  /api/describe         what the run can show (capabilities, capsule layout, test images)
    POST /api/<endpoint>       a JSON object in, a JSON object out (see capsgen.explore.api)

Answers are JSON or the shipped files; every problem is a 4xx with ``{"error": "<one line>"}``
(an unexpected failure is a 500 with the exception's name, logged as one line): no traceback
ever reaches the client or ends the server. Standard library only (``ThreadingHTTPServer``);
it binds only the host it is given and reads the run folder without writing to it.
"""
from __future__ import annotations

import errno
import json
import socket
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Callable

from capsgen.errors import CapsgenError
from capsgen.explore.api import TEST_IMAGES, BadRequest, Explorer, NotFound
from capsgen.runs import open_run
from capsgen.train.rundir import RunDir

MAX_BODY = 1_000_000    # bytes of a request body; the largest real one (CelebA: 40 x 2 x 32 values) is ~50 kB
STATIC = {"index.html": "text/html; charset=utf-8", "explore.js": "text/javascript; charset=utf-8",
          "explore.css": "text/css; charset=utf-8"}


def open_explorer(path: str | Path, device: str = "cpu", checkpoint: str = "last") -> Explorer:
    """Reopen a finished run for exploring; refuse a run that a process is still writing."""
    run = RunDir(path)
    run.read_config()                         # a missing or broken run fails here, in one line
    if run.in_use():
        raise CapsgenError(f"{run.path} is still being written by a capsgen process (training); "
                           "explore it when that process has finished")
    opened = open_run(path, checkpoint, device)
    try:
        test, problem = opened.test_batch(TEST_IMAGES), ""
    except CapsgenError as exc:                # the run's data is not on this machine
        test, problem = None, str(exc).splitlines()[0]
    return Explorer(opened, test, problem)


def static_file(name: str) -> bytes:
    return resources.files("capsgen.explore").joinpath("static", name).read_bytes()


def make_handler(explorer: Explorer, log: Callable[[str], None]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "capsgen-explore"
        protocol_version = "HTTP/1.1"
        timeout = 120          # seconds an idle kept-alive connection may hold its thread

        def log_message(self, format: str, *args) -> None:   # noqa: A002 - the base class's name
            pass                                              # quiet: one line per problem only

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj: dict) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def _error(self, status: int, message: str) -> None:
            self._json(status, {"error": message})

        def _api(self, name: str, params: dict) -> None:
            try:
                self._json(200, explorer.handle(name, params))
            except NotFound as exc:
                self._error(404, str(exc))
            except BadRequest as exc:
                self._error(400, str(exc))
            except Exception as exc:   # a bug must not kill the server nor show a traceback
                log(f"capsgen explore: /api/{name} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                self._error(500, f"internal error ({type(exc).__name__}); see the terminal")

        def do_GET(self) -> None:  # noqa: N802 - http.server's API
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self._send(200, static_file("index.html"), STATIC["index.html"])
            elif path.startswith("/static/") and path[len("/static/"):] in STATIC:
                name = path[len("/static/"):]
                self._send(200, static_file(name), STATIC[name])
            elif path.startswith("/api/"):
                self._api(path[len("/api/"):], {})
            else:
                self._error(404, f"no page {path}; open / for the explorer")

        do_HEAD = do_GET

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                self.close_connection = True
                return self._error(400, "bad Content-Length")
            if length < 0 or length > MAX_BODY:
                self.close_connection = True
                return self._error(413, f"request body over {MAX_BODY} bytes")
            raw = self.rfile.read(length)      # read even for a 404, so the connection stays in step
            if not path.startswith("/api/"):
                return self._error(404, f"no endpoint {path}; POST to /api/<endpoint>")
            if path[len("/api/"):] not in explorer.routes:
                return self._api(path[len("/api/"):], {})      # the 404 naming the endpoints
            try:
                params = json.loads(raw or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                return self._error(400, "the request body is not valid JSON")
            if not isinstance(params, dict):
                return self._error(400, "the request body must be a JSON object")
            self._api(path[len("/api/"):], params)

    return Handler


class ExploreServer(ThreadingHTTPServer):
    # A browser keeps its connections open (keep-alive), each a handler thread waiting for the next
    # request: daemon threads, which server_close does not wait for, so Ctrl-C ends the server.
    daemon_threads = True
    allow_reuse_address = True
    explorer: Explorer         # what it serves (set by make_server)


def make_server(explorer: Explorer, host: str = "127.0.0.1", port: int = 8000,
                log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> ExploreServer:
    """Bind ``host:port`` (port 0: a free port); a busy port or an unknown host is one CapsgenError."""
    if not 0 <= port <= 65535:
        raise CapsgenError(f"--port {port}: choose a port in 0..65535")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise CapsgenError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    bound = type("ExploreServer", (ExploreServer,), {"address_family": family})   # IPv4 or IPv6 host
    try:
        server = bound((host, port), make_handler(explorer, log))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CapsgenError(f"port {port} on {host} is in use; choose another with --port") from None
        raise CapsgenError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    server.explorer = explorer
    return server


def url_of(server: ExploreServer) -> str:
    host, port = server.server_address[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(path: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          checkpoint: str = "last") -> int:
    """Serve the explorer until interrupted (Ctrl-C reaches the caller as KeyboardInterrupt)."""
    explorer = open_explorer(path, device, checkpoint)
    server = make_server(explorer, host, port)
    try:
        print(f"capsgen explore: {explorer.opened.train_config.family} run {explorer.opened.run.path} at "
              f"{url_of(server)} (Ctrl-C stops it)", flush=True)
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0
