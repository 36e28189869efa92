"""The pipeline: one leader among gunicorn workers, a take-over when it dies, clock steps, the
first backup, and stopping."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

import health
import task_query
from errors import ProviderUnavailable
from providers.local import LocalProvider
from scheduler import LeaderLock, Pipeline
from task_store import TaskStore
from tasks import utcnow
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


@pytest.mark.slow
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


# ---- the Pipeline in-process, on injected clocks


class Clocks:
    """A wall clock and a monotonic clock the test moves by hand."""

    def __init__(self):
        self.wall, self.mono = utcnow(), 1000.0

    def advance(self, seconds, wall_step=0.0):
        self.mono += seconds
        self.wall += timedelta(seconds=seconds + wall_step)


@pytest.fixture
def pipelines(tmp_path):
    """Pipelines on one DATA_DIR with an empty store and the local engine; all stopped at the end."""
    made = []

    def make(clocks=None, providers=None):
        clocks = clocks or Clocks()
        store = TaskStore(tmp_path / "data")
        pipeline = Pipeline(store, providers or {"local": LocalProvider({"DATA_DIR": tmp_path / "data"})},
                            lambda: clocks.wall, data_dir=tmp_path / "data", backup_dir=tmp_path / "backups",
                            monotonic=lambda: clocks.mono, heartbeat_seconds=3600)
        made.append((pipeline, store))
        return pipeline

    (tmp_path / "data").mkdir()
    yield make
    for pipeline, store in made:
        pipeline.stop()
        store.close()


def next_runs(pipeline):
    return {job.id: job.next_run_time for job in pipeline.scheduler.get_jobs()}


def test_a_backward_clock_step_plans_every_job_again_within_one_interval(pipelines):
    clocks = Clocks()
    pipeline = pipelines(clocks)
    pipeline.start()
    pipeline.tick()
    # What the step does to APScheduler: every next run lies two hours ahead of the new wall time.
    for job in pipeline.scheduler.get_jobs():
        job.modify(next_run_time=job.next_run_time + timedelta(hours=2))
    clocks.advance(5, wall_step=-7200)
    pipeline.tick()
    now = datetime.now(UTC)
    for job_id, at in next_runs(pipeline).items():
        interval = timedelta(**pipeline.intervals[job_id])
        assert at <= now + interval + timedelta(seconds=1), job_id


def test_an_ordinary_heartbeat_plans_nothing_again(pipelines):
    clocks = Clocks()
    pipeline = pipelines(clocks)
    pipeline.start()
    pipeline.tick()
    before = next_runs(pipeline)
    clocks.advance(5, wall_step=0.5)        # ordinary jitter, or a step forward: APScheduler copes
    pipeline.tick()
    assert next_runs(pipeline)["backup"] == before["backup"]


def test_the_first_backup_comes_soon_after_becoming_the_leader(pipelines):
    leader, standby = pipelines(), pipelines()
    leader.start()
    standby.start()
    soon = datetime.now(UTC) + timedelta(minutes=1, seconds=5)
    assert next_runs(leader)["backup"] <= soon
    assert os.path.exists(os.path.join(leader.data_dir, health.HEARTBEAT_FILE))     # it beats at once
    assert next_runs(standby)["backup"] > soon          # a standby takes none
    leader.stop()                                        # gives the lock up for the standby
    assert not leader.lock.held
    standby.tick()
    assert standby.lock.held
    assert next_runs(standby)["backup"] <= datetime.now(UTC) + timedelta(minutes=1, seconds=5)


def test_stop_ends_the_jobs_then_closes_the_providers_and_is_idempotent(pipelines, tmp_path):
    local = LocalProvider({"DATA_DIR": tmp_path / "data"})
    pipeline = pipelines(providers={"local": local})
    pipeline.start()
    pipeline.stop()
    pipeline.stop()
    assert not pipeline.scheduler.running and not pipeline.lock.held
    with pytest.raises(ProviderUnavailable):     # closed: new work is refused as "try later"
        local.submit({"id": "t1", "kind": "video", "model": "local-motion", "inputs": []})


def test_a_local_submit_refused_by_a_stopping_studio_stays_queued(app, png_b64):
    client = app.test_client()
    task_id = client.post("/generate", json={"image": png_b64}).get_json()["task_id"]
    store, providers = app.extensions["task_store"], app.extensions["providers"]
    providers["local"].close()
    task_query.dispatch(store, providers)
    task = store.get(task_id)
    assert task["status"] == "queued" and task.get("error") is None and not task.get("submit_started_at")


def test_dispatch_sends_nothing_once_stopping(app, png_b64):
    client = app.test_client()
    task_id = client.post("/generate", json={"image": png_b64}).get_json()["task_id"]
    stopping = threading.Event()
    stopping.set()
    task_query.dispatch(app.extensions["task_store"], app.extensions["providers"], stopping=stopping)
    assert app.extensions["task_store"].get(task_id)["status"] == "queued"
