"""The README's run command: `python app.py` serves the studio, and the scheduler finishes work."""

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import av
import requests

from app import create_app
from tests.conftest import ADMIN_KEY, b64, picture

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_python_app_py_turns_a_picture_into_a_playable_video(tmp_path):
    port = free_port()
    env = {**os.environ, "APP_PORT": str(port), "DATA_DIR": str(tmp_path / "data"),
           "DOTENV_PATH": str(tmp_path / "none.env")}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {ADMIN_KEY}"      # a script's way in
    try:
        def up():
            try:
                return http.get(base + "/api/capabilities", timeout=1).ok
            except requests.ConnectionError:
                return False
        wait_for(up, 30, "the studio to start")
        resp = http.post(base + "/generate", json={"image": b64(picture()), "prompt": "zoom in"}, timeout=10)
        assert resp.status_code == 202
        task_id = resp.json()["task_id"]

        def finished():
            task = http.get(f"{base}/api/tasks/{task_id}", timeout=5).json()
            return task if task["status"] in ("succeeded", "failed") else None
        task = wait_for(finished, 90, "the task to finish")
        assert task["status"] == "succeeded", task["error"]
        video = http.get(base + task["outputs"][0]["url"], timeout=10)
        assert video.headers["Content-Type"] == "video/mp4"
        with av.open(io.BytesIO(video.content)) as container:
            assert container.streams.video[0].codec_context.name == "h264"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_config_precedence_and_generated_secret_key(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text("POLL_INTERVAL_SECONDS=7\nBACKUP_KEEP=3\n")
    monkeypatch.setenv("DOTENV_PATH", str(env_file))
    monkeypatch.setenv("BACKUP_KEEP", "9")
    monkeypatch.delenv("SECRET_KEY", raising=False)
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "d")})
    assert app.config["POLL_INTERVAL_SECONDS"] == 7 and app.config["BACKUP_KEEP"] == 9
    key = (tmp_path / "d" / "secret_key").read_text()
    assert app.config["SECRET_KEY"] == key and len(key) == 64
    assert oct((tmp_path / "d" / "secret_key").stat().st_mode & 0o777) == "0o600"
    again = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "d")})
    assert again.config["SECRET_KEY"] == key
