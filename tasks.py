"""The task record: ids, states, creating a task with its input files, and removing its files.

A task is one JSON object in the task store (DESIGN.md "The task"). This module is the one place
that knows its fields and its state machine:

    queued -> submitted -> running -> downloading -> succeeded
    any non-terminal state -> failed | cancelled

Input pictures are files under `DATA_DIR/inputs/<task id>/`; outputs under
`DATA_DIR/outputs/<task id>/`. Paths in the record are relative to DATA_DIR.
"""

import secrets
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import media
from errors import InsufficientStorage
from redact import redact_url

QUEUED, SUBMITTED, RUNNING, DOWNLOADING = "queued", "submitted", "running", "downloading"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, SUBMITTED, RUNNING, DOWNLOADING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE = (QUEUED, SUBMITTED, RUNNING, DOWNLOADING)


def utcnow():
    return datetime.now(UTC)


def iso(moment):
    """ISO 8601 UTC with a Z, e.g. 2026-11-22T10:15:00.123Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


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
                task_id=None):
    """Store the input pictures as files and the task record; returns the record.

    `images` maps a role ("first", "tail", "reference") to a `media.DecodedImage` or to an
    existing input entry (for retries, whose files are copied). If anything fails, no file
    and no record is left behind; a full disk raises InsufficientStorage (507). The record is
    on disk (fsync'd) when this returns, so answering the request 202 cannot lose it.
    """
    now = utcnow()
    task_id = task_id or new_task_id()
    data_dir = Path(data_dir)
    input_dir = data_dir / "inputs" / task_id
    try:
        inputs = [_store_input(data_dir, input_dir, role, image) for role, image in images.items()]
        record = {
            "id": task_id, "kind": kind, "provider": provider, "model": model, "params": params,
            "inputs": inputs, "status": QUEUED, "provider_task_id": None, "provider_status": None,
            "progress": 0, "outputs": [], "error": None, "cost": None, "attempts": 0,
            "created_at": iso(now), "updated_at": iso(now), "submitted_at": None,
            "finished_at": None, "owner": owner, "retry_of": retry_of,
        }
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
        entry = {"width": image.width, "height": image.height, "sha256": image.sha256}
    entry.update(role=role, path=dest.relative_to(data_dir).as_posix())
    return entry


def remove_files(data_dir, task_id):
    """Delete a task's input and output folders."""
    for folder in ("inputs", "outputs"):
        shutil.rmtree(Path(data_dir) / folder / task_id, ignore_errors=True)


def for_client(record):
    """The record as API clients see it: result links without their signatures (the studio
    serves its own copy; a signed link would hand out the file to whoever reads the JSON)."""
    outputs = [{**o, "remote_url": redact_url(o["remote_url"])} if o.get("remote_url") else o
               for o in record.get("outputs") or []]
    return {**record, "outputs": outputs}
