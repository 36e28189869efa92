"""providers/http.py: one kept-alive client per provider, closed by the provider's close().

A small HTTP/1.1 server counts the connections it is given and sees them closed, so the tests
check what goes over the wire, not the client's attributes.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from providers import build_providers
from providers.base import ReportState
from providers.http import HttpClient
from providers.liblib import LiblibProvider


class CountingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.opened = 0
        self.closed = threading.Semaphore(0)    # released once per connection the client ended
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"       # keep-alive, like the providers' servers

    def setup(self):
        super().setup()
        self.server.opened += 1

    def finish(self):
        super().finish()
        self.server.closed.release()

    def do_GET(self):
        self._answer({"ok": True})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer({"code": 0, "data": {"generateStatus": 1}})     # Liblib: queued

    def _answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    server = CountingServer()
    server.thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_calls_share_one_connection_until_close(server):
    client = HttpClient("test", server.base_url)
    assert [client.get("/x").json() for _ in range(3)] == [{"ok": True}] * 3
    assert server.opened == 1
    client.close()
    assert server.closed.acquire(timeout=5)             # the server saw the connection end
    assert client.get("/x").json() == {"ok": True}     # usable again: a new connection
    assert server.opened == 2
    client.close()
    client.close()                                      # closing twice is harmless


def test_provider_keeps_one_client_and_close_ends_its_connections(server):
    provider = LiblibProvider({"DATA_DIR": "/nonexistent", "LIBLIB_API_BASE": server.base_url,
                               "LIBLIB_ACCESS_KEY": "ak", "LIBLIB_SECRET_KEY": "sk"})
    task = {"id": "t1", "provider_task_id": "g1", "params": {"n": 1}}
    assert [provider.query(task).state for _ in range(3)] == [ReportState.QUEUED] * 3
    assert server.opened == 1                           # before: a new connection per call
    provider.close()
    assert server.closed.acquire(timeout=5)


def test_every_provider_can_be_closed(tmp_path):
    for provider in build_providers({"DATA_DIR": str(tmp_path)}).values():
        provider.close()
        provider.close()


def test_report_states_keep_their_string_values():
    assert [str(state) for state in ReportState] == ["queued", "running", "succeeded", "failed", "cancelled"]
    assert ReportState.FAILED == "failed"
