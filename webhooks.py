"""Webhooks: telling a receiver, signed, that a task has ended; retried for a day; shown on the task.

Where: the task's `callback_url` (set by the v1 create requests), else the owner's default
`webhook_url` (the account page, `PUT /api/account/webhook`) for tasks that end after it was set.
When: every final state a task reaches (succeeded, failed, cancelled; a late success after a
failure is a second event). What: the v1 task body (`api.v1.v1_task`), POSTed as JSON.

Signature: `X-Studio-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`
with the owner's secret from `POST /api/v1/webhooks/secret` (made or rotated there, shown once).
The secret sits in accounts.json (0600, like the whole DATA_DIR; on PostgreSQL in the user's row)
in the clear: the studio must sign with it, so a hash is no use, and encrypting it with a key
kept in the same DATA_DIR would protect nothing from whoever can read that folder.

Delivery is a pipeline job (`deliver_due`, run by scheduler.py): a 2xx answer ends it; anything else
(no answer, a 5xx, a 4xx, no secret yet) is tried again after 30 s, 2 min, 10 min, 30 min, 1 h,
then every few hours, until a day after the first try. The receiver must be a public address,
checked like picture URLs (safe_fetch's rule; ALLOW_PRIVATE_URLS lets tests reach loopback), and the
connection goes to the address that was checked; a refused address is recorded and not retried.
Each try is recorded on the task's `webhook` field (tasks.TaskWebhook): time, HTTP status, duration,
attempt number and at most 200 characters of the answer, redacted.
"""

import hashlib
import hmac
import http.client
import json
import logging
import re
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import certifi
from flask import Blueprint, current_app, g
from pydantic import BaseModel, Field

import safe_fetch
import tasks
from access import session_only
from accounts import open_accounts
from api.openapi import documented
from api.v1 import v1_task
from errors import ValidationError
from redact import redact_url
from tasks import iso, parse_iso, utcnow
from validation import STRICT, Text, parse_body

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)

SIGNATURE_HEADER = "X-Studio-Signature"
RETRY_DELAYS = (30, 120, 600, 1800, 3600, 3 * 3600, 6 * 3600)     # seconds; the last one repeats
RETRY_WINDOW = timedelta(days=1)
LOOK_BACK = timedelta(days=2)       # tasks created this long ago are still watched for their end
TIMEOUT_SECONDS = 10
ANSWER_CHARS = 200
KEEP_ATTEMPTS = 20
SENDERS = 8
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_private_allowed = {}       # DATA_DIR -> ALLOW_PRIVATE_URLS of the app there (the pipeline has no app context)
_accounts = {}              # DATA_DIR -> Accounts (re-reads accounts.json only when it changed) or PgAccounts


def init_app(app):
    _private_allowed[str(app.config["DATA_DIR"])] = bool(app.config["ALLOW_PRIVATE_URLS"])
    app.register_blueprint(bp)


# ---- the body and its signature ------------------------------------------------------------------

def sign(secret, timestamp, body):
    """The X-Studio-Signature value for a raw body sent at `timestamp` (Unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


# ---- routes --------------------------------------------------------------------------------------

class WebhookRequest(BaseModel):
    model_config = STRICT

    url: Text | None = Field(None, max_length=2000)


def check_url(url, field):
    """A well-formed http(s) URL (its address is checked at each delivery, when it is resolved)."""
    safe_fetch.parse(url, field)
    return url


class WebhookSecret(BaseModel):
    secret: str = Field(description="Signs X-Studio-Signature; shown only in this answer.")


@bp.post("/api/v1/webhooks/secret")
@documented("Make or rotate your webhook signing secret", responses={201: WebhookSecret})
def make_secret():
    """Make or rotate the caller's signing secret: `{"secret"}`, shown this once."""
    return {"secret": current_app.extensions["accounts"].rotate_webhook_secret(g.user["id"])}, 201


@bp.put("/api/account/webhook")
@session_only
def set_default_url():
    """The caller's default webhook URL (`{"url": null}` removes it)."""
    body = parse_body(WebhookRequest)
    url = check_url(body.url.strip(), "url") if body.url and body.url.strip() else None
    user = current_app.extensions["accounts"].set_webhook(g.user["id"], url)
    return {"url": user.get("webhook_url"), "has_secret": bool(g.user.get("webhook_secret"))}


# ---- delivery (a pipeline job) ---------------------------------------------------------------------

class _Refused(Exception):
    """The receiver's address is not one the studio may reach."""


def deliver_due(store, clock=utcnow):
    """Send every webhook that is due: new final states, and retries whose time has come."""
    now = clock()
    if str(store.dir) not in _accounts:
        _accounts[str(store.dir)] = open_accounts(store)
    accounts = _accounts[str(store.dir)]
    allow_private = _private_allowed.get(str(store.dir), False)
    since = tasks.new_task_id(now - LOOK_BACK)[:18]
    due = []
    for task_id in store.ids_with_status(tuple(tasks.TERMINAL), since=since):
        record = store.get(task_id)
        plan = _plan(record, accounts, now) if record else None
        if plan:
            due.append(plan)
    if due:
        with ThreadPoolExecutor(max_workers=min(SENDERS, len(due))) as pool:
            list(pool.map(lambda plan: _deliver(store, plan, allow_private, clock), due))


def _target(record, owner):
    if record.get("callback_url"):
        return record["callback_url"]
    finished = parse_iso(record.get("finished_at"))
    set_at = (owner or {}).get("webhook_url_set_at")
    if owner and owner.get("webhook_url") and finished and set_at and finished.timestamp() >= set_at:
        return owner["webhook_url"]
    return None


def _plan(record, accounts, now):
    """(task id, event, url, owner) when the task's webhook should be tried now, else None."""
    owner = accounts.user(record["owner"]) if record.get("owner") else None
    url = _target(record, owner)
    if not url:
        return None
    event = f"{record['status']}@{record.get('finished_at')}"
    hook = record.get("webhook")
    if hook and hook["event"] == event and (
            hook["state"] != "pending" or (hook.get("next_at") and parse_iso(hook["next_at"]) > now)):
        return None
    return record["id"], event, url, owner


def _deliver(store, plan, allow_private, clock):
    """Try one planned delivery and record the try (and what comes next) on the task."""
    task_id, event, url, owner = plan
    record = store.get(task_id)
    if record is None:
        return
    started = clock()
    attempt, refused = _attempt(record, url, owner, allow_private, started)
    ok = 200 <= (attempt.get("status") or 0) < 300
    store.update(task_id, lambda record: _record_attempt(record, event, url, started, attempt, ok, refused))
    log.info("task %s: webhook %s (%s)", task_id, "delivered" if ok else "not delivered",
             attempt.get("status") or attempt.get("error"))


def _attempt(record, url, owner, allow_private, started):
    """POST the signed task body once; returns (the attempt's record, whether the address was refused)."""
    attempt = {"at": iso(started)}
    secret = (owner or {}).get("webhook_secret")
    if not secret:
        attempt["error"] = "no signing secret yet: make one with POST /api/v1/webhooks/secret"
        return attempt, False
    refused = False
    body = json.dumps(v1_task(record), separators=(",", ":"), ensure_ascii=False).encode()
    timestamp = int(time.time())
    headers = {"Content-Type": "application/json", "User-Agent": "AIAPI-Studio-Webhook",
               SIGNATURE_HEADER: sign(secret, timestamp, body), "X-Studio-Event": f"task.{record['status']}"}
    clock_started = time.monotonic()
    try:
        status, answer = _post(url, body, headers, allow_private)
        attempt.update(status=status, answer=answer)
    except _Refused as exc:
        attempt["error"], refused = str(exc), True
    except ValidationError as exc:
        attempt["error"], refused = exc.message, True
    except (OSError, http.client.HTTPException) as exc:
        attempt["error"] = f"no answer ({type(exc).__name__})"
    attempt["ms"] = round((time.monotonic() - clock_started) * 1000)
    return attempt, refused


def _record_attempt(record, event, url, started, attempt, ok, refused):
    """Add the try to the task's webhook field and set its state (the store's update function)."""
    if f"{record['status']}@{record.get('finished_at')}" != event:
        return              # it moved on meanwhile (a late success): the next pass sends that one
    hook = record.get("webhook")
    same = bool(hook) and hook["event"] == event
    if not same:            # a new final state: a new delivery, the earlier tries kept for the record
        hook = {"url": redact_url(url), "event": event, "state": "pending", "first_at": iso(started),
                "next_at": None, "attempts": (hook or {}).get("attempts", [])}
    tries = hook["attempts"][-1]["attempt"] + 1 if same and hook["attempts"] else 1
    hook["attempts"] = [*hook["attempts"], {**attempt, "attempt": tries}][-KEEP_ATTEMPTS:]
    _set_state(hook, tries, started, ok, refused)
    record["webhook"] = hook


def _set_state(hook, tries, started, ok, refused):
    """Delivered, refused, failed (past the retry window) or pending until the next retry."""
    if ok:
        hook.update(state="delivered", next_at=None)
    elif refused:
        hook.update(state="refused", next_at=None)
    else:
        next_at = started + timedelta(seconds=RETRY_DELAYS[min(tries, len(RETRY_DELAYS)) - 1])
        if next_at > parse_iso(hook["first_at"]) + RETRY_WINDOW:
            hook.update(state="failed", next_at=None)
        else:
            hook.update(state="pending", next_at=iso(next_at))


def _post(url, body, headers, allow_private):
    """(HTTP status, the answer's first characters, redacted) of a POST to the checked address."""
    scheme, host, port, header_host, target = safe_fetch.parse(url, "callback_url")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise _Refused(f"the host {host} could not be found") from None
    addresses = sorted({info[4][0] for info in infos})
    if not addresses or (not allow_private and not all(safe_fetch.is_public(a) for a in addresses)):
        raise _Refused(f"{host} is not a public internet address; webhooks go to public http(s) URLs only")
    connection = (_PinnedTLS if scheme == "https" else _Pinned)(host, port, addresses[0])
    try:
        connection.request("POST", target, body=body, headers={**headers, "Host": header_host})
        response = connection.getresponse()
        text = response.read(ANSWER_CHARS * 4).decode("utf-8", "replace")[:ANSWER_CHARS]
        return response.status, redact_url(_CONTROL.sub(" ", text)).strip() or None
    finally:
        connection.close()


class _Pinned(http.client.HTTPConnection):
    """A connection to the address that was checked, whatever the name resolves to by then."""

    def __init__(self, host, port, address):
        super().__init__(host, port, timeout=TIMEOUT_SECONDS)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedTLS(http.client.HTTPSConnection):
    def __init__(self, host, port, address):
        super().__init__(host, port, timeout=TIMEOUT_SECONDS,
                         context=ssl.create_default_context(cafile=certifi.where()))
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
