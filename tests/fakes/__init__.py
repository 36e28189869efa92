"""Local protocol servers that stand in for the real providers in tests and by hand.

Each provider module here (`kling`, `dashscope`, `liblib`, `ai302`) subclasses `FakeServer` and
speaks that provider's protocol as PROVIDERS.md documents it: it checks auth exactly, rejects
wrong field formats the way the provider does, moves tasks through their states over polls,
serves real MP4/PNG results from URLs that expire, counts submissions, and injects faults on
request. `python -m tests.fakes kling --port 9001` runs one by hand.
"""

import hashlib
import hmac
import io
import itertools
import secrets
import threading
import time
from collections import Counter, defaultdict, deque
from contextlib import contextmanager

import numpy as np
from flask import Flask, Response, abort, request
from PIL import Image
from werkzeug.serving import make_server

_SAMPLES = {}
_SAMPLES_LOCK = threading.Lock()


def sample_png(width=640, height=360, seed=0):
    """A real PNG picture (cached)."""
    key = ("png", width, height, seed)
    with _SAMPLES_LOCK:
        if key not in _SAMPLES:
            rng = np.random.default_rng(seed)
            y, x = np.mgrid[0:height, 0:width]
            img = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 90 + seed * 20 % 160)], -1)
            img = (img + rng.integers(0, 20, img.shape)).clip(0, 255).astype(np.uint8)
            out = io.BytesIO()
            Image.fromarray(img).save(out, "PNG")
            _SAMPLES[key] = out.getvalue()
        return _SAMPLES[key]


def sample_mp4(width=320, height=240, seconds=1, fps=24):
    """A real H.264 MP4 clip (cached), made with the studio's own writer."""
    import tempfile
    from pathlib import Path

    import media

    key = ("mp4", width, height, seconds, fps)
    with _SAMPLES_LOCK:
        if key not in _SAMPLES:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "clip.mp4"
                with media.Mp4Writer(path, width, height, fps) as writer:
                    for i in range(seconds * fps):
                        frame = np.zeros((height, width, 3), np.uint8)
                        frame[:, : (i * width) // (seconds * fps) + 1] = (40, 160, 220)
                        writer.write(frame)
                _SAMPLES[key] = path.read_bytes()
        return _SAMPLES[key]


class FakeServer:
    """A provider stand-in: a Flask app on a real local port, with state, faults and files.

    Subclasses set `name` and add the protocol's routes in `add_routes(app)`.
    `polls_to_finish` is how many status queries a task needs to go from queued to done.
    """

    name = "fake"

    def __init__(self, *, polls_to_finish=2, url_ttl=3600):
        self.polls_to_finish = polls_to_finish
        self.url_ttl = url_ttl
        self.lock = threading.RLock()
        self.tasks = {}                       # provider task id -> dict (subclass-defined)
        self.submissions = Counter()          # our task id (or body fingerprint) -> creates seen
        self.received = []                    # (method, path, json body) of every protocol request
        self.faults = defaultdict(deque)      # where -> queued fault names, consumed in order
        self.file_hits = Counter()            # file name -> downloads started
        self._files = {}                      # file name -> (bytes, mime)
        self._signing_key = secrets.token_bytes(16)
        self._ids = itertools.count(1)
        self.app = Flask(f"fake-{self.name}")
        self.app.add_url_rule("/files/<name>", "files", self._serve_file)
        self.add_routes(self.app)
        self._server = None
        self._thread = None
        self.base_url = None

    # ---- to override ----

    def add_routes(self, app):
        raise NotImplementedError

    # ---- lifecycle ----

    def start(self, host="127.0.0.1", port=0):
        self._server = make_server(host, port, self.app, threaded=True)
        self.base_url = f"http://{host}:{self._server.server_port}"
        # A short poll interval makes stop() quick; tests start and stop many servers.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self.base_url

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)

    @classmethod
    @contextmanager
    def running(cls, **options):
        """A started server of this protocol (the body of a fixture: `with X.running(...) as fake: yield fake`)."""
        server = cls(**options)
        server.start()
        try:
            yield server
        finally:
            server.stop()

    # ---- helpers for subclasses and tests ----

    def new_id(self, prefix=""):
        return f"{prefix}{next(self._ids):06d}{secrets.token_hex(4)}"

    def inject(self, where, *faults):
        """Queue faults for the next requests at `where` (e.g. "submit", "query", "download")."""
        with self.lock:
            self.faults[where].extend(faults)

    def take_fault(self, where):
        with self.lock:
            return self.faults[where].popleft() if self.faults[where] else None

    def record(self):
        with self.lock:
            self.received.append((request.method, request.path, request.get_json(silent=True)))

    def requests_to(self, path_part, method="POST"):
        """JSON bodies of received requests whose path contains `path_part`."""
        with self.lock:
            return [body for m, path, body in self.received if m == method and path_part in path]

    def publish(self, data, mime, ext, ttl=None):
        """Store a result file and return a signed URL that expires after `ttl` seconds."""
        name = f"{secrets.token_hex(8)}{ext}"
        with self.lock:
            self._files[name] = (data, mime)
        expires = int(time.time() + (self.url_ttl if ttl is None else ttl))
        return f"{self.base_url}/files/{name}?Expires={expires}&Signature={self._sign(name, expires)}", expires

    def _sign(self, name, expires):
        return hmac.new(self._signing_key, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()[:32]

    def _serve_file(self, name):
        with self.lock:
            entry = self._files.get(name)
            self.file_hits[name] += 1
        expires = request.args.get("Expires", "")
        signature = request.args.get("Signature", "")
        if entry is None or not expires.isdigit() or not hmac.compare_digest(signature, self._sign(name, int(expires))):
            abort(403)
        if int(expires) < time.time():
            return Response("<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
                            403, mimetype="application/xml")
        data, mime = entry
        fault = self.take_fault("download")
        if fault == "truncate":
            # Promise the whole file, send half, then close: a cut transfer.
            def cut():
                yield data[: len(data) // 2]
            return Response(cut(), 200, mimetype=mime, headers={"Content-Length": str(len(data))})
        if fault == "error":
            return Response("busy", 503)
        if fault == "not_found":
            abort(404)          # the link's object is gone from the CDN
        # Like the CDNs behind real result links: HTTP Range works, so a cut download can resume.
        return Response(data, 200, mimetype=mime).make_conditional(
            request, accept_ranges=True, complete_length=len(data))
