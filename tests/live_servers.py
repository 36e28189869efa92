"""The studio under the real servers it runs on, and an HTTP client that sends requests byte for byte.

`start("werkzeug", ...)` runs `python app.py` (the dev server), `start("gunicorn", ...)` runs
gunicorn with the shipped `gunicorn.conf.py`, each on a free loopback port over a given DATA_DIR.
`exchange` writes a request exactly as given, so paths reach the server unnormalised, and reads
the answer the way an HTTP client does.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ADMIN_KEY, ADMIN_PASSWORD

ROOT = Path(__file__).resolve().parent.parent
START_SECONDS = 60


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(kind, data_dir, work_dir):
    """(process, port) of the studio started under `kind` ("werkzeug" or "gunicorn"), once /healthz answers."""
    port = free_port()
    work_dir = Path(work_dir)
    env = {**os.environ, "DATA_DIR": str(data_dir), "BACKUP_DIR": str(work_dir / "backups"),
           "API_KEYS": ADMIN_KEY, "ADMIN_PASSWORD": ADMIN_PASSWORD, "APP_HOST": "127.0.0.1",
           "APP_PORT": str(port), "DOTENV_PATH": str(work_dir / "no.env"), "PYTHONUNBUFFERED": "1"}
    if kind == "werkzeug":
        command = [sys.executable, "app.py"]
    else:
        command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]
    log_path = work_dir / f"{kind}-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if exchange(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")[0] == 200:
                return process, port
        except OSError:
            time.sleep(0.2)             # not listening yet: a starting process offers no event to wait on
    stop(process)
    raise AssertionError(f"{kind} did not start:\n{log_path.read_text()[-3000:]}")


def stop(process):
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def exchange(port, raw, timeout=20):
    """Send the raw request bytes and return (status, {header: value}, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        return read_response(sock)


def read_response(sock):
    """Headers, then Content-Length bytes, chunked data, or what comes until the server closes.

    Never wait for the close when the length is known: after answering, werkzeug's dev server
    keeps reading any body the view left unread until the client hangs up.
    """
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    raw_head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = raw_head.decode("latin-1").split("\r\n")
    fields = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    chunked = fields.get("transfer-encoding") == "chunked"
    length = int(fields.get("content-length", -1))
    while (length < 0 and not (chunked and body.endswith(b"0\r\n\r\n"))) or len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), fields, _dechunk(body) if chunked else body


def _dechunk(body):
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        size = int(size.split(b";")[0], 16)
        if size == 0:
            break
        out, body = out + rest[:size], rest[size + 2:]
    return out


def get(port, target, key=None, headers=(), timeout=20):
    """GET `target` (str or bytes, sent as-is) with an optional API key."""
    if isinstance(target, str):
        target = target.encode("utf-8")
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    if key:
        lines.append(f"Authorization: Bearer {key}".encode())
    lines += [f"{name}: {value}".encode() for name, value in headers]
    return exchange(port, b"\r\n".join(lines) + b"\r\n\r\n", timeout)
