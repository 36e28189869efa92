"""The production set-up as shipped: gunicorn (gunicorn.conf.py) behind nginx (deploy/nginx.conf).

Slow clients — connections that trickle their headers or bodies a byte at a time — held every
gunicorn worker and /healthz stopped answering. Here 50 of them go through nginx while /healthz
must keep answering within 1 s. The nginx config is deploy/nginx.conf itself, with only its
ports, user and file paths changed for a temporary directory (`nginx_config`). gunicorn is read
the way gunicorn reads its config: the process is started and looked at (where it listens,
which files it leaves). bench/slow_clients_bench.py runs the same attack straight at gunicorn.
"""

import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ADMIN_KEY, ADMIN_PASSWORD
from tests.live_servers import stop

ROOT = Path(__file__).resolve().parent.parent
NGINX = "/usr/sbin/nginx"
SLOW_CONNECTIONS = 50


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url, timeout=30, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{process.args[0]} exited with {process.returncode}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def start_gunicorn(tmp, port, extra_env=None):
    """gunicorn as production runs it (`-c gunicorn.conf.py "app:create_app()"`), 2 workers, in `tmp`."""
    (tmp / "home").mkdir(exist_ok=True)
    (tmp / "run").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("APP_HOST", "DATA_DIR", "BACKUP_DIR")}
    env.update({"APP_PORT": str(port), "WEB_WORKERS": "2", "DATA_DIR": str(tmp / "data"),
                "BACKUP_DIR": str(tmp / "backups"), "API_KEYS": ADMIN_KEY, "ADMIN_PASSWORD": ADMIN_PASSWORD,
                "DOTENV_PATH": str(tmp / "none.env"), "HOME": str(tmp / "home"), "XDG_RUNTIME_DIR": str(tmp / "run"),
                **(extra_env or {})})
    log = open(tmp / "gunicorn.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    wait_for(f"http://127.0.0.1:{port}/healthz", process=process)
    return process


def nginx_config(tmp, listen_port, upstream_port):
    """deploy/nginx.conf for a run in `tmp`: only ports, user and file paths change, each exactly once."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    user = "user root;" if os.geteuid() == 0 else ""      # as root, workers would otherwise be `nginx`
    temp = "\n".join(f"    {kind}_temp_path {tmp}/{kind}_temp;" for kind in ("client_body", "proxy", "fastcgi",
                                                                              "uwsgi", "scgi"))
    changes = [(r"^user \S+;$", user), (r"^pid \S+;$", f"pid {tmp}/nginx.pid;"),
               (r"^error_log \S+", f"error_log {tmp}/error.log"),
               (r"^(    access_log )\S+", rf"\g<1>{tmp}/access.log"),
               (r"^(        listen )80;$", rf"\g<1>127.0.0.1:{listen_port};"),
               (r"^(        server )127\.0\.0\.1:5000;$", rf"\g<1>127.0.0.1:{upstream_port};"),
               (r"^http \{$", "http {\n" + temp)]
    for pattern, replacement in changes:
        text, count = re.subn(pattern, replacement, text, flags=re.M)
        assert count == 1, f"deploy/nginx.conf no longer has exactly one match for {pattern}"
    path = tmp / "nginx.conf"
    path.write_text(text)
    return path


def start_nginx(tmp, listen_port, upstream_port):
    config = nginx_config(tmp, listen_port, upstream_port)
    checked = subprocess.run([NGINX, "-t", "-p", str(tmp), "-c", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen([NGINX, "-p", str(tmp), "-c", str(config), "-g", "daemon off;"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(f"http://127.0.0.1:{listen_port}/healthz", process=process)
    return process


class SlowClients:
    """`count` connections to `port`, half trickling request headers and half request bodies, one
    byte per connection every `interval` seconds, until `close()`."""

    def __init__(self, port, count=SLOW_CONNECTIONS, interval=0.5):
        self.socks, self.interval = [], interval
        self.stopped = threading.Event()
        for i in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:
                sock.sendall(b"POST /generate HTTP/1.1\r\nHost: studio\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 1000000\r\n\r\n{")
            else:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: studio\r\nX-Slow: ")
            self.socks.append(sock)
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.thread.start()

    def _trickle(self):
        while not self.stopped.wait(self.interval):
            for sock in self.socks:
                try:
                    sock.send(b"a")
                except OSError:
                    pass                # the server gave up on this one: that is allowed

    def close(self):
        self.stopped.set()
        self.thread.join()
        for sock in self.socks:
            sock.close()


def healthz_times(port, samples=10):
    """Seconds each of `samples` fresh /healthz requests took (5 s counts as a miss)."""
    times = []
    for _ in range(samples):
        started = time.monotonic()
        try:
            ok = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            ok = False
        times.append(time.monotonic() - started if ok else 5.0)
        time.sleep(0.1)
    return times


def listening_addresses(port):
    """The local addresses with a TCP socket listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:         # 0A: LISTEN
                raw = bytes.fromhex(address)
                if len(raw) == 4:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    if not os.access(NGINX, os.X_OK):
        pytest.fail("nginx is missing: run `bash scripts/ensure-nginx` (make test does)")
    tmp = tmp_path_factory.mktemp("production")
    app_port, proxy_port = free_port(), free_port()
    gunicorn = start_gunicorn(tmp, app_port)
    try:
        nginx = start_nginx(tmp, proxy_port, app_port)
    except BaseException:
        stop(gunicorn)
        raise
    yield {"tmp": tmp, "app_port": app_port, "proxy_port": proxy_port, "gunicorn": gunicorn}
    stop(nginx)
    stop(gunicorn)


def test_healthz_answers_within_a_second_while_50_slow_clients_hold_connections(production):
    slow = SlowClients(production["proxy_port"])
    try:
        time.sleep(2)               # the attack's own duration: /healthz is asked while it is under way
        times = healthz_times(production["proxy_port"])
        still_open = sum(1 for sock in slow.socks if sock.fileno() != -1)
    finally:
        slow.close()
    assert still_open == SLOW_CONNECTIONS
    assert statistics.median(times) < 1 and max(times) < 1, [round(t, 3) for t in times]


def test_nginx_passes_requests_and_the_client_address(production):
    base = f"http://127.0.0.1:{production['proxy_port']}"
    resp = requests.get(f"{base}/api/me", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=5)
    assert resp.status_code == 200
    with socket.create_connection(("127.0.0.1", production["proxy_port"]), timeout=5) as sock:
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: studio\r\nContent-Length: 40000000\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 413")     # over client_max_body_size: nginx answers
    # The access log line: the peer (nginx), then X-Forwarded-For as nginx set it. Written after the answer.
    deadline = time.monotonic() + 5
    while '127.0.0.1 127.0.0.1 "GET /api/me"' not in (production["tmp"] / "gunicorn.log").read_text():
        assert time.monotonic() < deadline, "no access log line for /api/me"
        time.sleep(0.1)


def test_gunicorn_listens_on_loopback_only(production):
    assert listening_addresses(production["app_port"]) == {"127.0.0.1"}


def test_gunicorn_opens_no_control_socket(production):
    # gunicorn would put it at $XDG_RUNTIME_DIR/gunicorn.ctl or ~/.gunicorn/gunicorn.ctl.
    tmp = production["tmp"]
    sockets = [p for p in (tmp / "home").rglob("*") if p.is_socket()] + \
        [p for p in (tmp / "run").rglob("*") if p.is_socket()]
    assert sockets == [] and not (tmp / "home" / ".gunicorn").exists()


def test_files_the_studio_writes_are_private(production):
    data = production["tmp"] / "data"
    files = [p for p in data.rglob("*") if p.is_file()]
    assert files, "the studio wrote nothing to DATA_DIR"
    loose = {str(p.relative_to(data)): oct(p.stat().st_mode & 0o777) for p in files if p.stat().st_mode & 0o077}
    assert loose == {}


def test_app_host_still_chooses_the_address(tmp_path):
    port = free_port()
    process = start_gunicorn(tmp_path, port, {"APP_HOST": "0.0.0.0", "WEB_WORKERS": "1"})
    try:
        assert listening_addresses(port) == {"0.0.0.0"}
    finally:
        stop(process)
