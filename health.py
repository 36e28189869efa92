"""Health endpoints for load balancers and orchestrators: no auth, no provider calls.

`GET /healthz` says the process answers. `GET /readyz` says it can do its job: the task store
reads, DATA_DIR is writable, the disk has room, and the pipeline's leader has written its
heartbeat recently (whichever process leads; see scheduler.py) — and not from the future.
"""

import os
import shutil
import tempfile
import time

from flask import Blueprint, current_app

from access import public

bp = Blueprint("health", __name__)

HEARTBEAT_FILE = "scheduler.heartbeat"
HEARTBEAT_MAX_AGE = 30          # seconds; the leader beats every few seconds
HEARTBEAT_MAX_AHEAD = 5         # seconds a heartbeat may seem to come from the future (clock jitter)


def beat(data_dir):
    """Record that the pipeline leader is alive (called by the leader's scheduler)."""
    path = os.path.join(data_dir, HEARTBEAT_FILE)
    with open(path, "w") as f:
        f.write(str(time.time()))


def heartbeat_check(data_dir, now):
    """"ok" when the leader beat within HEARTBEAT_MAX_AGE of `now` (a Unix time), else why not.

    A heartbeat from the future is stale too: after the wall clock is stepped back, it proves
    nothing about the leader being alive now.
    """
    try:
        age = now - os.path.getmtime(os.path.join(data_dir, HEARTBEAT_FILE))
    except OSError:
        return "no heartbeat yet"
    if age < -HEARTBEAT_MAX_AHEAD:
        return f"last heartbeat is {-age:.0f} s in the future (was the clock set back?)"
    return "ok" if age <= HEARTBEAT_MAX_AGE else f"last heartbeat {age:.0f} s ago"


@bp.get("/healthz")
@public
def healthz():
    return {"status": "ok"}


@bp.get("/readyz")
@public
def readyz():
    data_dir = current_app.config["DATA_DIR"]
    checks = {}
    try:
        current_app.extensions["task_store"].ping()
        checks["store"] = "ok"
    except OSError as exc:
        checks["store"] = f"unreadable: {exc.strerror}"
    try:
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".ready-"):
            pass
        checks["data_dir"] = "ok"
    except OSError as exc:
        checks["data_dir"] = f"not writable: {exc.strerror}"
    free_mb = shutil.disk_usage(data_dir).free // (1024 * 1024)
    minimum = int(current_app.config["READY_MIN_FREE_MB"])
    checks["disk"] = "ok" if free_mb >= minimum else f"only {free_mb} MB free (need {minimum})"
    checks["scheduler"] = heartbeat_check(data_dir, time.time())
    ready = all(value == "ok" for value in checks.values())
    return {"ready": ready, "checks": checks}, 200 if ready else 503
