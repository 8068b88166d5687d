"""The explorer's HTTP server and command (capsgen/explore/server.py, capsgen explore): the page and
its assets, JSON errors that never end the server, a read-only run folder, the given host only,
and one line for a bad RUN, a busy port, a run still being trained, and Ctrl-C."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from capsgen.cli import main
from capsgen.errors import CapsgenError
from capsgen.explore.server import make_server, open_explorer, url_of
from capsgen.train.rundir import RunDir


@pytest.fixture
def run(tiny_capsnet_run) -> Path:
    return tiny_capsnet_run


def folder_state(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


@pytest.fixture
def server(run):
    lines: list[str] = []
    srv = make_server(open_explorer(run), "127.0.0.1", 0, log=lines.append)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.logged = lines
    yield srv
    srv.shutdown()
    srv.server_close()


def request(srv, method: str, path: str, body: bytes | None = None, conn=None):
    conn = conn or http.client.HTTPConnection(*srv.server_address[:2], timeout=30)
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body is not None else {})
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, resp.getheader("Content-Type"), data


def test_serves_the_page_and_its_assets_from_the_package(server):
    status, kind, body = request(server, "GET", "/")
    assert status == 200 and kind.startswith("text/html") and b'src="/static/explore.js"' in body
    for name, kind_want in (("explore.js", "text/javascript"), ("explore.css", "text/css")):
        status, kind, body = request(server, "GET", f"/static/{name}")
        assert status == 200 and kind.startswith(kind_want) and len(body) > 500
    status, kind, body = request(server, "GET", "/api/describe")
    assert status == 200 and json.loads(body)["family"] == "capsnet"
    assert url_of(server).startswith("http://127.0.0.1:")
    for path in ("/", "/static/explore.js", "/static/explore.css"):       # nothing from elsewhere (no CDN)
        body = request(server, "GET", path)[2]
        assert b"http:" not in body and b"https:" not in body and b"//cdn" not in body


@pytest.mark.parametrize("method, path, body, status, needle", [
    ("POST", "/api/decode", b"{not json", 400, "not valid JSON"),
    ("POST", "/api/decode", b"[1, 2]", 400, "JSON object"),
    ("POST", "/api/decode", json.dumps({"poses": [[1.5] * 8] * 10, "active": [True] + [False] * 9}).encode(),
     400, "outside [-1, 1]"),
    ("POST", "/api/encode", b'{"index": -1}', 400, "0..199"),
    ("POST", "/api/nosuch", b"{}", 404, "/api/describe"),
    ("GET", "/api/nosuch", None, 404, "/api/decode"),
    ("GET", "/etc/passwd", None, 404, "open /"),
    ("GET", "/static/../server.py", None, 404, "open /"),
    ("POST", "/upload", b"{}", 404, "POST to /api/"),
])
def test_bad_requests_get_a_json_message_and_the_server_keeps_answering(server, method, path, body, status, needle):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    got, kind, data = request(server, method, path, body, conn)
    assert got == status and kind == "application/json"
    message = json.loads(data)["error"]
    assert needle in message and "Traceback" not in message and len(message.splitlines()) == 1
    # the same (kept-alive) connection still works: the body was read even when refused
    assert request(server, "GET", "/api/describe", conn=conn)[0] == 200


def test_an_oversized_body_is_refused_and_an_internal_failure_is_one_json_line(server, monkeypatch):
    # the server answers from the header alone, without reading (or waiting for) the body
    with socket.create_connection(server.server_address[:2], timeout=30) as raw:
        raw.sendall(b"POST /api/decode HTTP/1.1\r\nHost: x\r\nContent-Length: 1000001\r\n\r\n")
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    head, _, data = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and "over" in json.loads(data)["error"]

    def broken(params):
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setitem(server.explorer.routes, "describe", broken)
    status, _, data = request(server, "GET", "/api/describe")
    assert status == 500 and json.loads(data) == {"error": "internal error (RuntimeError); see the terminal"}
    assert server.logged == ["capsgen explore: /api/describe failed: RuntimeError: a bug"]
    monkeypatch.undo()
    assert request(server, "GET", "/api/describe")[0] == 200


def test_the_run_folder_is_left_as_it_was_and_only_the_given_host_is_bound(run, server):
    before = folder_state(run)
    for body in (b'{"index": 3}', b'{"index": 4}'):
        assert request(server, "POST", "/api/encode", body)[0] == 200
    request(server, "POST", "/api/decode", b"{bad")
    assert folder_state(run) == before
    assert server.server_address[0] == "127.0.0.1"
    others = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
    for ip in sorted(others)[:1]:
        if ip.startswith("127."):
            continue
        with pytest.raises(OSError):
            socket.create_connection((ip, server.server_address[1]), timeout=2).close()


def test_a_busy_port_a_bad_run_and_a_run_in_training_are_one_line(run, tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(CapsgenError, match=f"port {port} on 127.0.0.1 is in use"):
            make_server(open_explorer(run), "127.0.0.1", port)
        assert main(["explore", str(run), "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert err == f"capsgen: error: port {port} on 127.0.0.1 is in use; choose another with --port\n"
    cases = [([str(tmp_path / "nope")], "no such run folder"),
             ([str(tmp_path)], "not a capsgen run folder"),
             ([str(run), "--port", "70000"], "choose a port in 0..65535"),
             ([str(run), "--host", "no-such-host.invalid"], "cannot resolve it")]
    for args, needle in cases:
        assert main(["explore", *args]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.splitlines()) == 1
    writer = RunDir(run)
    writer.lock()                                 # what a training process holds
    try:
        assert main(["explore", str(run), "--port", "0"]) == 2
        assert "still being written" in capsys.readouterr().err
    finally:
        writer.unlock()
    assert not RunDir(run).in_use() and not RunDir(tmp_path).in_use()


@pytest.mark.slow
def test_ctrl_c_stops_the_server_with_one_line_and_exit_130(run):
    # PYTHONFAULTHANDLER: a server that does not stop is made to dump its threads (SIGABRT) below
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-m", "capsgen", "explore", str(run), "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "capsgen explore: capsnet run" in line and "http://127.0.0.1:" in line
        url = line.split(" at ", 1)[1].split()[0]
        host, port = url.removeprefix("http://").rstrip("/").split(":")
        # a client that stays connected, as a browser does (keep-alive), must not hold Ctrl-C up
        browser = http.client.HTTPConnection(host, int(port), timeout=30)
        assert request(None, "GET", "/api/describe", conn=browser)[0] == 200
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            pytest.fail("still serving 30 s after Ctrl-C; its threads:\n" + proc.communicate(timeout=30)[1])
        browser.close()
    finally:
        proc.kill()
    assert proc.returncode == 130 and err == "capsgen: interrupted\n"


def test_every_page_file_is_package_data():
    import fnmatch

    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = patterns["capsgen.explore"]
    files = sorted(p.name for p in (root / "capsgen" / "explore" / "static").iterdir())
    assert files == ["explore.css", "explore.js", "index.html"]
    assert all(any(fnmatch.fnmatch(f"static/{f}", pat) for pat in shipped) for f in files)
