"""Which process runs the pipeline, and the APScheduler that runs it.

Several gunicorn workers may share one DATA_DIR, but exactly one of them may submit, poll and
download. The leader is whoever holds a non-blocking `fcntl` lock on `DATA_DIR/scheduler.lock`;
the kernel drops it when that process dies, and standbys retry every few seconds, so a lost
leader is replaced quickly. Only the leader's scheduler runs the jobs.
"""

import fcntl
import logging
import os
import threading

from apscheduler.schedulers.background import BackgroundScheduler

import health
import janitor
import task_backup
import task_query

log = logging.getLogger(__name__)

LEADER_RETRY_SECONDS = 5
HEARTBEAT_SECONDS = 5


class LeaderLock:
    """A non-blocking exclusive file lock held for the life of the process."""

    def __init__(self, path):
        self.path = path
        self._fd = None
        self._guard = threading.Lock()

    def try_acquire(self):
        with self._guard:
            if self._fd is not None:
                return True
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self._fd = fd
            return True

    @property
    def held(self):
        return self._fd is not None

    def release(self):
        with self._guard:
            if self._fd is not None:
                os.close(self._fd)      # closing drops the flock
                self._fd = None


def start(app):
    """Start the background scheduler for this app; its jobs run only while we are the leader."""
    config = app.config
    store = app.extensions["task_store"]
    providers = app.extensions["providers"]
    lock = LeaderLock(os.path.join(config["DATA_DIR"], "scheduler.lock"))

    def as_leader(job):
        def run():
            if not lock.try_acquire():
                return
            try:
                job(store, providers)
            except Exception:
                log.exception("scheduler job %s failed", job.__name__)
        run.__name__ = job.__name__
        return run

    scheduler = BackgroundScheduler(daemon=True, job_defaults={"coalesce": True, "max_instances": 1})
    # Dispatch and download are cheap when idle, so they run often to keep the studio responsive;
    # per-task poll intervals and backoff live in the task records.
    scheduler.add_job(as_leader(task_query.dispatch), "interval", seconds=1, id="dispatch")
    scheduler.add_job(as_leader(task_query.poll), "interval", seconds=1, id="poll")
    scheduler.add_job(as_leader(task_query.download), "interval", seconds=1, id="download")
    scheduler.add_job(as_leader(task_query.compact_store), "interval", minutes=10, id="compact")
    scheduler.add_job(as_leader(janitor.janitor_job), "interval", minutes=30, id="janitor")
    scheduler.add_job(as_leader(task_backup.backup_job(config["BACKUP_DIR"], config["BACKUP_KEEP"])),
                      "interval", minutes=config["BACKUP_INTERVAL_MINUTES"], id="backup")
    scheduler.add_job(as_leader(lambda store, providers: health.beat(config["DATA_DIR"])),
                      "interval", seconds=HEARTBEAT_SECONDS, id="heartbeat")
    scheduler.add_job(lock.try_acquire, "interval", seconds=LEADER_RETRY_SECONDS, id="leader")
    scheduler.start()
    if lock.try_acquire():
        log.info("this process (pid %d) runs the task pipeline", os.getpid())
    else:
        log.info("another process runs the task pipeline; pid %d stands by", os.getpid())
    app.extensions["scheduler"] = scheduler
    app.extensions["leader_lock"] = lock
    return scheduler
