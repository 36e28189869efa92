"""Picture URLs: private addresses refused, malformed URLs a 400, and one wall-clock deadline.

The dripping servers here are real sockets on loopback that answer as slowly as an attacker
would (one byte at a time, or never accepting); the app reaches them with ALLOW_PRIVATE_URLS,
the development setting that lets picture URLs reach private addresses.
"""

import itertools
import socket
import threading
import time

import pytest

import safe_fetch
from app import create_app
from tests.conftest import picture
from tests.servers import picture_app, serving

DEADLINE = 1                    # seconds: the tests shorten safe_fetch.DEADLINE_SECONDS to this
SLACK = 2                       # seconds more a loaded machine may take (without the one deadline: ~100 s)


@pytest.fixture
def picture_server():
    """/pic.png serves a PNG, /to?url=... redirects."""
    with serving(picture_app({"/pic.png": (picture(), "image/png")})) as server:
        yield server.base_url


@pytest.fixture
def private_client(tmp_path, monkeypatch):
    """A client of an app with ALLOW_PRIVATE_URLS on and the fetch deadline cut to DEADLINE."""
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    monkeypatch.setattr(safe_fetch, "DEADLINE_SECONDS", DEADLINE)
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "test",
                      "ALLOW_PRIVATE_URLS": "1"})
    return app.test_client()


# ---- private addresses

@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/pic.png", "http://[::1]:{port}/pic.png",
                                 "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/pic.png",
                                 "http://localhost:{port}/pic.png", "file:///etc/passwd",
                                 "gopher://127.0.0.1:70/x"])
def test_ssrf_targets_are_refused(client, picture_server, url):
    resp = client.post("/generate", json={"image": url.format(port=picture_server.rsplit(":", 1)[1])})
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "unsafe_url"
    assert resp.get_json()["error"]["field"] == "image"


def test_picture_urls_work_and_redirects_into_private_ranges_are_refused(client, picture_server, monkeypatch):
    # No public internet here: treat the test server's own address as if it were public, and only it.
    real = safe_fetch.is_public
    monkeypatch.setattr(safe_fetch, "is_public", lambda address: address == "127.0.0.1" or real(address))
    assert client.post("/generate", json={"image": picture_server + "/pic.png"}).status_code == 202
    port = picture_server.rsplit(":", 1)[1]
    for target in (f"http://127.0.0.2:{port}/pic.png", "http://169.254.169.254/", f"http://[::1]:{port}/pic.png"):
        resp = client.post("/generate", json={"image": f"{picture_server}/to?url={target}"})
        assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "unsafe_url", target


def test_allow_private_urls_is_off_by_default_and_reaches_loopback_when_on(app, private_client, picture_server):
    assert app.config["ALLOW_PRIVATE_URLS"] is False
    assert private_client.post("/generate", json={"image": picture_server + "/pic.png"}).status_code == 202


# ---- malformed URLs: a 400 naming the field, never a 500

MALFORMED = [
    "http://[::1/", "http://[zz::1]/", "http://[::1]x/", "http://[::1]]/", "http://]::1[/", "https://[]/",
    "http://[1.2.3.4]/", "http://[v1.x]/", "http://[::1]:99999/", "http://example.com:99999/",
    "http://example.com:abc/", "http://example.com:-1/", "http://example.com:8o/", "http:///pic.png",
    "http://:80/", "http://?x", "http://#frag", "http://a..b/pic.png", "http://" + "a" * 64 + ".com/",
    "http://exa mple.com/", "http://example.com/\nx.png", "http://ex\tample.com/", "http://\x00/",
    "http://\u3002/", "https://example.com:65536/",
]


def test_malformed_picture_urls_are_a_400_naming_the_field(app, client, png_b64):
    # Many requests in a row: a clock that moves a minute per request keeps the task rate limit out of it.
    minutes = itertools.count(step=61)
    app.extensions["rate_limiter"].clock = lambda: float(next(minutes))
    wrong = []
    for url in MALFORMED:
        for endpoint, body, field in (("/generate", {"image": url}, "image"),
                                      ("/generate", {"image": png_b64, "image_tail": url}, "image_tail"),
                                      ("/generate_image", {"image": url}, "image")):
            resp = client.post(endpoint, json=body)
            error = (resp.get_json() or {}).get("error", {})
            # A control character is refused earlier, as text no field may hold; any other fault as a URL.
            expected = {"invalid_url", "invalid_field"} if any(ord(c) < 32 for c in url) else {"invalid_url"}
            if resp.status_code != 400 or error.get("code") not in expected or error.get("field") != field:
                wrong.append((url, endpoint, field, resp.status_code, error))
    assert not wrong


# ---- one wall-clock deadline over the whole fetch

class Dripper:
    """A loopback server that sends `prefix` at once, then `drip` one byte at a time, every `interval` s."""

    def __init__(self, prefix=b"", drip=b"", interval=0.2, accept=True):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0 if not accept else 16)
        self.port = self.listener.getsockname()[1]
        self.prefix, self.drip, self.interval = prefix, drip, interval
        self.stop = threading.Event()
        self.held = []
        if accept:
            threading.Thread(target=self._serve, daemon=True).start()
        else:
            # Never accept, and fill the accept queue, so a new connect waits for the handshake.
            for _ in range(4):
                held = socket.socket()
                held.setblocking(False)
                held.connect_ex(("127.0.0.1", self.port))
                self.held.append(held)

    def _serve(self):
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return                                  # closed
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(self.prefix)
                for i in range(len(self.drip)):
                    if self.stop.wait(self.interval):
                        return
                    conn.sendall(self.drip[i:i + 1])
            except OSError:
                return                                  # the client gave up: that is the point

    def close(self):
        self.stop.set()
        for held in self.held:
            held.close()
        self.listener.close()


SLOW = {
    "slow headers": dict(prefix=b"HTTP/1.1 200 OK\r\n", drip=b"X-Slow: " + b"a" * 500 + b"\r\n\r\n"),
    "slow body": dict(prefix=b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n",
                      drip=picture()[:5000]),
    "slow chunked body": dict(prefix=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                              drip=b"1\r\nx\r\n" * 1000),
    "silent after connect": dict(prefix=b"", drip=b" ", interval=60),
    "slow connect (never accepted)": dict(accept=False),
}


@pytest.mark.parametrize("case", list(SLOW))
def test_a_dripping_server_is_cut_off_at_the_deadline(private_client, case):
    server = Dripper(**SLOW[case])
    try:
        started = time.monotonic()
        resp = private_client.post("/generate", json={"image": f"http://127.0.0.1:{server.port}/pic.png"})
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert resp.status_code == 422 and resp.get_json()["error"]["code"] == "url_unavailable", resp.get_json()
    assert resp.get_json()["error"]["field"] == "image"
    assert elapsed <= DEADLINE + SLACK, f"{case}: {elapsed:.1f} s"


def test_the_deadline_covers_every_redirect_hop(private_client):
    """Three hops that each finish their headers inside the deadline still end at the one deadline."""
    location, hops = "http://127.0.0.1:1/never", []
    for _ in range(3):          # built from the last hop back to the first
        hops.append(Dripper(prefix=f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n".encode(),
                            drip=b"\r\n", interval=DEADLINE * 0.4))
        location = f"http://127.0.0.1:{hops[-1].port}/next"
    try:
        started = time.monotonic()
        resp = private_client.post("/generate", json={"image": location})
        elapsed = time.monotonic() - started
    finally:
        for hop in hops:
            hop.close()
    assert resp.status_code == 422 and "longer than" in resp.get_json()["error"]["message"], resp.get_json()
    assert elapsed <= DEADLINE + SLACK, f"{elapsed:.1f} s"


def test_the_deadline_is_a_parameter_too(private_client):
    server = Dripper(**SLOW["slow body"])
    try:
        with private_client.application.app_context():
            started = time.monotonic()
            with pytest.raises(safe_fetch.ValidationError) as caught:
                safe_fetch.fetch(f"http://127.0.0.1:{server.port}/pic.png", "image", deadline=0.5)
            elapsed = time.monotonic() - started
    finally:
        server.close()
    assert caught.value.code == "url_unavailable" and "0.5 s" in caught.value.message
    assert elapsed <= 1.5


def test_a_tls_handshake_that_never_finishes_is_cut_off_at_the_deadline(private_client):
    server = Dripper(prefix=b"", drip=b"\x16", interval=0.4)      # one byte of a TLS record, then silence
    try:
        started = time.monotonic()
        resp = private_client.post("/generate", json={"image": f"https://127.0.0.1:{server.port}/pic.png"})
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert resp.status_code == 422 and resp.get_json()["error"]["code"] == "url_unavailable", resp.get_json()
    assert elapsed <= DEADLINE + SLACK, f"{elapsed:.1f} s"
