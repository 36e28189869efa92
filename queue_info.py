"""Where a task stands while it waits: its place in line for a provider slot, and an ETA.

`queue_position` (1 = the next to be sent) counts the queued tasks ahead of a task in its line:
the tasks of the same provider, or of the same model group where the provider caps per model
(providers.base `model_cap`), taken oldest first as `task_query.dispatch` takes them.
`eta_seconds` comes from the median time from submit to finish of that provider and model's
recent succeeded tasks: for a task in flight, that median less the time it has run; for a queued
task, the median times the rounds of the line's cap it waits through plus its own. Without any
such history there is no ETA (None) rather than a made-up one.

Cheap on a big store: the lines are read from `ids_with_status` (queued and in-flight tasks only)
and rebuilt only when the task log has changed since the last look (or MAX_AGE has passed); the
medians come from at most SCAN of the newest succeeded tasks and are rebuilt only when a task has
succeeded since.
"""

import statistics
import threading
import time
from dataclasses import dataclass

from flask import g

from tasks import QUEUED, RUNNING, SUBMITTED, SUCCEEDED, parse_iso

SAMPLE = 20     # recent succeeded tasks per provider and model whose median is the ETA
SCAN = 500      # the newest succeeded tasks looked at to find those samples
MAX_AGE = 5.0   # seconds: the lines are read again after this even if the log looks unchanged


def line_of(provider, task):
    """(line key, slots the line has): the narrowest cap the task waits for."""
    cap = provider.model_cap(task)
    if cap:
        return (provider.name, cap[0]), cap[1]
    return (provider.name,), provider.max_concurrency


@dataclass(frozen=True)
class Lines:
    """The queue as dispatch sees it: each queued task's place and line, each line's slots."""

    positions: dict     # task id -> (position, line key)
    held: dict          # line key -> slots held by tasks in flight
    caps: dict          # line key -> slots the line has


def read_lines(store, providers):
    """The lines of every configured provider, from the queued and in-flight tasks."""
    held, caps, positions, waiting = {}, {}, {}, {}
    for task_id in store.ids_with_status((SUBMITTED, RUNNING)):
        task = store.get(task_id)
        provider = providers.get(task["provider"]) if task else None
        if provider is not None:
            key, caps[key] = line_of(provider, task)
            held[key] = held.get(key, 0) + provider.slots(task)
    for task_id in store.ids_with_status((QUEUED,)):
        task = store.get(task_id)
        provider = providers.get(task["provider"]) if task else None
        if provider is None or not provider.configured():
            continue
        key, caps[key] = line_of(provider, task)
        waiting[key] = waiting.get(key, 0) + 1
        positions[task_id] = (waiting[key], key)
    return Lines(positions, held, caps)


def read_medians(store, succeeded_ids):
    """(provider, model) -> median seconds from submit to finish of its newest succeeded tasks."""
    durations = {}
    for task_id in reversed(succeeded_ids[-SCAN:]):
        task = store.get(task_id)
        start, end = parse_iso((task or {}).get("submitted_at")), parse_iso((task or {}).get("finished_at"))
        if start is None or end is None:
            continue
        took = durations.setdefault((task["provider"], task["model"]), [])
        if len(took) < SAMPLE:
            took.append(max(0.0, (end - start).total_seconds()))
    return {key: statistics.median(took) for key, took in durations.items()}


class QueueInfo:
    """The queue fields of task records, from a store and the providers (one per app)."""

    def __init__(self, store, providers):
        self.store = store
        self.providers = providers
        self._lock = threading.Lock()
        self._lines_key = None
        self._lines_at = 0.0
        self.monotonic = time.monotonic
        self._lines = Lines({}, {}, {})
        self._medians_key = None
        self._medians = {}

    def _refresh(self):
        with self._lock:
            # The log's length changes with every write; a compaction may bring it back to an
            # earlier length, which the age limit covers.
            lines_key, now = self.store.line_count(), self.monotonic()
            if lines_key == self._lines_key and now - self._lines_at <= MAX_AGE:
                return self._lines, self._medians       # a listing of 200 tasks looks once
            self._lines, self._lines_key, self._lines_at = read_lines(self.store, self.providers), lines_key, now
            succeeded = self.store.ids_with_status((SUCCEEDED,))
            medians_key = (len(succeeded), succeeded[-1] if succeeded else None)
            if medians_key != self._medians_key:
                self._medians, self._medians_key = read_medians(self.store, succeeded), medians_key
            return self._lines, self._medians

    def fields(self, record, now, look=None):
        """{"queue_position", "eta_seconds"} of one task record (each None when it does not apply).
        `look` gives the lines and medians (default: this object's cached refresh)."""
        if record["status"] not in (QUEUED, SUBMITTED, RUNNING):
            return {"queue_position": None, "eta_seconds": None}
        lines, medians = (look or self._refresh)()
        median = medians.get((record["provider"], record.get("model")))   # records from older stores may lack it
        place = lines.positions.get(record["id"]) if record["status"] == QUEUED else None
        if record["status"] != QUEUED:
            started = parse_iso(record.get("submitted_at")) or now
            eta = None if median is None else max(0.0, median - (now - started).total_seconds())
        elif place is None or median is None:
            eta = None
        else:
            position, key = place
            rounds = (lines.held.get(key, 0) + position - 1) // max(1, lines.caps[key])
            eta = median * (rounds + 1)
        return {"queue_position": place[0] if place else None, "eta_seconds": None if eta is None else round(eta)}


class _OneLook:
    """The queue as one request sees it: the lines and medians are looked up once however many
    tasks the answer shows (each look asks the store for its log's length: on PostgreSQL a count)."""

    def __init__(self, info):
        self._info, self._seen = info, None

    def _look(self):
        if self._seen is None:
            self._seen = self._info._refresh()
        return self._seen

    def fields(self, record, now):
        return self._info.fields(record, now, look=self._look)


def for_request(app):
    """The app's queue as the current request sees it (one look per request)."""
    if "queue_look" not in g:
        g.queue_look = _OneLook(for_app(app))
    return g.queue_look


def for_app(app):
    """The app's QueueInfo, made on first use."""
    info = app.extensions.get("queue_info")
    if info is None:
        info = app.extensions.setdefault("queue_info", QueueInfo(app.extensions["task_store"],
                                                                 app.extensions["providers"]))
    return info
