"""The task pipeline and the task JSON routes.

Pipeline jobs (plain functions of the store, the providers and a clock, so tests call them
directly; `scheduler.py` runs them): `dispatch` submits queued tasks within per-provider
concurrency caps, `poll` asks providers how submitted tasks are doing, `download` saves results,
verifies them and makes thumbnails. A task is `succeeded` only when every output is on disk
and verified. A submit whose outcome is unknown is reconciled, never blindly re-sent.

Routes: `GET /api/tasks`, `GET /api/tasks/<id>`, `POST /api/tasks/<id>/cancel|retry`,
`DELETE /api/tasks/<id>`, `GET /media/<path>` (Range-capable).
"""

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import requests
from flask import Blueprint, current_app, render_template, request, send_from_directory

import access
import downloads
import tasks
from errors import Conflict, NotFound, ProviderError, SubmitOutcomeUnknown, ValidationError
from providers import base
from tasks import (
    ACTIVE,
    CANCELLED,
    DOWNLOADING,
    FAILED,
    QUEUED,
    RUNNING,
    SUBMITTED,
    SUCCEEDED,
    TERMINAL,
    iso,
    parse_iso,
    utcnow,
)

log = logging.getLogger(__name__)
bp = Blueprint("task_query", __name__)

POLL_WORKERS = 16                # bounded: polls are I/O-bound; providers' query rates apply on top
LATE_CHECK_WINDOW = timedelta(hours=24)     # how long a timed-out task is still looked at
LATE_CHECK_INTERVAL = timedelta(minutes=5)
MAX_BACKOFF_SECONDS = 300
MAX_DOWNLOAD_PROBLEMS = 12       # for refused links, or links of unknown expiry: about an hour of tries
MAX_SUBMIT_PROBLEMS = 10         # rate-limited/unreachable submits before a task fails (~30 min)


# ---- pipeline -------------------------------------------------------------------------------

def _due(task, now):
    at = parse_iso(task.get("next_check_at"))
    return at is None or at <= now


def _backoff(task, now, base_seconds, retry_after=None):
    """Next time to look at a task after its n-th consecutive problem (exponential, capped)."""
    problems = task.get("problems", 0) + 1
    delay = retry_after if retry_after else min(MAX_BACKOFF_SECONDS, base_seconds * 2 ** (problems - 1))
    return {"problems": problems, "next_check_at": iso(now + timedelta(seconds=delay))}


def _fail(store, task_id, code, message, now):
    def change(record):
        if record["status"] in TERMINAL:
            return
        record.update(status=FAILED, finished_at=iso(now), error={"code": code, "message": message,
                                                                  "retryable": False})
    store.update(task_id, change)
    log.info("task %s failed: %s", task_id, code)


def dispatch(store, providers, clock=utcnow, stopping=None):
    """Submit queued tasks, oldest first, within each provider's concurrency cap.

    `stopping` (an Event) ends the pass after the task in hand: a stopping studio sends nothing new.
    """
    in_flight = {}      # provider -> concurrency slots held by tasks in flight
    for task_id in store.ids_with_status((SUBMITTED, RUNNING)):
        task = store.get(task_id)
        if task and task["provider"] in providers:
            slots = providers[task["provider"]].slots(task)
            in_flight[task["provider"]] = in_flight.get(task["provider"], 0) + slots
    for task_id in store.ids_with_status((QUEUED,)):
        if stopping is not None and stopping.is_set():
            return
        task = store.get(task_id)
        now = clock()
        if task is None or task["status"] != QUEUED or not _due(task, now):
            continue
        provider = providers.get(task["provider"])
        if provider is None or not provider.configured():
            _fail(store, task_id, "provider_not_configured",
                  f"Provider '{task['provider']}' is not configured on this studio.", now)
            continue
        slots = provider.slots(task)
        if in_flight.get(provider.name, 0) + slots > max(provider.max_concurrency, slots):
            continue
        if _submit(store, provider, task, now):
            in_flight[provider.name] = in_flight.get(provider.name, 0) + slots


def _submit(store, provider, task, now):
    """Submit one task; True if it is now in flight at the provider."""
    task_id = task["id"]
    provider_task_id = None
    if task.get("submit_started_at"):
        # An earlier submit may have reached the provider before we lost track of it.
        try:
            provider_task_id = provider.reconcile(task)
        except SubmitOutcomeUnknown as exc:
            _fail(store, task_id, exc.code, exc.message, now)
            return False
        except ProviderError as exc:
            store.update(task_id, _backoff(task, now, 10, getattr(exc, "retry_after", None)))
            return False
        if provider_task_id:
            log.info("task %s reconciled with %s task %s", task_id, provider.name, provider_task_id)
    if provider_task_id is None:
        # Record the attempt before sending, so a crash mid-submit is reconciled, not re-sent.
        def mark(record):
            if record["status"] != QUEUED:
                raise Conflict("no longer queued")
            record.update(submit_started_at=iso(now), attempts=record.get("attempts", 0) + 1)
        try:
            task = store.update(task_id, mark)
        except Conflict:
            return False
        try:
            provider_task_id = provider.submit(task)
        except SubmitOutcomeUnknown:
            log.warning("task %s: submit outcome unknown; will reconcile", task_id)
            store.update(task_id, _backoff(task, now, 10))
            return False
        except ProviderError as exc:
            # Any other submit error guarantees nothing was created (providers/base.py), so a
            # retryable one (rate limit, provider down) keeps the task queued for a while.
            if exc.retryable and task.get("problems", 0) < MAX_SUBMIT_PROBLEMS:
                store.update(task_id, {"submit_started_at": None, "last_error": exc.message,
                                       **_backoff(task, now, 15, getattr(exc, "retry_after", None))})
                log.info("task %s: %s refused for now (%s); retrying later", task_id, provider.name, exc.code)
            else:
                _fail(store, task_id, exc.code, exc.message, now)
            return False
        except Exception:
            log.exception("task %s: submit crashed", task_id)
            _fail(store, task_id, "submit_failed", "The submit failed unexpectedly; see the server log.", now)
            return False

    def submitted(record):
        record.update(provider_task_id=provider_task_id, submitted_at=iso(now), problems=0,
                      next_check_at=None, last_error=None)
        if record["status"] == CANCELLED:
            record["cancel_requested"] = True     # cancelled while sending: stop it at the provider
        else:
            record["status"] = SUBMITTED
    store.update(task_id, submitted)
    log.info("task %s submitted to %s as %s", task_id, provider.name, provider_task_id)
    return True


def poll(store, providers, clock=utcnow):
    """Ask providers about every task in flight that is due, on a bounded thread pool.

    Recently cancelled tasks may still need stopping at the provider, and tasks recently failed
    for taking too long are still looked at now and then, so that a late success is saved.
    """
    now = clock()
    due = []
    for task_id in store.ids_with_status((SUBMITTED, RUNNING)):
        task = store.get(task_id)
        if task and _due(task, now):
            due.append(task)
    since = tasks.new_task_id(now - LATE_CHECK_WINDOW)[:18]
    for task_id in store.ids_with_status((CANCELLED, FAILED), since=since):
        task = store.get(task_id)
        if task and (task.get("cancel_requested") or (task.get("late_check_until") and _due(task, now))):
            due.append(task)
    if not due:
        return
    with ThreadPoolExecutor(max_workers=min(POLL_WORKERS, len(due))) as pool:
        list(pool.map(lambda task: _poll_one(store, providers, task, clock()), due))


def _poll_one(store, providers, task, now):
    task_id = task["id"]
    provider = providers.get(task["provider"])
    if provider is None:
        return
    if task.get("cancel_requested"):
        _cancel_at_provider(store, provider, task, now)
        return
    if provider.query_throttle:
        provider.query_throttle.wait()
    try:
        status = provider.query(task)
    except ProviderError as exc:
        log.warning("task %s: %s query failed (%s)", task_id, provider.name, exc.code)
        store.update(task_id, _backoff(task, now, provider.poll_interval, getattr(exc, "retry_after", None)))
        return
    except Exception:
        log.exception("task %s: %s query crashed", task_id, provider.name)
        store.update(task_id, _backoff(task, now, provider.poll_interval))
        return
    store.update(task_id, lambda record: _apply_status(record, status, provider, now))


def _apply_status(record, status, provider, now):
    """Record what the provider said about a task in flight (or one that timed out earlier)."""
    late = record["status"] == FAILED and record.get("late_check_until")
    if record["status"] not in (SUBMITTED, RUNNING) and not late:
        return              # cancelled or finished meanwhile
    record.update(provider_status=status.raw_status, problems=0,
                  next_check_at=iso(now + timedelta(seconds=provider.poll_interval)))
    if status.progress is not None:
        record["progress"] = status.progress
    if status.cost:
        record["cost"] = status.cost
    if status.state == base.SUCCEEDED:
        if not status.outputs:
            record.update(status=FAILED, finished_at=iso(now), late_check_until=None, error={
                "code": "no_outputs", "message": "The provider finished but returned no result.",
                "retryable": False})
            return
        record.update(status=DOWNLOADING, progress=100, next_check_at=None, late_check_until=None,
                      outputs=[_output_entry(o) for o in status.outputs], error=None, finished_at=None)
        if late:
            record["recovered_late"] = True
            log.info("task %s: late success recovered after a timeout", record["id"])
    elif status.state == base.FAILED:
        record.update(status=FAILED, finished_at=record.get("finished_at") or iso(now), late_check_until=None,
                      error={"code": status.error_code or "provider_failed",
                             "message": status.message or "The provider reported a failure.", "retryable": False})
    elif status.state == base.CANCELLED:
        record.update(status=CANCELLED, finished_at=iso(now), late_check_until=None)
    elif late:
        record["next_check_at"] = iso(now + LATE_CHECK_INTERVAL)
        if parse_iso(record["late_check_until"]) <= now:
            record["late_check_until"] = None       # stop looking; it stays failed
    else:
        if status.state == base.RUNNING:
            record["status"] = RUNNING
        started = parse_iso(record.get("submitted_at")) or now
        if (now - started).total_seconds() > provider.max_running_seconds:
            minutes = provider.max_running_seconds / 60
            record.update(status=FAILED, finished_at=iso(now), late_check_until=iso(now + LATE_CHECK_WINDOW),
                          next_check_at=iso(now + LATE_CHECK_INTERVAL), error={
                              "code": "timeout", "retryable": False,
                              "message": f"{provider.name} did not finish within {minutes:.0f} minutes. The studio "
                                         "keeps checking for a day and saves the result if it arrives late."})


def _output_entry(output):
    return {"kind": output.kind, "remote_url": output.url, "remote_expires_at": output.expires_at,
            "path": output.path, "meta": output.meta}


def _cancel_at_provider(store, provider, task, now):
    try:
        stopped = provider.cancel(task)
    except ProviderError as exc:
        log.warning("task %s: %s cancel failed (%s)", task["id"], provider.name, exc.code)
        stopped = False
    note = None if stopped else f"{provider.name} could not stop the task; it may still be charged."

    def change(record):
        record.update(cancel_requested=False, status=CANCELLED, cancel_note=note,
                      finished_at=record.get("finished_at") or iso(now))
    store.update(task["id"], change)


def download(store, providers, clock=utcnow, stopping=None):
    """Save, verify and thumbnail the outputs of every downloading task.

    Each saved output is recorded at once, so a crash or a cut costs only the file in progress.
    Problems are retried with backoff until the result link expires; a full disk leaves the task
    downloading with a clear message, never succeeded with a missing file. `stopping` (an Event)
    ends the pass after the task in hand.
    """
    for task_id in store.ids_with_status((DOWNLOADING,)):
        if stopping is not None and stopping.is_set():
            return
        task = store.get(task_id)
        now = clock()
        if task is None or task["status"] != DOWNLOADING or not _due(task, now):
            continue
        outputs = list(task["outputs"])
        try:
            for i, out in enumerate(outputs):
                outputs[i] = downloads.save_output(store.dir, task_id, i, out, utcnow())
        except downloads.ResultExpired as exc:
            _fail(store, task_id, "result_expired", str(exc), now)
            continue
        except (OSError, ValueError, requests.RequestException, downloads.DownloadIncomplete) as exc:
            _download_problem(store, task, outputs, exc, now)
            continue

        def finished(record, outputs=outputs, now=now):
            if record["status"] != DOWNLOADING:
                return
            record.update(outputs=outputs, status=SUCCEEDED, finished_at=iso(now), download_error=None,
                          problems=0, next_check_at=None, error=None)
        store.update(task_id, finished)
        log.info("task %s succeeded with %d output(s)", task_id, len(outputs))


def _download_problem(store, task, outputs, exc, now):
    if downloads.disk_full(exc):
        message = "The disk is full: free some space. The result is kept at the provider and saved when there is room."
    else:
        message = f"Saving the result failed ({type(exc).__name__}: {exc}); retrying."
    known_expiry = any(o.get("remote_url") and downloads.link_expiry(o["remote_url"], o.get("remote_expires_at"))
                       for o in outputs)
    # A link the server keeps refusing (403/404/410) is gone, whatever its stated expiry;
    # network trouble and 5xx are worth retrying until the link expires.
    status = exc.response.status_code if isinstance(exc, requests.HTTPError) and exc.response is not None else 0
    refused = 400 <= status < 500 and status not in (408, 429)
    log.warning("task %s: saving results failed: %s", task["id"], exc)
    if (refused or not known_expiry) and task.get("problems", 0) >= MAX_DOWNLOAD_PROBLEMS:
        _fail(store, task["id"], "download_failed", message, now)
        return

    def change(record):
        if record["status"] == DOWNLOADING:
            record.update(outputs=outputs, download_error=message, **_backoff(task, now, 5))
    store.update(task["id"], change)


def compact_store(store, providers=None, clock=utcnow, *, threshold=0.5, min_lines=1000):
    """Compact the task log when most of its lines are superseded."""
    if store.garbage_ratio() > threshold and len(store) + min_lines < store.line_count():
        store.compact()


# ---- routes ---------------------------------------------------------------------------------

def _store():
    return current_app.extensions["task_store"]


def _task_or_404(task_id):
    return access.task_or_404(_store(), task_id)


@bp.get("/tasks")
def page():
    """The tasks page; the list is fetched from /api/tasks by the page's script."""
    return render_template("tasks.html")


@bp.get("/api/tasks")
def list_tasks():
    """Newest first; filters status (comma-separated), kind, provider, q (prompt text); paging."""
    args = request.args
    statuses = [s for s in args.get("status", "").split(",") if s]
    for status in statuses:
        if status not in tasks.STATUSES:
            raise ValidationError(f"Unknown status '{status}'.", code="invalid_field", field="status")
    kind = args.get("kind") or None
    if kind not in (None, "video", "image"):
        raise ValidationError("kind must be video or image.", code="invalid_field", field="kind")
    offset = _int_arg("offset", 0, 0, 10**9)
    limit = _int_arg("limit", 50, 1, 200)
    page, total = _store().list(status=statuses or None, kind=kind, provider=args.get("provider") or None,
                                text=args.get("q") or None, owner=access.visible_owner(), offset=offset,
                                limit=limit)
    return {"tasks": page, "total": total, "offset": offset, "limit": limit}


def _int_arg(name, default, low, high):
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"{name} must be a whole number.", code="invalid_field", field=name) from None
    if not low <= value <= high:
        raise ValidationError(f"{name} must be between {low} and {high}.", code="invalid_field", field=name)
    return value


@bp.get("/api/tasks/<task_id>")
def get_task(task_id):
    return _task_or_404(task_id)


@bp.post("/api/tasks/<task_id>/cancel")
def cancel_task(task_id):
    """Cancel a task that has not finished; stopping it at the provider happens in the pipeline."""
    _task_or_404(task_id)
    now = utcnow()

    def change(record):
        if record["status"] in TERMINAL:
            raise Conflict(f"The task is already {record['status']}.")
        if record["status"] == DOWNLOADING:
            raise Conflict("The result is ready and being saved; it can no longer be cancelled.")
        if record.get("provider_task_id"):
            record["cancel_requested"] = True   # the poller asks the provider to stop it
        record.update(status=CANCELLED, finished_at=iso(now))
    return _store().update(task_id, change)


@bp.post("/api/tasks/<task_id>/retry")
def retry_task(task_id):
    """Queue a new task with the same settings and pictures, linked to this one."""
    old = _task_or_404(task_id)
    if old["status"] not in TERMINAL:
        raise Conflict("The task is still in progress; cancel it or wait for it to finish.")
    provider = current_app.extensions["providers"].get(old["provider"])
    if provider is None or not provider.configured():
        raise ValidationError(f"Provider '{old['provider']}' is not configured.",
                              code="provider_not_configured", field="provider")
    access.check_quota(_store(), old["kind"], int(old["params"].get("n") or 1))
    record = tasks.create_task(
        _store(), current_app.config["DATA_DIR"], kind=old["kind"], provider=old["provider"],
        model=old["model"], params=old["params"], images={i["role"]: i for i in old["inputs"]},
        owner=old.get("owner"), retry_of=old["id"])
    return {"task_id": record["id"], "status": record["status"]}, 202


@bp.delete("/api/tasks/<task_id>")
def delete_task(task_id):
    """Delete a finished task: its record, its pictures and its results."""
    task = _task_or_404(task_id)
    if task["status"] in ACTIVE:
        raise Conflict("The task is still in progress; cancel it first.")
    _store().delete(task_id)
    tasks.remove_files(current_app.config["DATA_DIR"], task_id)
    return "", 204


@bp.get("/media/<path:subpath>")
def media_file(subpath):
    """Serve a task's pictures and results (with HTTP Range for seeking)."""
    parts = subpath.split("/")
    if len(parts) < 3 or parts[0] not in ("inputs", "outputs") or subpath.endswith(".part"):
        raise NotFound("No such file.")
    _task_or_404(parts[1])          # the task's owner (or the admin) only
    return send_from_directory(current_app.config["DATA_DIR"], subpath, conditional=True,
                               as_attachment=request.args.get("download") == "1", max_age=3600)
