"""The task: its record, its statuses and the moves between them, ids, and its files.

A task is one JSON object in the task store (DESIGN.md "The task"). This module is the one place
that knows its fields (`Task`, which documents every field, the pipeline's bookkeeping included)
and its state machine (`TaskStatus`, `MOVES`):

    queued -> submitted -> running -> downloading -> succeeded
    any non-terminal state -> failed | cancelled
    failed -> downloading   (a late success, after a timeout or an unanswered submit)

The pipeline and the routes change a task's status only through the move functions below
(`submitted`, `running`, `downloading`, `succeeded`, `fail`, `cancel`), which refuse an illegal
move. The provider's own report states are a different thing (providers.base).

Input pictures are files under `MEDIA_DIR/inputs/<task id>/`; outputs under
`MEDIA_DIR/outputs/<task id>/` (MEDIA_DIR is DATA_DIR unless set: fileio.media_root). Paths in
the record are relative to it.
"""

import secrets
import shutil
import threading
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict

import fileio
import media
from clock import iso, parse_iso, utcnow  # noqa: F401 - parse_iso is read from here too
from errors import N_, Conflict, InsufficientStorage, Text, shown_text
from redact import redact_url


class TaskStatus(StrEnum):
    QUEUED = "queued"
    SUBMITTED = "submitted"
    RUNNING = "running"
    DOWNLOADING = "downloading"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


QUEUED, SUBMITTED, RUNNING, DOWNLOADING, SUCCEEDED, FAILED, CANCELLED = TaskStatus
STATUSES = tuple(TaskStatus)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE = (QUEUED, SUBMITTED, RUNNING, DOWNLOADING)
MOVES = {
    QUEUED: {SUBMITTED, FAILED, CANCELLED},
    SUBMITTED: {RUNNING, DOWNLOADING, FAILED, CANCELLED},
    RUNNING: {DOWNLOADING, FAILED, CANCELLED},
    DOWNLOADING: {SUCCEEDED, FAILED},
    FAILED: {DOWNLOADING},
    SUCCEEDED: set(),
    CANCELLED: set(),
}
LATE_CHECK_WINDOW = timedelta(hours=24)     # how long a task failed for want of an answer is still looked at
LATE_CHECK_INTERVAL = timedelta(minutes=5)


class TaskError(BaseModel):
    code: str
    message: str                        # in English; the reader's language is made from template/params
    retryable: bool = False
    template: str | None = None         # the English template of `message` (errors.Text); absent in old records
    params: dict | None = None          # what the template is filled with
    provider_message: str | None = None     # the provider's own words (redacted), beside a translated summary


class TaskProblem(BaseModel):
    """The latest trouble of a task still in progress, in the studio's words."""

    code: str
    message: str
    since: str
    template: str | None = None         # as in TaskError
    params: dict | None = None


class WebhookAttempt(BaseModel):
    """One POST of a task's webhook and what the receiver answered (never more than 200 characters)."""

    attempt: int
    at: str
    status: int | None = None           # the receiver's HTTP status; None when no answer came
    ms: int | None = None               # how long the answer took
    error: str | None = None            # why there was no usable answer (refused, unreachable, ...)
    answer: str | None = None           # the start of the receiver's body, redacted


class TaskWebhook(BaseModel):
    """The delivery of a task's end to its webhook (webhooks.py): one event per final state reached."""

    url: str                            # where it goes, without its query string
    event: str                          # "<status>@<finished_at>": a late success is a new event
    state: Literal["pending", "delivered", "failed", "refused"]
    first_at: str
    next_at: str | None = None          # the next try, while pending
    attempts: list[WebhookAttempt] = []     # the latest few, across events


class Task(BaseModel):
    """Every field a task record may carry. The first group is DESIGN.md's; the rest is the
    pipeline's bookkeeping, which clients may read but should not rely on."""

    model_config = ConfigDict(extra="forbid")

    id: str
    kind: Literal["video", "image"]
    provider: str
    model: str
    params: dict
    # [{role, path, width, height, sha256, converted?, reencoded?, rotated?}]: `converted` says an upload
    # was turned into what providers take ("webp->jpeg", "bmp->png", "heic->jpeg"); `reencoded` says it
    # was made smaller to fit the provider's byte limit: {"quality", "scale", "bytes_before"};
    # `rotated` is the EXIF orientation (2-8) applied by re-encoding it upright (else it is as sent).
    inputs: list[dict]
    status: TaskStatus
    provider_task_id: str | None = None
    provider_status: str | None = None  # the provider's own word for it
    progress: int | None = 0
    outputs: list[dict] = []            # [{kind, url, path, thumbnail_url, remote_url, remote_expires_at, ...}]
    error: TaskError | None = None
    cost: dict | None = None            # what the provider says it charged
    attempts: int = 0                   # submits sent
    created_at: str
    updated_at: str
    submitted_at: str | None = None
    finished_at: str | None = None
    owner: str | None = None            # the user's immutable id
    retry_of: str | None = None         # the task this one retries
    callback_url: str | None = None     # where the studio POSTs the v1 task body when it ends (webhooks)
    batch_id: str | None = None      # the batch this task belongs to (batches.py)
    # Storyboards (storyboards.py): a scene task names its storyboard and its place in it; the
    # storyboard's own task lists the task of each scene (None until a chained scene is created).
    storyboard_id: str | None = None
    scene_index: int | None = None
    scene_task_ids: list[str | None] | None = None
    favourite: bool = False             # starred by its owner in the gallery (a listing filter, favourite=1)

    problem: TaskProblem | None = None  # shown while the task waits on trouble
    problems: int = 0                   # consecutive failed calls, for the backoff and the retry cap
    next_check_at: str | None = None    # not looked at again before this
    submit_started_at: str | None = None    # a submit may be on its way: reconcile, never re-send
    last_error: str | None = None       # the provider module's message of the last failed submit
    late_check_until: str | None = None     # a failed task still looked at until then, for a late success
    recovered_late: bool | None = None  # succeeded after all, after a timeout
    cancel_requested: bool | None = None    # cancelled here; the provider still to be told
    cancel_note: str | None = None      # why stopping it at the provider did not work (English)
    cancel_note_template: str | None = None     # its template and params, for the reader's language
    cancel_note_params: dict | None = None
    download_error: str | None = None   # the latest problem saving the results (English)
    download_error_template: str | None = None  # its template and params, for the reader's language
    download_error_params: dict | None = None
    webhook: TaskWebhook | None = None  # the delivery of its end to callback_url or the owner's webhook
    batch_id: str | None = None      # the batch this task belongs to (batches.py)
    batch_item: str | None = None    # the item's name in its batch, e.g. "Episode-01/Shot-003"
    paused: bool | None = None       # held queued by its paused batch: dispatch leaves it alone (batches.py)


class IllegalMove(Conflict):
    """A status change the state machine does not allow (e.g. cancelling a finished task)."""


def move(record, status, now, **fields):
    """Change a record's status (and other fields) if the state machine allows it."""
    current = record["status"]
    if status != current and status not in MOVES[current]:
        raise IllegalMove(N_("A %(current)s task cannot become %(status)s."),
                          params={"current": str(current), "status": str(status)})
    record.update(fields, status=status)
    record["finished_at"] = (record.get("finished_at") or iso(now)) if status in TERMINAL else None
    return record


def submitted(record, provider_task_id, now):
    """The provider took the task. A task cancelled while it was being sent stays cancelled and is
    marked for stopping at the provider."""
    record.update(provider_task_id=provider_task_id, submitted_at=record.get("submitted_at") or iso(now),
                  problems=0, next_check_at=None, last_error=None, problem=None)
    if record["status"] == CANCELLED:
        record["cancel_requested"] = True
    elif record["status"] == QUEUED:
        move(record, SUBMITTED, now)


def running(record, now):
    if record["status"] == SUBMITTED:
        move(record, RUNNING, now)


def downloading(record, outputs, now):
    """The provider has results: save them. From `failed`, a late success."""
    late = record["status"] == FAILED
    move(record, DOWNLOADING, now, progress=100, next_check_at=None, late_check_until=None, outputs=outputs,
         error=None, problem=None)
    if late:
        record["recovered_late"] = True


def succeeded(record, outputs, now):
    move(record, SUCCEEDED, now, outputs=outputs, **download_error(None), problems=0, next_check_at=None, error=None)


def fail(record, code, message, now, *, late_check=False, keep_finished=False, provider_message=None):
    """End a task with an error. With `late_check` the provider may still have the work, and the
    poller keeps looking for a day. `keep_finished` keeps an earlier finish time (a late report).
    `message` is an errors.Text (shown in the reader's language) or plain text kept as it is;
    `provider_message` is the provider's own words, kept beside it."""
    if not keep_finished:
        record["finished_at"] = None
    error = {"code": code, "retryable": False,
             **(message.fields() if isinstance(message, Text) else {"message": message})}
    if provider_message:
        error["provider_message"] = provider_message
    move(record, FAILED, now, problem=None, error=error,
         late_check_until=iso(now + LATE_CHECK_WINDOW) if late_check else None,
         next_check_at=iso(now + LATE_CHECK_INTERVAL) if late_check else record.get("next_check_at"))


def cancel(record, now, note=None):
    """Cancel a task that has not finished; with a provider id, the poller still stops it there."""
    if record["status"] == DOWNLOADING:
        raise IllegalMove(N_("The result is ready and being saved; it can no longer be cancelled."))
    if record["status"] in TERMINAL:
        raise IllegalMove(N_("The task is already %(status)s."), params={"status": str(record["status"])})
    if record.get("provider_task_id"):
        record["cancel_requested"] = True
    move(record, CANCELLED, now, **cancel_note(note))


_SUFFIX_SPACE = 16 ** 6
_SUFFIX_STEP = 4096         # the most a suffix grows within one millisecond
_id_lock = threading.Lock()
_last_id = (datetime.min.replace(tzinfo=UTC), 0)    # (millisecond, suffix) of the last id made here


def new_task_id(moment=None):
    """Time-sortable id, e.g. 20261122T101500123Z-3f9c2a; ids made now strictly increase.

    The random suffix keeps ids from different processes apart. Without `moment` (a new task),
    an id made in the same millisecond as the last one here (or after the clock stepped back)
    keeps that millisecond and adds a random step to its suffix, so ids sort in creation order;
    should the suffix run out, the millisecond moves on by one. With `moment` the id is simply
    that moment's (callers use its prefix as a "created since" bound, or build test data).
    """
    if moment is not None:
        moment = moment.astimezone(UTC)
        return moment.strftime("%Y%m%dT%H%M%S") + f"{moment.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"
    moment = utcnow()
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    global _last_id
    with _id_lock:
        last_moment, last_suffix = _last_id
        suffix = secrets.randbelow(_SUFFIX_SPACE)
        if moment <= last_moment:
            moment, suffix = last_moment, last_suffix + 1 + secrets.randbelow(_SUFFIX_STEP)
            if suffix >= _SUFFIX_SPACE:
                moment, suffix = last_moment + timedelta(milliseconds=1), secrets.randbelow(_SUFFIX_SPACE)
        _last_id = (moment, suffix)
    return moment.strftime("%Y%m%dT%H%M%S") + f"{moment.microsecond // 1000:03d}Z-{suffix:06x}"


def create_task(store, data_dir, *, kind, provider, model, params, images, owner=None, retry_of=None,
                task_id=None, callback_url=None, batch_id=None, batch_item=None, storyboard_id=None,
                scene_index=None, scene_task_ids=None):
    """Store the input pictures as files and the task record; returns the record.

    `images` maps a role ("first", "tail", "reference") to a `media.DecodedImage` or to an
    existing input entry (for retries, whose files are copied). If anything fails, no file
    and no record is left behind; a full disk raises InsufficientStorage (507). The record is
    on disk (fsync'd) when this returns, so answering the request 202 cannot lose it.
    """
    now = utcnow()
    task_id = task_id or new_task_id()
    data_dir = fileio.media_root(data_dir)      # the record's paths are relative to it
    input_dir = data_dir / "inputs" / task_id
    try:
        inputs = [_store_input(data_dir, input_dir, role, image) for role, image in images.items()]
        record = {
            "id": task_id, "kind": kind, "provider": provider, "model": model, "params": params,
            "inputs": inputs, "status": QUEUED, "provider_task_id": None, "provider_status": None,
            "progress": 0, "outputs": [], "error": None, "cost": None, "attempts": 0,
            "created_at": iso(now), "updated_at": iso(now), "submitted_at": None,
            "finished_at": None, "owner": owner, "retry_of": retry_of, "callback_url": callback_url,
        }
        extra = {"batch_id": batch_id, "batch_item": batch_item, "storyboard_id": storyboard_id,
                 "scene_index": scene_index, "scene_task_ids": scene_task_ids}
        record.update({name: value for name, value in extra.items() if value is not None})
        store.create(record)
    except BaseException as exc:
        shutil.rmtree(input_dir, ignore_errors=True)
        full = InsufficientStorage.from_os_error(exc)   # the pictures' writes fill a disk first
        if full is not None and full is not exc:
            raise full from exc
        raise
    return record


def _store_input(data_dir, input_dir, role, image):
    if isinstance(image, dict):     # an existing task's input, copied for a retry
        source = data_dir / image["path"]
        dest = input_dir / (role + source.suffix)
        media.save_bytes_atomic(source.read_bytes(), dest)
        entry = dict(image)
    else:
        dest = input_dir / (role + image.ext)
        media.save_bytes_atomic(image.data, dest)
        entry = image.record()
    entry.update(role=role, path=dest.relative_to(data_dir).as_posix())
    return entry


def remove_files(data_dir, task_id):
    """Delete a task's input and output folders."""
    for folder in ("inputs", "outputs"):
        shutil.rmtree(fileio.media_root(data_dir) / folder / task_id, ignore_errors=True)


def _text_fields(name, text):
    """A message the record keeps as `name` (English), `name_template` and `name_params`."""
    if text is None:
        return {name: None, f"{name}_template": None, f"{name}_params": None}
    return {name: str(text), f"{name}_template": text.template, f"{name}_params": text.params}


def cancel_note(text):
    """The record fields of a cancel note (an errors.Text), or of none."""
    return _text_fields("cancel_note", text)


def download_error(text):
    """The record fields of the latest problem saving the results (an errors.Text), or of none."""
    return _text_fields("download_error", text)


def for_client(record, disk_full=False, queue=None, translate=None):
    """The record as API clients see it: result links without their signatures (the studio
    serves its own copy; a signed link would hand out the file to whoever reads the JSON). With
    `disk_full`, a task still in progress says so: the pipeline cannot even record it then.
    `queue` (queue_info.for_request: anything with `fields(record, now)`) adds `queue_position` and
    `eta_seconds`, computed, not stored.
    With `translate` (the request's gettext) its messages are in the reader's language."""
    outputs = [{**o, "remote_url": redact_url(o["remote_url"])} if o.get("remote_url") else o
               for o in record.get("outputs") or []]
    seen = {**record, "outputs": outputs}
    if queue is not None:
        seen.update(queue.fields(record, utcnow()))
    if disk_full and record["status"] in ACTIVE:
        seen["problem"] = {"code": "disk_full", "since": iso(utcnow()), **Text(
            N_("The studio's disk is full: this task goes on when there is room again.")).fields()}
    return _translated(seen, translate) if translate else seen


def _translated(seen, translate):
    """The record's stored messages in the reader's language (old plain-text ones as they are)."""
    for name in ("error", "problem"):
        if seen.get(name):
            seen[name] = {**seen[name], "message": shown_text(seen[name], translate)}
    for name in ("cancel_note", "download_error"):
        if seen.get(f"{name}_template"):
            seen[name] = shown_text({"template": seen[f"{name}_template"], "params": seen.get(f"{name}_params")},
                                    translate)
    return seen
