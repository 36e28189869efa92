"""The task pipeline and the task JSON routes.

Pipeline jobs (plain functions of the store, the providers and a clock, so tests call them
directly; `scheduler.py` runs them): `dispatch` submits queued tasks within per-provider
concurrency caps, sharing free slots fairly between owners and, within an owner, between batches
and single tasks; `poll` asks providers how submitted tasks are doing; `download` saves results
on a bounded pool per provider, verifies them and makes thumbnails. Storyboard tasks
(storyboards.py) are never sent to a provider: their scenes are. A task is `succeeded` only when every output is on disk
and verified. A submit whose outcome is unknown is reconciled, never blindly re-sent.

Routes: `GET /tasks` (the page), `GET /api/tasks`, `GET /api/tasks/<id>`,
`POST /api/tasks/<id>/cancel|retry|favourite`, `DELETE /api/tasks/<id>`, `GET /media/<path>`
(Range-capable).
"""

import functools
import heapq
import itertools
import logging
import mimetypes
import os
import re
import stat
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import requests
from flask import Blueprint, current_app, g, render_template, request, send_file
from pydantic import BaseModel

import access
import config
import downloads
import metrics
import queue_info
import storyboards
import submit_journal
import tasks
from errors import (
    N_,
    AppError,
    Conflict,
    NotFound,
    ProviderBadResponse,
    ProviderError,
    ProviderRateLimited,
    SubmitOutcomeUnknown,
    Text,
    ValidationError,
)
from fileio import disk_nearly_full, media_root
from i18n import translate
from providers import base
from redact import redact_url
from tasks import (
    ACTIVE,
    CANCELLED,
    DOWNLOADING,
    FAILED,
    LATE_CHECK_INTERVAL,
    LATE_CHECK_WINDOW,
    QUEUED,
    RUNNING,
    SUBMITTED,
    TERMINAL,
    iso,
    parse_iso,
    utcnow,
)
from validation import STRICT, parse_body

log = logging.getLogger(__name__)
bp = Blueprint("task_query", __name__)

POLL_WORKERS = 16                # bounded: polls are I/O-bound; providers' query rates apply on top
MAX_BACKOFF_SECONDS = 300
MAX_DOWNLOAD_PROBLEMS = 12       # for refused links, or links of unknown expiry: about an hour of tries
MAX_SUBMIT_PROBLEMS = 10         # rate-limited/unreachable submits before a task fails (~30 min)
MAX_QUERY_PROBLEMS = 30          # failed status checks in a row before a task fails (~2 h at the backoff cap)


# ---- pipeline -------------------------------------------------------------------------------

def _due(task, now):
    at = parse_iso(task.get("next_check_at"))
    return at is None or at <= now


def _backoff(task, now, base_seconds, retry_after=None):
    """Next time to look at a task after its n-th consecutive problem (exponential, capped)."""
    problems = task.get("problems", 0) + 1
    delay = retry_after if retry_after else min(MAX_BACKOFF_SECONDS, base_seconds * 2 ** (problems - 1))
    return {"problems": problems, "next_check_at": iso(now + timedelta(seconds=delay))}


def _fail(store, task_id, code, message, now, late_check=False, provider_message=None):
    """End a task with an error. With `late_check` the provider may still have the work: the
    poller keeps looking for a day (querying it, or reconciling when its id is unknown)."""
    def change(record):
        if record["status"] not in TERMINAL:
            tasks.fail(record, code, message, now, late_check=late_check, provider_message=provider_message)
    store.update(task_id, metrics.counting_finish(change))
    log.info("task %s failed: %s", task_id, code)


def _label(provider):
    """The provider's human name (from its capability table), for messages users read."""
    label = getattr(provider, "label", None)
    if not label:
        try:
            label = provider.capabilities().get("label")
        except Exception:       # a capability table that cannot be built must not hide the problem
            label = None
    return label or provider.name


def _problem(record, now, code, template):
    """The task's latest problem. `since` stays while the same problem goes on; the message says
    it in the studio's words (never a provider's raw answer, URL or key)."""
    old = record.get("problem") or {}
    since = old.get("since") if old.get("code") == code and old.get("since") else iso(now)
    return {"code": code, "since": since, **template(since=f"{parse_iso(since):%H:%M} UTC").fields()}


def _problem_text(label, exc, submitting):
    """(code, message) for a provider call that failed: the message is a Text maker that takes `since`."""
    if isinstance(exc, SubmitOutcomeUnknown):
        template = N_("%(label)s did not confirm the submit (since %(since)s); checking whether it arrived "
                      "before sending anything again.")
    elif isinstance(exc, ProviderRateLimited):
        template = N_("%(label)s has been busy (rate limited) since %(since)s; trying again later.")
    elif isinstance(exc, ProviderBadResponse):
        template = N_("%(label)s has answered with unreadable replies since %(since)s; still checking.")
    elif isinstance(exc, ProviderError) and not exc.retryable:
        template = (N_("%(label)s has refused the studio's submit since %(since)s (%(code)s); still trying.")
                    if submitting else
                    N_("%(label)s has refused the studio's status checks since %(since)s (%(code)s); still trying."))
    else:
        return "provider_unreachable", functools.partial(
            Text, N_("%(label)s has not answered since %(since)s; still checking."), label=label)
    return exc.code, functools.partial(Text, template, label=label, code=exc.code)


def _problem_age(problem, now):
    since = parse_iso((problem or {}).get("since"))
    return (now - since).total_seconds() if since else 0


def dispatch(store, providers, clock=utcnow, stopping=None):
    """Submit queued tasks within each provider's concurrency cap (and each model's, where the
    provider caps per model), sharing the free slots fairly (`_fair_order`).

    `stopping` (an Event) ends the pass after the task in hand: a stopping studio sends nothing new.
    """
    in_flight = {}      # provider, and (provider, model group) where it caps per model -> slots held
    load = {}           # (provider, owner) and (provider, owner, group) -> tasks in flight
    for task_id in store.ids_with_status((SUBMITTED, RUNNING)):
        task = store.get(task_id)
        if task and task["provider"] in providers and not storyboards.is_storyboard(task):
            _hold(in_flight, providers[task["provider"]], task)
            _count_load(load, task)
    waiting = []
    for task_id in store.ids_with_status((QUEUED,)):
        task = store.get(task_id)
        now = clock()
        if task is None or task["status"] != QUEUED or not _due(task, now) or storyboards.is_storyboard(task):
            continue
        if task.get("paused"):          # its batch is paused (batches.py)
            continue
        provider = providers.get(task["provider"])
        if provider is None or not provider.configured():
            _fail(store, task_id, "provider_not_configured", Text(
                N_("Provider '%(provider)s' is not configured on this studio."), provider=task["provider"]), now)
        else:
            waiting.append(task)
    served = _served_by_store.setdefault(str(store.dir), {})
    for task in _fair_order(waiting, load, lambda t: _has_room(in_flight, providers[t["provider"]], t), served):
        if stopping is not None and stopping.is_set():
            return
        provider, task = providers[task["provider"]], store.get(task["id"])
        if task is not None and task["status"] == QUEUED and _submit(store, provider, task, clock()):
            _hold(in_flight, provider, task)
            _count_load(load, task)


# ---- fair shares of the slots

def _share_keys(task):
    """Whom a task's slot counts for: its owner at its provider, and its group within the owner's
    tasks there (its batch or storyboard; a single task is a group of its own)."""
    owner = (task["provider"], task.get("owner") or "")
    group = task.get("batch_id") or task.get("storyboard_id") or task["id"]
    return owner, (*owner, group)


def _count_load(load, task):
    for key in _share_keys(task):
        load[key] = load.get(key, 0) + 1


# Per task store: (provider, owner) and (provider, owner, group) -> when it was last given a slot (a
# running count). Only the dispatcher (one thread of the leading process) uses it; a restart forgets
# it, which costs at most one turn.
_served_by_store = {}
_turns = itertools.count(1)


def _fair_order(waiting, load, has_room, served):
    """Yield the tasks to submit, one at a time: the next task of the group whose owner holds
    the fewest slots at that provider (of those, the one served longest ago), then, within that
    owner, the group holding the fewest (served longest ago), then the oldest task.

    Counts include what is in flight; the caller counts each submit (`_count_load`) and the
    yield marks the turn, so owners and groups take turns across passes too: a 1,000-item batch
    gets a slot like another user's single task, and one user's batch does not hold up that
    user's own single tasks. A group whose next task finds no room waits for the next pass.
    """
    groups = {}
    for task in waiting:                    # oldest first, so each group's queue is oldest first
        groups.setdefault(_share_keys(task)[1], deque()).append(task)
    for key in set(served) - set(load) - set(groups) - {group[:2] for group in groups}:
        del served[key]                    # neither waiting nor in flight: forget it

    def rank(key):
        owner = key[:2]
        return (load.get(owner, 0), served.get(owner, 0), load.get(key, 0), served.get(key, 0),
                groups[key][0]["id"])
    # Ranks only grow (counts go up, a group's next task is younger), so a stale heap entry is
    # pushed back with its new rank rather than searched for.
    heap = [(rank(key), key) for key in groups]
    heapq.heapify(heap)
    full = set()        # tasks of this shape found no room: the same caps and slots, no need to ask again
    while heap:
        ranked, key = heapq.heappop(heap)
        if ranked != rank(key):
            heapq.heappush(heap, (rank(key), key))
            continue
        task = groups[key][0]
        shape = (task["provider"], task["model"], task["kind"], (task.get("params") or {}).get("n"))
        if shape in full or not has_room(task):
            full.add(shape)                 # the group waits for the next pass
            continue
        yield task
        served[key[:2]] = served[key] = next(_turns)
        groups[key].popleft()
        if groups[key]:
            heapq.heappush(heap, (rank(key), key))


def _slot_keys(provider, task):
    """The counters a task in flight holds slots in: its provider's, and its model group's."""
    cap = provider.model_cap(task)
    return [(provider.name, provider.max_concurrency)] + ([((provider.name, cap[0]), cap[1])] if cap else [])


def _hold(in_flight, provider, task):
    for key, _limit in _slot_keys(provider, task):
        in_flight[key] = in_flight.get(key, 0) + provider.slots(task)


def _has_room(in_flight, provider, task):
    """Whether one more task fits every cap (a task needing more slots than a cap still goes alone)."""
    slots = provider.slots(task)
    return all(in_flight.get(key, 0) + slots <= max(limit, slots) for key, limit in _slot_keys(provider, task))


class _NotNow(Exception):
    """The task was dealt with (failed, or backed off for a later try): nothing is in flight."""


def _submit(store, provider, task, now):
    """Submit one task; True if it is now in flight at the provider.

    The submit journal (submit_journal.py) is asked first: a task it knows was sent is adopted
    (id known) or reconciled (outcome unknown), never sent again, even when the task record came
    back from a backup as if it had never left.
    """
    missing = _missing_inputs(store.dir, task)
    if missing:
        _fail(store, task["id"], "input_missing", _input_missing_message(missing), now)
        return False
    journal = submit_journal.for_dir(store.dir)
    try:
        provider_task_id = _earlier_submit(store, provider, task, journal, now)
        if provider_task_id is None:
            provider_task_id = _send(store, provider, task, journal, now)
    except _NotNow:
        return False
    store.update(task["id"], lambda record: tasks.submitted(record, provider_task_id, now))
    log.info("task %s submitted to %s as %s", task["id"], provider.name, provider_task_id)
    return True


def _earlier_submit(store, provider, task, journal, now):
    """The provider's id for a submit sent before (from the journal, or reconciled), or None when
    none reached it; _NotNow when that cannot be told yet."""
    task_id = task["id"]
    sent = journal.lookup(task_id)
    if sent and sent.provider_task_id:
        log.info("task %s: the submit journal has %s task %s; adopting it", task_id, provider.name,
                 sent.provider_task_id)
        return sent.provider_task_id
    if not (task.get("submit_started_at") or (sent and sent.open)):
        return None
    if not task.get("submit_started_at"):
        task = store.update(task_id, {"submit_started_at": sent.last_at})   # the window to reconcile in
    try:
        found = provider.reconcile(task)
    except SubmitOutcomeUnknown as exc:
        _fail(store, task_id, exc.code, exc.summary(), now, late_check=True,
              provider_message=exc.message)
        raise _NotNow from None
    except ProviderError as exc:
        _submit_problem(store, provider, task, exc, now, ambiguous=True)
        raise _NotNow from None
    if found:
        journal.created(task_id, provider.name, iso(now), found)
        log.info("task %s reconciled with %s task %s", task_id, provider.name, found)
    else:
        journal.not_created(task_id, provider.name, iso(now))
    return found


def _send(store, provider, task, journal, now):
    """Record the attempt (task and journal) before sending, so a crash mid-submit is reconciled,
    not re-sent; then send it. The provider's task id, or _NotNow."""
    task_id = task["id"]

    def mark(record):
        if record["status"] != QUEUED:
            raise Conflict("no longer queued")
        record.update(submit_started_at=iso(now), attempts=record.get("attempts", 0) + 1)
    try:
        task = store.update(task_id, mark)
    except Conflict:
        raise _NotNow from None
    journal.sent(task_id, provider.name, iso(now))
    try:
        provider_task_id = metrics.call("submit", provider.name, provider.submit, task)
    except SubmitOutcomeUnknown as exc:
        log.warning("task %s: submit outcome unknown; will reconcile", task_id)
        _submit_problem(store, provider, task, exc, now, ambiguous=True)
        raise _NotNow from None
    except ProviderError as exc:
        # Any other submit error guarantees nothing was created (providers/base.py), so a
        # retryable one (rate limit, provider down) keeps the task queued for a while.
        journal.not_created(task_id, provider.name, iso(now))
        if exc.retryable:
            _submit_problem(store, provider, task, exc, now, ambiguous=False)
        else:
            _fail(store, task_id, exc.code, exc.summary(), now, provider_message=exc.message)
        raise _NotNow from None
    except FileNotFoundError:
        # The picture vanished between the check and the read: nothing was sent.
        journal.not_created(task_id, provider.name, iso(now))
        _fail(store, task_id, "input_missing", _input_missing_message(_missing_inputs(store.dir, task)), now)
        raise _NotNow from None
    except Exception:
        log.exception("task %s: submit crashed", task_id)
        _fail(store, task_id, "submit_failed", Text(N_("The submit failed unexpectedly; see the server log.")), now)
        raise _NotNow from None
    journal.created(task_id, provider.name, iso(now), provider_task_id)
    return provider_task_id


def _submit_problem(store, provider, task, exc, now, *, ambiguous):
    """A submit (or its reconcile) went wrong in a way worth another try: show it on the task, back
    off, and end the task once the retry cap or the running-time limit is reached."""
    label = _label(provider)
    code, template = _problem_text(label, exc, submitting=True)
    retry_after = getattr(exc, "retry_after", None)

    def change(record):
        if record["status"] != QUEUED:
            return
        problem = _problem(record, now, code, template)
        record.update(problem=problem, last_error=exc.message,
                      **_backoff(record, now, 10 if ambiguous else 15, retry_after))
        if not ambiguous:
            record["submit_started_at"] = None      # certainly not created: a later try is a fresh submit
        if record["problems"] > MAX_SUBMIT_PROBLEMS or _problem_age(problem, now) > provider.max_running_seconds:
            message = Text(N_("%(label)s kept failing since %(since)s (%(tries)d tries), so the studio stopped "
                              "trying. A try may have reached %(label)s: the studio keeps checking for a day and "
                              "saves the result if it turns up.") if ambiguous else
                           N_("%(label)s kept failing since %(since)s (%(tries)d tries), so the studio stopped "
                              "trying."), label=label, since=f"{parse_iso(problem['since']):%H:%M} UTC",
                           tries=record["problems"])
            tasks.fail(record, "provider_unreachable" if code == "provider_unreachable" else "submit_gave_up",
                       message, now, late_check=ambiguous)
    store.update(task["id"], metrics.counting_finish(change))


def _missing_inputs(data_dir, task):
    """Roles of the task's input pictures that are no longer on disk."""
    root = media_root(data_dir)
    return [item["role"] for item in task.get("inputs") or [] if not (root / item["path"]).is_file()]


def _input_missing_message(roles, retried=False):
    names = {"first": N_("first frame"), "tail": N_("last frame"), "reference": N_("reference picture")}
    what = [names.get(role, role) for role in roles] or [N_("input picture")]
    return Text(N_("The task's %(what)s is no longer on the studio's disk (deleted?), so it cannot be retried. "
                   "Create a new task.") if retried else
                N_("The task's %(what)s is no longer on the studio's disk (deleted?), so it cannot be sent. "
                   "Create a new task."), what=what)


def poll(store, providers, clock=utcnow):
    """Ask providers about every task in flight that is due, on a bounded thread pool.

    Recently cancelled tasks may still need stopping at the provider, and tasks recently failed
    for taking too long are still looked at now and then, so that a late success is saved.
    """
    now = clock()
    due = []
    for task_id in store.ids_with_status((SUBMITTED, RUNNING)):
        task = store.get(task_id)
        if task and _due(task, now) and not storyboards.is_storyboard(task):     # no provider runs those
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
    if not task.get("provider_task_id"):
        _late_reconcile(store, provider, task, now)
        return
    if provider.query_throttle:
        provider.query_throttle.wait()
    try:
        status = metrics.call("poll", provider.name, provider.query, task)
    except Exception as exc:
        if isinstance(exc, ProviderError):
            log.warning("task %s: %s query failed (%s)", task_id, provider.name, exc.code)
        else:
            log.exception("task %s: %s query crashed", task_id, provider.name)
        store.update(task_id, metrics.counting_finish(lambda record, e=exc: _query_problem(record, provider, e, now)))
        return
    store.update(task_id, metrics.counting_finish(lambda record: _apply_status(record, status, provider, now)))


def _query_problem(record, provider, exc, now):
    """A status query failed: show it on the task and back off; the running-time limit and the
    retry cap still apply, so a provider that never answers cannot keep a task open forever."""
    late = record["status"] == FAILED and record.get("late_check_until")
    if record["status"] not in (SUBMITTED, RUNNING) and not late:
        return
    record.update(_backoff(record, now, provider.poll_interval, getattr(exc, "retry_after", None)))
    if late:
        _next_late_check(record, now)
        return
    label = _label(provider)
    code, template = _problem_text(label, exc, submitting=False)
    record["problem"] = problem = _problem(record, now, code, template)
    if _over_time(record, provider, now):
        _timed_out(record, provider, now, since=f"{parse_iso(problem['since']):%H:%M} UTC")
    elif record["problems"] > MAX_QUERY_PROBLEMS:
        tasks.fail(record, "provider_unreachable", Text(
            N_("%(label)s failed %(count)d status checks in a row since %(since)s, so the studio stopped waiting. It "
               "keeps checking for a day and saves the result if it arrives late."), label=label,
            count=record["problems"], since=f"{parse_iso(problem['since']):%H:%M} UTC"), now, late_check=True)


def _late_reconcile(store, provider, task, now):
    """A task that failed after a submit of unknown outcome has no provider id to query: ask the
    provider (now and then, for a day) whether the submit arrived after all, and adopt it if so."""
    journal = submit_journal.for_dir(store.dir)
    try:
        found = provider.reconcile(task) if task.get("submit_started_at") else None
    except ProviderError:
        found = False           # still unknown: look again later

    def change(record):
        if record["status"] != FAILED or not record.get("late_check_until") or record.get("provider_task_id"):
            return
        if found:
            record.update(provider_task_id=found, submitted_at=record.get("submitted_at") or iso(now),
                          next_check_at=None)
        elif found is None:
            record.update(late_check_until=None, next_check_at=None)    # certainly not created
        else:
            _next_late_check(record, now)
    store.update(task["id"], change)
    if found:
        journal.created(task["id"], provider.name, iso(now), found)
        log.info("task %s: a late check found %s task %s", task["id"], provider.name, found)


def _next_late_check(record, now):
    record["next_check_at"] = iso(now + LATE_CHECK_INTERVAL)
    if parse_iso(record["late_check_until"]) <= now:
        record["late_check_until"] = None       # stop looking; it stays failed


def _over_time(record, provider, now):
    started = parse_iso(record.get("submitted_at")) or now
    return (now - started).total_seconds() > provider.max_running_seconds


def _timed_out(record, provider, now, since=None):
    """Fail a task that ran past the provider's limit; `since` says when the provider stopped
    answering, when it was not answering either."""
    template = (N_("%(label)s has not given a usable answer since %(since)s, and it did not finish within "
                   "%(minutes)d minutes. The studio keeps checking for a day and saves the result if it arrives "
                   "late.") if since else
                N_("%(label)s did not finish within %(minutes)d minutes. The studio keeps checking for a day and "
                   "saves the result if it arrives late."))
    tasks.fail(record, "timeout", Text(template, label=_label(provider), since=since,
                                       minutes=round(provider.max_running_seconds / 60)), now, late_check=True)


def _apply_status(record, status, provider, now):
    """Record what the provider said about a task in flight (or one that timed out earlier)."""
    late = record["status"] == FAILED and record.get("late_check_until")
    if record["status"] not in (SUBMITTED, RUNNING) and not late:
        return              # cancelled or finished meanwhile
    record.update(provider_status=status.raw_status, problems=0, problem=None,
                  next_check_at=iso(now + timedelta(seconds=provider.poll_interval)))
    if status.progress is not None:
        record["progress"] = status.progress
    if status.cost:
        record["cost"] = status.cost
    if status.state == base.ReportState.SUCCEEDED:
        _reported_success(record, status, now, late)
    elif status.state == base.ReportState.FAILED:
        # The studio's words around the provider's reason (kept as it is, and beside as provider_message).
        reason = Text(N_("%(label)s reported that the task failed: %(reason)s"), label=_label(provider),
                      reason=status.message) if status.message else Text(
            N_("%(label)s reported that the task failed."), label=_label(provider))
        tasks.fail(record, status.error_code or "provider_failed", reason, now, keep_finished=True,
                   provider_message=status.message)
    elif status.state == base.ReportState.CANCELLED:
        if late:
            record.update(late_check_until=None, next_check_at=None)     # it stays failed
        else:
            tasks.move(record, CANCELLED, now, late_check_until=None)
    elif late:
        _next_late_check(record, now)
    else:
        _still_working(record, status, provider, now)


def _still_working(record, status, provider, now):
    if status.state == base.ReportState.RUNNING:
        tasks.running(record, now)
    if _over_time(record, provider, now):
        _timed_out(record, provider, now)


def _reported_success(record, status, now, late):
    """The provider has finished: save its results (a success with none is a failure)."""
    if not status.outputs:
        tasks.fail(record, "no_outputs", Text(N_("The provider finished but returned no result.")), now)
        return
    tasks.downloading(record, [_output_entry(o) for o in status.outputs], now)
    if late:
        log.info("task %s: late success recovered after a timeout", record["id"])


def _output_entry(output):
    return {"kind": output.kind, "remote_url": output.url, "remote_expires_at": output.expires_at,
            "path": output.path, "meta": output.meta}


def _cancel_at_provider(store, provider, task, now):
    try:
        stopped = provider.cancel(task)
    except ProviderError as exc:
        log.warning("task %s: %s cancel failed (%s)", task["id"], provider.name, exc.code)
        stopped = False
    note = None if stopped else Text(N_("%(label)s could not stop the task; it may still be charged."),
                                     label=_label(provider))
    store.update(task["id"], {"cancel_requested": False, **tasks.cancel_note(note)})


def download(store, providers, clock=utcnow, stopping=None, workers=config.DOWNLOAD_WORKERS_PER_PROVIDER):
    """Save, verify and thumbnail the outputs of every downloading task, on a pool of `workers`
    threads per provider (downloads are I/O-bound; one provider's slow CDN does not hold up another's).

    Each saved output is recorded at once, so a crash or a cut costs only the file in progress.
    Problems are retried with backoff until the result link expires; a full disk leaves the task
    downloading with a clear message, never succeeded with a missing file. A task is saved by one
    thread at a time (`_downloading`), even when passes overlap. `stopping` (an Event) ends the
    pass after the tasks in hand: the ones not yet started stay downloading for the next start.
    """
    now = clock()
    due = {}
    for task_id in store.ids_with_status((DOWNLOADING,)):
        task = store.get(task_id)
        if task is not None and task["status"] == DOWNLOADING and _due(task, now):
            due.setdefault(task["provider"], []).append(task_id)
    pools = [ThreadPoolExecutor(max_workers=min(workers, len(ids)), thread_name_prefix=f"download-{name}")
             for name, ids in due.items()]
    try:
        for pool, ids in zip(pools, due.values(), strict=True):
            for task_id in ids:
                pool.submit(_download_guarded, store, task_id, clock, stopping)
    finally:
        for pool in pools:
            pool.shutdown(wait=True)


_downloading = set()                # ids of the tasks being saved in this process
_downloading_lock = threading.Lock()


def _download_guarded(store, task_id, clock, stopping):
    if stopping is not None and stopping.is_set():
        return
    with _downloading_lock:
        if task_id in _downloading:
            return
        _downloading.add(task_id)
    try:
        _download_one(store, task_id, clock)
    except Exception:               # a worker must not lose a failure silently
        log.exception("task %s: saving results crashed", task_id)
    finally:
        with _downloading_lock:
            _downloading.discard(task_id)


def _download_one(store, task_id, clock):
    task = store.get(task_id)
    now = clock()
    if task is None or task["status"] != DOWNLOADING or not _due(task, now):
        return
    outputs = list(task["outputs"])
    try:
        for i, out in enumerate(outputs):
            outputs[i] = metrics.call("download", task["provider"], downloads.save_output,
                                      store.dir, task_id, i, out, utcnow())
    except downloads.ResultExpired as exc:
        _fail(store, task_id, "result_expired", Text(N_("The provider's result link expired before it could be "
                                                        "saved.")), now, provider_message=str(exc))
        return
    except (OSError, ValueError, requests.RequestException, downloads.DownloadIncomplete) as exc:
        _download_problem(store, task, outputs, exc, now)
        return

    def finished(record):
        if record["status"] == DOWNLOADING:
            tasks.succeeded(record, outputs, now)
    store.update(task_id, metrics.counting_finish(finished))
    log.info("task %s succeeded with %d output(s)", task_id, len(outputs))


def _download_problem(store, task, outputs, exc, now):
    # Library messages embed the failing URL, and result links are signed: never keep their query strings.
    detail = redact_url(exc)
    if isinstance(exc, downloads.AddressRefused):      # no retry sends it anywhere else
        log.warning("task %s: saving results refused: %s", task["id"], detail)
        _fail(store, task["id"], "download_failed", Text(N_("Saving the result failed: %(detail)s."), detail=detail),
              now)
        return
    if downloads.disk_full(exc):
        message = Text(N_("The disk is full: free some space. The result is kept at the provider and saved when there "
                          "is room."))
    else:
        message = Text(N_("Saving the result failed (%(error)s: %(detail)s); retrying."), error=type(exc).__name__,
                       detail=detail)
    known_expiry = any(o.get("remote_url") and downloads.link_expiry(o["remote_url"], o.get("remote_expires_at"))
                       for o in outputs)
    # A link the server keeps refusing (403/404/410) is gone, whatever its stated expiry;
    # network trouble and 5xx are worth retrying until the link expires.
    status = exc.response.status_code if isinstance(exc, requests.HTTPError) and exc.response is not None else 0
    refused = 400 <= status < 500 and status not in (408, 429)
    log.warning("task %s: saving results failed: %s", task["id"], detail)
    if (refused or not known_expiry) and task.get("problems", 0) >= MAX_DOWNLOAD_PROBLEMS:
        _fail(store, task["id"], "download_failed", message, now)
        return

    def change(record):
        if record["status"] == DOWNLOADING:
            record.update(outputs=outputs, **tasks.download_error(message), **_backoff(task, now, 5))
    store.update(task["id"], change)


def compact_store(store, providers=None, clock=utcnow, *, threshold=0.5, min_lines=1000):
    """Compact the task log when most of its lines are superseded."""
    if store.garbage_ratio() > threshold and len(store) + min_lines < store.line_count():
        store.compact()


# ---- routes ---------------------------------------------------------------------------------

def _store():
    return current_app.extensions["task_store"]


def _for_client(record):
    return tasks.for_client(record, disk_full=disk_nearly_full(current_app.config["DATA_DIR"]),
                            queue=queue_info.for_request(current_app), translate=translate)


def _task_or_404(task_id):
    return access.task_or_404(_store(), task_id)


@bp.get("/tasks")
def page():
    """The tasks page; the list is fetched from /api/tasks by the page's script."""
    return render_template("tasks.html", usage=access.usage(g.user))


_LIST_ARGS = {"status": 200, "kind": 10, "provider": 64, "q": 500, "favourite": 1, "offset": 12,
              "limit": 12}  # name: longest value
_WHOLE_NUMBER = re.compile(r"[0-9]{1,12}")


@bp.get("/api/tasks")
def list_tasks():
    """Newest first; filters status (comma-separated), kind, provider, q (prompt text), favourite=1
    (starred only); paging."""
    args = _list_args()
    if args.get("favourite") not in (None, "", "0", "1"):
        raise ValidationError(N_("favourite must be 0 or 1."), code="invalid_field", field="favourite")
    statuses = [s for s in args.get("status", "").split(",") if s]
    for status in statuses:
        if status not in tasks.STATUSES:
            raise ValidationError(N_("Unknown status '%(value)s'."), code="invalid_field", field="status",
                                  params={"value": status[:40]})
    kind = args.get("kind") or None
    if kind not in (None, "video", "image"):
        raise ValidationError(N_("kind must be video or image."), code="invalid_field", field="kind")
    offset = _int_arg(args, "offset", 0, 0, 10**9)
    limit = _int_arg(args, "limit", 50, 1, 200)
    page, total = _store().list(status=statuses or None, kind=kind, provider=args.get("provider") or None,
                                text=args.get("q") or None, owner=access.visible_owner(),
                                favourite=True if args.get("favourite") == "1" else None, offset=offset,
                                limit=limit)
    return {"tasks": [_for_client(t) for t in page], "total": total, "offset": offset, "limit": limit}


def _list_args():
    """The listing's query arguments, each known, given once, of sane length and free of control characters."""
    args = {}
    for name, values in request.args.lists():
        if name not in _LIST_ARGS:
            raise ValidationError(N_("Unknown query argument '%(field)s'."), code="unknown_field", field=name[:40],
                                  params={"field": name[:40]})
        if len(values) > 1:
            raise ValidationError(N_("%(field)s is given more than once."), code="invalid_field", field=name,
                                  params={"field": name})
        value = values[0]
        if len(value) > _LIST_ARGS[name]:
            raise ValidationError(N_("%(field)s is longer than %(max)d characters."), code="invalid_field",
                                  field=name, params={"field": name, "max": _LIST_ARGS[name]})
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValidationError(N_("%(field)s holds control characters."), code="invalid_field", field=name,
                                  params={"field": name})
        args[name] = value
    return args


def _int_arg(args, name, default, low, high):
    raw = args.get(name)
    if raw in (None, ""):
        return default
    # Plain ASCII digits only: int() would also take " 5", "+5", "1_000" and other scripts' digits.
    if not _WHOLE_NUMBER.fullmatch(raw):
        raise ValidationError(N_("%(field)s must be a whole number."), code="invalid_field", field=name,
                              params={"field": name})
    value = int(raw)
    if not low <= value <= high:
        raise ValidationError(N_("%(field)s must be between %(low)d and %(high)d."), code="invalid_field",
                              field=name, params={"field": name, "low": low, "high": high})
    return value


@bp.get("/api/tasks/<task_id>")
def get_task(task_id):
    return _for_client(_task_or_404(task_id))


@bp.post("/api/tasks/<task_id>/cancel")
def cancel_task(task_id):
    """Cancel a task that has not finished; stopping it at the provider happens in the pipeline."""
    _task_or_404(task_id)
    now = utcnow()
    change = functools.partial(tasks.cancel, now=now)     # the poller stops it at the provider
    record = _store().update(task_id, metrics.counting_finish(change))
    if not record.get("submit_started_at") and record.get("owner"):
        # No provider ever saw it, so it cost nothing: its quota comes back.
        current_app.extensions["ledger"].refund(record["owner"], record["kind"], task_id)
    if storyboards.is_storyboard(record):
        storyboards.cancel_scenes(_store(), record, now, current_app.extensions["ledger"])
    return _for_client(record)


@bp.post("/api/tasks/<task_id>/retry")
@access.limited("generate")
def retry_task(task_id):
    """Queue a new task with the same settings and pictures, linked to this one."""
    old = _task_or_404(task_id)
    if old["status"] not in TERMINAL:
        raise Conflict(N_("The task is still in progress; cancel it or wait for it to finish."))
    provider = current_app.extensions["providers"].get(old["provider"])
    if provider is None or not provider.configured():
        raise ValidationError(N_("Provider '%(provider)s' is not configured."), code="provider_not_configured",
                              field="provider", params={"provider": old["provider"]})
    if storyboards.is_storyboard(old):      # only the scenes that did not succeed run again
        record = storyboards.retry(_store(), old)
        return {"task_id": record["id"], "status": record["status"]}, 202
    missing = _missing_inputs(_store().dir, old)
    if missing:
        # Gone for good: 410 with the task error's code, not a 500 from copying a missing file.
        text = _input_missing_message(missing, retried=True)
        raise AppError(text.template, code="input_missing", status=410, params=text.params)
    model = next((m for m in provider.capabilities()["models"]
                  if m["id"] == old["model"] and m["kind"] == old["kind"]), {})
    access.check_request_limits(old["kind"], model, old["params"])
    record = access.create_within_limits(_store(), old["kind"], old["params"], lambda task_id: tasks.create_task(
        _store(), current_app.config["DATA_DIR"], kind=old["kind"], provider=old["provider"],
        model=old["model"], params=old["params"], images={i["role"]: i for i in old["inputs"]},
        owner=old.get("owner"), retry_of=old["id"], task_id=task_id))
    return {"task_id": record["id"], "status": record["status"]}, 202


class FavouriteRequest(BaseModel):
    model_config = STRICT
    favourite: bool


@bp.post("/api/tasks/<task_id>/favourite")
def favourite_task(task_id):
    """Star a task (or take the star off): {"favourite": true|false}; only its owner may."""
    task = _task_or_404(task_id)
    if task.get("owner") != access.owner_id():
        # The admin sees every task, but a star is the owner's own choice.
        raise NotFound(N_("No task '%(id)s'."), params={"id": task_id})
    wanted = parse_body(FavouriteRequest).favourite
    try:
        return _for_client(_store().update(task_id, {"favourite": wanted}))
    except KeyError:            # deleted meanwhile
        raise NotFound(N_("No task '%(id)s'."), params={"id": task_id}) from None


@bp.delete("/api/tasks/<task_id>")
def delete_task(task_id):
    """Delete a finished task: its record, its pictures and its results."""
    task = _task_or_404(task_id)
    if task["status"] in ACTIVE:
        raise Conflict(N_("The task is still in progress; cancel it first."))
    _store().delete(task_id)
    tasks.remove_files(current_app.config["DATA_DIR"], task_id)
    return "", 204


# A media path as the task records write it: <folder>/<task id>/<file name>, nothing else.
_MEDIA_PATH = re.compile(r"(inputs|outputs)/([0-9A-Za-z-]{1,64})/([A-Za-z0-9][A-Za-z0-9_-]{0,99}\.[a-z0-9]{1,5})")


def listed_files(task):
    """Every file a task's record lists, as paths relative to DATA_DIR: inputs, outputs, thumbnails."""
    listed = {entry.get("path") for entry in task.get("inputs") or []}
    for out in task.get("outputs") or []:
        listed.add(out.get("path"))
        for key in ("url", "thumbnail_url"):
            url = out.get(key) or ""
            if url.startswith("/media/"):
                listed.add(url[len("/media/"):])
    listed.discard(None)
    return listed


def open_listed(data_dir, folder, task_id, rel):
    """The listed file opened for reading, or NotFound; never through a symlink or out of the task folder."""
    task_dir = os.path.join(os.path.realpath(data_dir), folder, task_id)
    path = os.path.join(data_dir, rel)
    if os.path.realpath(os.path.dirname(path)) != task_dir:
        raise NotFound(N_("No such file."))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        raise NotFound(N_("No such file.")) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise NotFound(N_("No such file."))
    return os.fdopen(fd, "rb"), info


def download_name(task, subpath, name):
    """The name a saved file gets: `{provider}_{YYYYmmdd_HHMMSS}_{index}_{short id}.{ext}` (the brief's
    scheme), from the task's creation time (UTC), the result's number (1-based; an input's role, a
    thumbnail's number with `-thumb`) and the end of the task id. Stored paths are unchanged."""
    ext = name.rsplit(".", 1)[-1]
    index = next((entry["role"] for entry in task.get("inputs") or [] if entry.get("path") == subpath), None)
    for number, out in enumerate(task.get("outputs") or [], 1):
        if out.get("path") == subpath or out.get("url") == "/media/" + subpath:
            index = str(number)
        elif out.get("thumbnail_url") == "/media/" + subpath:
            index = f"{number}-thumb"
    created = tasks.parse_iso(task["created_at"])
    return f"{task['provider']}_{created:%Y%m%d_%H%M%S}_{index or 1}_{task['id'].rsplit('-', 1)[-1]}.{ext}"


# No slash merging: werkzeug would answer `/media//etc/passwd` with a redirect to a tidied path.
@bp.get("/media/<path:subpath>", merge_slashes=False)
def media_file(subpath):
    """Serve a file the task's own record lists (with HTTP Range for seeking); everything else is a 404.

    The request path is only a key: it must name a listed file exactly, and the file is opened
    from the record's path, so `..`, encoded slashes, symlinks and stray files lead nowhere.
    """
    match = _MEDIA_PATH.fullmatch(subpath)
    if match is None:
        raise NotFound(N_("No such file."))
    folder, task_id, name = match.groups()
    task = _task_or_404(task_id)          # the task's owner (or the admin) only
    if subpath not in listed_files(task):
        raise NotFound(N_("No such file."))
    fh, info = open_listed(media_root(current_app.config["DATA_DIR"]), folder, task_id, subpath)
    try:
        mimetype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        response = send_file(fh, mimetype=mimetype, download_name=download_name(task, subpath, name),
                             conditional=False, etag=False,
                             as_attachment=request.args.get("download") == "1",
                             last_modified=info.st_mtime)
        response.content_length = info.st_size
        response.set_etag(f"{info.st_mtime_ns:x}-{info.st_size:x}-{info.st_ino:x}")
        # Private pictures: a shared cache must neither keep them nor serve one user's copy to another.
        response.cache_control.no_cache = None
        response.cache_control.public = False
        response.cache_control.private = True
        response.cache_control.max_age = 3600
        response.vary.update(("Cookie", "Authorization"))
        return response.make_conditional(request.environ, accept_ranges=True, complete_length=info.st_size)
    except BaseException:
        fh.close()
        raise
