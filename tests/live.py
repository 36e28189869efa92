"""The studio as a real server process, `python app.py` or gunicorn, for tests that need real
concurrency (threads and worker processes racing) rather than the Flask test client."""

import os
import subprocess
import sys
from pathlib import Path

import requests

from tests.conftest import ADMIN_KEY, ADMIN_PASSWORD
from tests.test_app import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent


class LiveStudio:
    def __init__(self, tmp_path, *, gunicorn=False, env=None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.data_dir = tmp_path / "data"
        self.gunicorn = gunicorn
        self.log_path = tmp_path / ("gunicorn.log" if gunicorn else "studio.log")
        self.env = {**os.environ, "APP_PORT": str(self.port), "APP_HOST": "127.0.0.1",
                    "DATA_DIR": str(self.data_dir), "DOTENV_PATH": str(tmp_path / "none.env"),
                    "API_KEYS": ADMIN_KEY, "ADMIN_PASSWORD": ADMIN_PASSWORD,
                    "WEB_WORKERS": "2", "WEB_THREADS": "4", **(env or {})}
        self.proc = None

    def __enter__(self):
        command = ([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]
                   if self.gunicorn else [sys.executable, "app.py"])
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"the studio exited: {self.log_path.read_text()[-2000:]}")
            try:
                return requests.get(self.base + "/healthz", timeout=2).ok
            except requests.RequestException:
                return False
        wait_for(up, 60, "the studio to start")
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def url(self, path):
        return self.base + path
