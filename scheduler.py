"""Running the task pipeline: which process runs it, its jobs, and how it starts and stops.

`Pipeline(store, providers, clock)` owns the APScheduler that runs the jobs of task_query.py,
storyboards.py and the backups, the leader lock, and a heartbeat loop. It lives here rather than in a module of its
own because leadership, the job table and the start/stop order are one concern — running the
pipeline in exactly one process and stopping it without harm — and every other module and doc
already names this one for it.

Several gunicorn workers may share one DATA_DIR, but exactly one of them may submit, poll and
download. The leader is whoever holds a non-blocking `fcntl` lock on `DATA_DIR/scheduler.lock`;
the kernel drops it when that process dies, `stop()` releases it, and standbys retry on every
heartbeat, so a lost leader is replaced within seconds.

The heartbeat loop runs on the monotonic clock, not in APScheduler: APScheduler plans its interval
jobs on the wall clock, so a wall clock stepped back would freeze every job (and the heartbeat with
them) until the wall clock caught up. Each beat compares how far the wall clock and the monotonic
clock moved; when the wall clock went back, every job is planned again from the new wall time.

Stopping order: no new job runs and running ones finish their current task (dispatch and download
check `stopping` between tasks), then the providers close their pools (local renders stop between
frames and are rendered again on the next start; a provider submit in flight stays reconcilable),
then the leader lock is released for a standby.
"""

import fcntl
import logging
import os
import threading
import time
from datetime import datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler

import config
import health
import janitor
import storyboards
import task_backup
import task_query
import webhooks
from tasks import utcnow

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5           # also how often a standby tries to become the leader
FIRST_BACKUP_DELAY = timedelta(minutes=1)   # after becoming the leader, not a whole interval later
CLOCK_STEP_TOLERANCE = 2.0      # seconds the wall clock may lag the monotonic one before we re-plan


class LeaderLock:
    """A non-blocking exclusive file lock, held until released or the process ends."""

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


class Pipeline:
    """The task pipeline of one process: `start()` it once, `stop()` it (idempotent) before exit."""

    def __init__(self, store, providers, clock=utcnow, *, data_dir, backup_dir, backup_keep=24,
                 backup_minutes=60, monotonic=time.monotonic, heartbeat_seconds=HEARTBEAT_SECONDS,
                 download_workers=config.DOWNLOAD_WORKERS_PER_PROVIDER, shared=None, spent=None):
        self.store, self.providers, self.clock, self.monotonic = store, providers, clock, monotonic
        # On PostgreSQL (pg_pipeline.py) every node runs a pipeline: poll and download work on the
        # tasks this node claimed, once-only jobs on the cluster leader; one leader per node's DATA_DIR.
        self.shared = shared
        self.work_store = store if shared is None else shared.claimed
        self.data_dir, self.backup_dir = str(data_dir), str(backup_dir)
        self.backup_keep, self.backup_minutes = backup_keep, backup_minutes
        self.heartbeat_seconds = heartbeat_seconds
        self.download_workers = download_workers
        self.spent = spent          # the studio's ledger: storyboards move reserved units to their scenes
        lock_name = "scheduler.lock" if shared is None else f"scheduler-{shared.node_name}.lock"
        self.lock = LeaderLock(os.path.join(self.data_dir, lock_name))
        self.stopping = threading.Event()
        self.scheduler = BackgroundScheduler(daemon=True, job_defaults={"coalesce": True, "max_instances": 1})
        # Dispatch and download are cheap when idle, so they run often to keep the studio responsive;
        # per-task poll intervals and backoff live in the task records.
        self.intervals = {"dispatch": {"seconds": 1}, "poll": {"seconds": 1}, "download": {"seconds": 1},
                          "compact": {"minutes": 10}, "janitor": {"minutes": 30}, "backup": {"minutes": backup_minutes},
                          "webhooks": {"seconds": 2}, "storyboards": {"seconds": 1}}
        for job_id, interval in self.intervals.items():
            self.scheduler.add_job(self._as_leader(getattr(self, f"_{job_id}")), "interval", id=job_id, **interval)
        self._last_tick = None          # (wall, monotonic) at the previous heartbeat
        self._thread = None
        self._state = threading.Lock()  # start/stop/leadership changes

    # ---- lifecycle

    def start(self):
        with self._state:
            if self._thread is not None or self.stopping.is_set():
                return
            self.scheduler.start()
            self._thread = threading.Thread(target=self._heartbeat_loop, name="pipeline-heartbeat", daemon=True)
            self._thread.start()
        self.tick()     # lead (and beat) at once rather than a heartbeat later
        if self.lock.held:
            log.info("this process (pid %d) runs the task pipeline", os.getpid())
        else:
            log.info("another process runs the task pipeline; pid %d stands by", os.getpid())

    def stop(self):
        """Stop the jobs, then the providers' pools, then give up leadership; safe to call twice."""
        with self._state:
            if self.stopping.is_set():
                return
            self.stopping.set()
            started = self._thread is not None
        if started:
            # Waits for running jobs; they see `stopping` and return after the task in hand.
            self.scheduler.shutdown(wait=True)
            self._thread.join()
        for provider in self.providers.values():
            close = getattr(provider, "close", None)    # only some providers hold pools or clients
            try:
                if close is not None:
                    close()
            except Exception:
                log.exception("closing provider %s failed", provider.name)
        if self.shared is not None:
            self.shared.stop()
        self.lock.release()
        if started:
            log.info("task pipeline of pid %d stopped", os.getpid())

    # ---- leadership and heartbeat

    def claim_leadership(self):
        """True while this process leads; on becoming the leader, the first backup is planned soon."""
        with self._state:
            if self.stopping.is_set():
                return False
            was_leader = self.lock.held
            if not self.lock.try_acquire():
                return False
            if not was_leader and self.scheduler.running:
                self.scheduler.modify_job("backup", next_run_time=self._scheduler_now() + FIRST_BACKUP_DELAY)
            return True

    def _heartbeat_loop(self):
        while not self.stopping.wait(self.heartbeat_seconds):
            try:
                self.tick()
            except Exception:
                log.exception("pipeline heartbeat failed")

    def tick(self):
        """One heartbeat: re-plan the jobs after a backward clock step, try to lead, beat if leading."""
        wall, mono = self.clock(), self.monotonic()
        if self._last_tick is not None:
            last_wall, last_mono = self._last_tick
            lag = (mono - last_mono) - (wall - last_wall).total_seconds()
            if lag > CLOCK_STEP_TOLERANCE:
                log.warning("the wall clock went back %.0f s; planning every pipeline job again", lag)
                self.replan()
        self._last_tick = (wall, mono)
        if self.claim_leadership():
            health.beat(self.data_dir)

    def replan(self):
        """Plan every job afresh from the current wall time (each runs within one interval)."""
        if self.stopping.is_set() or not self.scheduler.running:
            return
        for job_id, interval in self.intervals.items():
            self.scheduler.reschedule_job(job_id, trigger="interval", **interval)

    def _scheduler_now(self):
        return datetime.now(self.scheduler.timezone)    # APScheduler plans on the real wall clock

    # ---- jobs

    def _as_leader(self, job):
        def run():
            if self.stopping.is_set() or not self.claim_leadership():
                return
            if self.shared is not None and not self.shared.may_run(job.__name__):
                return
            try:
                job()
            except Exception:
                log.exception("pipeline job %s failed", job.__name__)
        run.__name__ = job.__name__
        return run

    def _dispatch(self):
        task_query.dispatch(self.store, self.providers, self.clock, stopping=self.stopping)

    def _poll(self):
        task_query.poll(self.work_store, self.providers, self.clock)

    def _download(self):
        task_query.download(self.work_store, self.providers, self.clock, stopping=self.stopping,
                            workers=self.download_workers)

    def _storyboards(self):
        storyboards.advance(self.store, self.providers, self.clock, stopping=self.stopping, spent=self.spent)

    def _compact(self):
        task_query.compact_store(self.store)

    def _janitor(self):
        janitor.sweep(self.store.dir, self.store, self.clock())

    def _webhooks(self):
        webhooks.deliver_due(self.store, self.clock)

    def _backup(self):
        task_backup.take_backup(self.store, self.backup_dir)
        task_backup.prune(self.backup_dir, self.backup_keep)


def start(app):
    """Build and start the app's pipeline, and stop it when the process exits."""
    import pg_pipeline

    settings = app.config
    store = app.extensions["task_store"]
    shared = pg_pipeline.for_store(store, settings["NODE_NAME"], settings["PIPELINE_LEASE_SECONDS"])
    pipeline = Pipeline(store, app.extensions["providers"], data_dir=settings["DATA_DIR"],
                        backup_dir=settings["BACKUP_DIR"], backup_keep=settings["BACKUP_KEEP"],
                        backup_minutes=settings["BACKUP_INTERVAL_MINUTES"],
                        download_workers=settings["DOWNLOAD_WORKERS_PER_PROVIDER"], shared=shared,
                        spent=app.extensions["ledger"])
    app.extensions["pipeline"] = pipeline
    _stop_at_exit(pipeline)
    pipeline.start()
    return pipeline


def _stop_at_exit(pipeline):
    """Stop the pipeline before the interpreter shuts down its thread pools.

    Plain `atexit` runs only after Python has joined non-daemon threads and shut every
    concurrent.futures pool, when a job still running would see "cannot schedule new futures
    after shutdown"; threading's own exit hooks run before that, last registered first.
    gunicorn also calls `stop_all` from its worker_exit hook (gunicorn.conf.py).
    """
    import atexit

    with _started_lock:
        _started.append(pipeline)
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(pipeline.stop)
    atexit.register(pipeline.stop)


_started = []
_started_lock = threading.Lock()


def stop_all():
    """Stop every pipeline this process started (gunicorn's worker_exit, `python app.py` on exit)."""
    with _started_lock:
        pipelines = list(_started)
    for pipeline in pipelines:
        pipeline.stop()
