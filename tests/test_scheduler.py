"""Several gunicorn workers: exactly one runs the pipeline, and another takes over when it dies."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from scheduler import LeaderLock
from tests.test_app import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent


def test_leader_lock_is_exclusive_and_released_on_close(tmp_path):
    first, second = LeaderLock(tmp_path / "l"), LeaderLock(tmp_path / "l")
    assert first.try_acquire() and first.try_acquire()
    assert not second.try_acquire()
    first.release()
    assert second.try_acquire()


def lock_holder(data_dir):
    text = (data_dir / "scheduler.lock").read_text() if (data_dir / "scheduler.lock").exists() else ""
    return int(text) if text.isdigit() else None


def worker_pids(master_pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master_pid)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def test_one_leader_among_gunicorn_workers_and_take_over(tmp_path):
    data_dir = tmp_path / "data"
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(data_dir), "APP_HOST": "127.0.0.1", "APP_PORT": str(port),
           "WEB_WORKERS": "3", "DOTENV_PATH": str(tmp_path / "none.env")}
    log = open(tmp_path / "gunicorn.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(worker_pids(proc.pid)) == 3 and lock_holder(data_dir), 60, "three workers and a leader")
        wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).ok, 30, "ready")
        time.sleep(3)      # standbys keep retrying the lock; none of them may get it
        logged = (tmp_path / "gunicorn.log").read_text()
        assert len(re.findall(r"\) runs the task pipeline", logged)) == 1
        assert len(re.findall(r"stands by", logged)) == 2
        leader = lock_holder(data_dir)
        assert leader in worker_pids(proc.pid)

        os.kill(leader, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: lock_holder(data_dir) not in (None, leader)
                 and lock_holder(data_dir) in worker_pids(proc.pid), 15, "a standby to take over")
        assert time.monotonic() - killed_at < 15
        heartbeat = data_dir / "scheduler.heartbeat"
        before = heartbeat.stat().st_mtime
        wait_for(lambda: heartbeat.stat().st_mtime > before, 15, "the new leader's heartbeat")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
