"""Prometheus metrics: what the studio counts, and `GET /metrics`.

Counters and histograms are kept by `prometheus_client`. Under gunicorn every worker is its own
process, so they use its multiprocess mode: each process writes its values to files in
`PROMETHEUS_MULTIPROC_DIR` and a scrape, answered by any worker, adds them all up. Unset, that
folder is under the system's temp dir (one per DATA_DIR), never on the data disk: those files are
memory-mapped, and a mapped write on a full disk kills the process with SIGBUS — a full data disk
must give a 507, not take every worker down. The folder is emptied when the first studio process
starts (no other process holds its shared lock), never under a running worker. Test apps (TESTING) keep their values in
memory, since the variable is process-wide and tests build many apps.

Gauges are not counted at all: the tasks in each state, the queue per provider and the age of
the pipeline's heartbeat are read from the task store and DATA_DIR at scrape time, so every
worker answers the same and nothing drifts when a worker dies.

Who may scrape: with METRICS_TOKEN set, `Authorization: Bearer <METRICS_TOKEN>`; unset, only
loopback clients (a request relayed by a proxy that TRUSTED_PROXIES does not trust is refused).
"""

import fcntl
import hashlib
import hmac
import ipaddress
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from flask import Response, current_app, g, request

from errors import N_, Forbidden, LoginRequired, ProviderError

ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

_made = None                # the metric objects, made on first use (after the mode is chosen)
_made_lock = threading.Lock()
_dir_lock_fd = None         # this process's shared lock on the multiprocess folder


# ---- setting up ------------------------------------------------------------------------------

def init_app(app):
    """Choose the mode (before prometheus_client is imported), time every request, serve /metrics."""
    if ENV not in os.environ and "prometheus_client" not in sys.modules and not app.config["TESTING"]:
        key = hashlib.sha256(str(app.config["DATA_DIR"]).encode()).hexdigest()[:12]
        os.environ[ENV] = str(Path(tempfile.gettempdir()) / f"aiapi-studio-metrics-{key}")
    if os.environ.get(ENV) and _dir_lock_fd is None and "prometheus_client" not in sys.modules:
        _prepare_dir(Path(os.environ[ENV]))
    _metrics()
    app.before_request(_start_timer)
    app.after_request(_observe_request)
    # access.py counts new tasks here, so this module imports the task and access modules only late.
    from access import public

    app.add_url_rule("/metrics", "metrics.scrape", public(scrape))


def _prepare_dir(folder):
    """Empty the folder if no other studio process uses it, then hold a shared lock on it for life.

    flock: the exclusive try succeeds only when no live process holds the shared lock, so a worker
    started next to running ones (or a restarted one) keeps their values.
    """
    global _dir_lock_fd
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(folder.parent / f".{folder.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for path in folder.iterdir():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    except BlockingIOError:
        pass
    fcntl.flock(fd, fcntl.LOCK_SH)      # waits while the first process is still emptying it
    _dir_lock_fd = fd


def _metrics():
    global _made
    with _made_lock:
        if _made is None:
            _made = _Metrics()
    return _made


class _Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram, values

        self.multiprocess = bool(getattr(values.ValueClass, "_multiprocess", False))
        self.registry = CollectorRegistry(auto_describe=True)     # in-memory mode only
        r = self.registry
        self.created = Counter("studio_tasks_created", "Tasks created.", ["kind", "provider", "model"], registry=r)
        self.finished = Counter("studio_tasks_finished", "Tasks that reached a final state, by outcome "
                                "(succeeded, failed, cancelled).", ["kind", "provider", "model", "outcome"],
                                registry=r)
        self.latency = Histogram("studio_provider_call_seconds", "Duration of the pipeline's provider calls: "
                                 "submit, poll (status query) and download (save one output).",
                                 ["stage", "provider"], buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("studio_provider_errors", "Failed provider calls by the studio's error code.",
                              ["stage", "provider", "code"], registry=r)
        self.downloaded = Counter("studio_downloaded_bytes", "Bytes of results saved to disk.", ["provider"],
                                  registry=r)
        self.http = Histogram("studio_http_request_seconds", "HTTP request latency by route (Flask endpoint).",
                              ["endpoint", "method", "status"], buckets=HTTP_BUCKETS, registry=r)


# ---- what the studio counts (one-line calls from the pipeline and the task creation) ----------

def task_created(record):
    """Count a new task; returns the record, so a caller can wrap its create in it."""
    _metrics().created.labels(record["kind"], record["provider"], record["model"]).inc()
    return record


def counting_finish(change):
    """A store change function that also counts the task when the change makes it finish."""
    from tasks import TERMINAL

    def counted(record):
        before = record["status"]
        result = change(record)
        if record["status"] in TERMINAL and before != record["status"]:
            _metrics().finished.labels(record["kind"], record["provider"], record["model"], record["status"]).inc()
        return result
    return counted


def call(stage, provider, function, *args):
    """`function(*args)`, timed as a `stage` call of `provider`; a ProviderError is counted by code.
    A saved download's bytes are counted too (an output already saved before is not fetched again)."""
    m = _metrics()
    started = time.perf_counter()
    try:
        result = function(*args)
    except ProviderError as exc:
        m.errors.labels(stage, provider, exc.code).inc()
        raise
    except Exception as exc:
        m.errors.labels(stage, provider, type(exc).__name__).inc()
        raise
    finally:
        m.latency.labels(stage, provider).observe(time.perf_counter() - started)
    if stage == "download" and isinstance(result, dict) and len(args) >= 4 and result is not args[3]:
        m.downloaded.labels(provider).inc(result.get("bytes") or 0)
    return result


def _start_timer():
    g.metrics_started = time.perf_counter()


def _observe_request(response):
    started = g.get("metrics_started")
    if started is not None:
        _metrics().http.labels(request.endpoint or "unmatched", request.method,
                               str(response.status_code)).observe(time.perf_counter() - started)
    return response


# ---- the scrape --------------------------------------------------------------------------------

class _StoreCollector:
    """Gauges read at scrape time: tasks per state, queue per provider, heartbeat age."""

    def __init__(self, store, data_dir):
        self.store, self.data_dir = store, data_dir

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        import health
        import tasks

        states = GaugeMetricFamily("studio_tasks", "Tasks in each state, from the task store.", labels=["status"])
        for status in tasks.STATUSES:
            states.add_metric([status], len(self.store.ids_with_status((status,))))
        yield states
        queue = GaugeMetricFamily("studio_queue_depth", "Queued tasks (not yet sent) per provider.",
                                  labels=["provider"])
        depth = {}
        for task_id in self.store.ids_with_status((tasks.QUEUED,)):
            task = self.store.get(task_id)
            if task:
                depth[task["provider"]] = depth.get(task["provider"], 0) + 1
        for provider in sorted(set(depth) | set(current_app.extensions.get("providers") or ())):
            queue.add_metric([provider], depth.get(provider, 0))
        yield queue
        age = GaugeMetricFamily("studio_pipeline_heartbeat_age_seconds",
                                "Seconds since the pipeline's leader last wrote its heartbeat (NaN: never).")
        try:
            age.add_metric([], time.time() - os.path.getmtime(os.path.join(self.data_dir, health.HEARTBEAT_FILE)))
        except OSError:
            age.add_metric([], float("nan"))
        yield age


class _Collected:
    def __init__(self, registry):
        self.registry = registry

    def collect(self):
        return self.registry.collect()


def _allowed():
    token = current_app.config.get("METRICS_TOKEN")
    if token:
        header = request.headers.get("Authorization", "")
        sent = header[len("Bearer "):].strip() if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(sent.encode(), token.encode()):
            raise LoginRequired(N_("Send 'Authorization: Bearer <METRICS_TOKEN>'."), code="invalid_metrics_token")
        return
    # Without a token, only this machine. A proxy in front makes every client look local: its
    # X-Forwarded-For is honoured only when TRUSTED_PROXIES says so (then remote_addr is the client).
    relayed = "X-Forwarded-For" in request.headers and not current_app.config.get("TRUSTED_PROXIES")
    try:
        loopback = ipaddress.ip_address((request.remote_addr or "").split("%", 1)[0]).is_loopback
    except ValueError:
        loopback = False
    if relayed or not loopback:
        raise Forbidden(N_("Metrics are answered to this machine only; set METRICS_TOKEN to scrape from "
                           "elsewhere."),
                        code="metrics_forbidden")


def scrape():
    """The Prometheus text format; see the module docstring for who may ask."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    _allowed()
    m = _metrics()
    registry = CollectorRegistry(auto_describe=False)
    if m.multiprocess:
        MultiProcessCollector(registry)
    else:
        registry.register(_Collected(m.registry))
    registry.register(_StoreCollector(current_app.extensions["task_store"], current_app.config["DATA_DIR"]))
    response = Response(generate_latest(registry), headers={"Cache-Control": "no-store"})
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
