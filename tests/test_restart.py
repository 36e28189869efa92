"""A studio killed with SIGKILL and started again resumes every task and submits none twice."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from task_store import TaskStore
from tests.conftest import ADMIN_KEY, b64, picture
from tests.fakes.kling import Server
from tests.test_app import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
AK, SK = "AK" + "r" * 30, "SK" + "r" * 30
HTTP = requests.Session()
HTTP.headers["Authorization"] = f"Bearer {ADMIN_KEY}"


class Studio:
    """The studio as a child process on a fixed port and data dir: `python app.py`, or gunicorn
    with `workers` workers."""

    def __init__(self, tmp_path, fake_url, workers=None):
        self.command = [sys.executable, "app.py"] if workers is None else [
            sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp_path / "studio.log", "ab")
        self.env = {**os.environ, "APP_PORT": str(self.port), "DATA_DIR": str(tmp_path / "data"),
                    "DOTENV_PATH": str(tmp_path / "none.env"), "KLING_API_BASE": fake_url,
                    "KLING_ACCESS_KEY": AK, "KLING_SECRET_KEY": SK, "KLING_MAX_CONCURRENCY": "3",
                    "POLL_INTERVAL_SECONDS": "0.5", "HTTP_TIMEOUT_SECONDS": "1",
                    "APP_HOST": "127.0.0.1", "WEB_WORKERS": str(workers or 1)}
        self.proc = None

    def start(self):
        # A suite started in the background (`make test &`, some CI runners) has SIGINT ignored, and
        # children inherit that: the studio gets Ctrl-C's default, as in a terminal.
        self.proc = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, preexec_fn=_default_sigint)

        def up():
            try:
                return requests.get(self.base + "/healthz", timeout=1).ok
            except requests.RequestException:     # not listening yet, or a worker still loading
                return False
        wait_for(up, 30, "the studio to start")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def statuses(data_dir):
    store = TaskStore(data_dir, check=False)
    try:
        return {t["id"]: t["status"] for t in store.list(limit=200)[0]}
    finally:
        store.close()


@pytest.mark.slow
def test_sigkill_restarts_resume_every_task_and_submit_each_once(tmp_path):
    fake = Server(polls_to_finish=4, access_key=AK, secret_key=SK, hang_seconds=2.0)
    fake.start()
    studio = Studio(tmp_path, fake.base_url)
    data_dir = tmp_path / "data"
    try:
        studio.start()
        fake.inject("submit", "hang")                   # the first submit is created but answered too late
        fake.inject("download", "error", "error", "error")   # some results linger in "downloading"
        ids = []
        for i in range(8):
            resp = HTTP.post(studio.base + "/generate", timeout=10, json={
                "provider": "kling", "model_name": "kling-v1-6", "image": b64(picture(seed=i)),
                "prompt": f"task {i}", "duration": "5", "mode": "std"})
            assert resp.status_code == 202
            ids.append(resp.json()["task_id"])
        local = HTTP.post(studio.base + "/generate", json={"image": b64(picture())}, timeout=10).json()["task_id"]

        # Kill the studio while tasks are queued and in flight, then again while results are
        # being saved, restarting it on the same data dir each time.
        seen = set()
        for wanted in ({"queued", "submitted"}, {"running"}, {"downloading"}):
            wait_for(lambda w=wanted: w & set(statuses(data_dir).values()), 60, f"a task in {wanted}")
            seen |= set(statuses(data_dir).values())
            studio.kill()
            studio.start()

        def all_done():
            current = statuses(data_dir)
            return all(current[i] in ("succeeded", "failed", "cancelled") for i in [*ids, local])
        wait_for(all_done, 120, "every task to finish")
        final = statuses(data_dir)
        assert {"queued", "running", "downloading"} <= seen       # killed with tasks in each state
        assert all(final[i] == "succeeded" for i in [*ids, local]), final
        assert dict(fake.submissions) == {task_id: 1 for task_id in ids}   # none was ever sent twice
        for task_id in ids:
            task = HTTP.get(f"{studio.base}/api/tasks/{task_id}", timeout=5).json()
            for out in task["outputs"]:
                assert (data_dir / out["path"]).stat().st_size == out["bytes"]
    finally:
        studio.stop()
        fake.stop()
