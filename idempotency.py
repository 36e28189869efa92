"""Idempotent creates: the `Idempotency-Key` header on every endpoint that makes a task.

A script whose request timed out can send it again with the same key and get the task the first
try made, never a second one (and a second bill). For 24 hours a (user, key) pair remembers the
hash of the request (method, path and body, the JSON body in canonical form) and the answer sent:

- the same key with the same request: the first answer again, status and body, marked with
  `Idempotent-Replayed: true`;
- the same key with another request: 409 `idempotency_conflict`, nothing is created;
- the same key while the first request is still being served (in any worker): the second one
  waits for the first to finish and then gets its answer. The wait is a blocking file lock, not a
  poll, and it is as long as a create takes (seconds: pictures are decoded and URLs fetched with
  timeouts); a worker that dies releases the lock with its process.

Only a created task (a 2xx answer) is remembered: a refused request leaves nothing behind, so the
corrected request may reuse its key. Records live in `DATA_DIR/idempotency/<shard>/<hash>.json`,
one file per (user, key), written atomically under the shard's lock file (fileio.locked), so every
worker and every restart sees them; expired records are removed when their shard is next written.
A studio on PostgreSQL (DATABASE_URL) keeps them in its `idempotency_keys` table instead
(pg_idempotency.py), where the claim is one INSERT ... ON CONFLICT DO NOTHING shared by every node.
"""

import functools
import hashlib
import json
import re
from datetime import timedelta
from pathlib import Path

from flask import current_app, request

import access
import fileio
import request_body
from errors import N_, Conflict, ValidationError
from tasks import iso, parse_iso, utcnow

HEADER = "Idempotency-Key"
LIFETIME = timedelta(hours=24)
SHARDS = 256                     # lock files; two keys wait for each other only when they share one
_KEY = re.compile(r"[\x21-\x7e]{1,255}")     # printable ASCII, like Stripe's keys (a UUID fits)


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"


def idempotent(view):
    """Make a create view answer the same for the same `Idempotency-Key` (see the module docstring)."""
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        key = request.headers.get(HEADER)
        if key is None:
            return view(*args, **kwargs)
        if not _KEY.fullmatch(key):
            raise ValidationError(N_("%(header)s must be 1 to 255 printable ASCII characters without spaces."),
                                  code="invalid_field", field=HEADER, params={"header": HEADER})
        return _once(access.owner_id(), key, _request_hash(), lambda: view(*args, **kwargs))
    return wrapper


def _request_hash():
    # The same JSON in other spacing or key order is the same request (malformed JSON is a 400 here,
    # as in the view).
    if request.mimetype == "multipart/form-data":       # the form may be read already (CSRF)
        return _digest(request_body.form_digest())
    parsed = request.get_json(silent=True)
    body = (request.get_data(cache=True) if parsed is None
            else json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode())
    return _digest(body)


def _digest(body):
    return hashlib.sha256(request.method.encode() + b" " + request.path.encode() + b"\n" + body).hexdigest()


def _once(user_id, key, request_hash, run):
    """The remembered answer for (user, key), or `run()`'s answer, remembered when it created something."""
    name = hashlib.sha256(f"{user_id}\0{key}".encode()).hexdigest()
    store = current_app.extensions["task_store"]
    if getattr(store, "conninfo", None):        # PostgreSQL: every node shares the records
        import pg_idempotency

        return pg_idempotency.once(store, name, user_id, request_hash, utcnow(), lambda kept: _replay(
            kept, request_hash), lambda: _answer(run, user_id, request_hash), LIFETIME)
    shard = Path(current_app.config["DATA_DIR"]) / "idempotency" / f"{int(name[:8], 16) % SHARDS:02x}"
    shard.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = shard / f"{name}.json"
    # The check, the create and the record happen under one lock: a second request with this key
    # (from any worker) blocks here until the first one has its answer recorded.
    with fileio.locked(shard / ".lock"):
        now = utcnow()
        kept = _read(path, now)
        if kept is not None:
            return _replay(kept, request_hash)
        response, record = _answer(run, user_id, request_hash, now)
        if record is not None:
            fileio.atomic_write(path, json.dumps(record))
            _prune(shard, now)
        return response


def _replay(kept, request_hash):
    """The kept answer again, or IdempotencyConflict when the key came with another request."""
    if kept["request_hash"] != request_hash:
        raise IdempotencyConflict(N_("This %(header)s was already used for a different request in the last "
                                     "24 hours; use a new key for a new request."), field=HEADER,
                                  params={"header": HEADER})
    response = current_app.response_class(json.dumps(kept["body"]), status=kept["status"],
                                          mimetype="application/json")
    response.headers["Idempotent-Replayed"] = "true"
    return response


def _answer(run, user_id, request_hash, now=None):
    """(`run()`'s response, the record to keep when it created something, else None)."""
    response = current_app.make_response(run())
    if 200 <= response.status_code < 300 and response.is_json:
        return response, {"user": user_id, "request_hash": request_hash, "status": response.status_code,
                          "body": response.get_json(), "created_at": iso(now or utcnow())}
    return response, None


def _read(path, now):
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    if parse_iso(record["created_at"]) + LIFETIME <= now:
        return None
    return record


def _prune(shard, now):
    """Remove the shard's expired records (the caller holds the shard's lock)."""
    for path in shard.glob("*.json"):
        try:
            if _read(path, now) is None:
                path.unlink(missing_ok=True)
        except (OSError, ValueError, KeyError):
            continue
