"""Who is asking, and what they may see and spend.

`auth.py` identifies the caller (a session or an API key) and leaves the user in `g.user`; the
feature modules ask here whose tasks a request may touch and whether today's quota allows one
more. Users see only their own tasks and files; the admin sees everything. A task that is not
yours answers 404, exactly like one that does not exist.
"""

from datetime import UTC, datetime, timedelta

from flask import g

import tasks
from errors import NotFound, QuotaExceeded


def current_user():
    return g.get("user")


def is_admin():
    user = current_user()
    return bool(user and user["role"] == "admin")


def owner_id():
    """The id new tasks are recorded under."""
    return current_user()["id"]


def visible_owner():
    """The owner to filter listings by: None (everything) for the admin."""
    return None if is_admin() else owner_id()


def may_access(task):
    return is_admin() or task.get("owner") == owner_id()


def task_or_404(store, task_id):
    task = store.get(task_id)
    if task is None or not may_access(task):
        raise NotFound(f"No task '{task_id}'.")
    return task


def check_quota(store, kind, count, now=None):
    """Refuse a new task when it would pass the user's daily videos/images limit (UTC days)."""
    user = current_user()
    limit = (user.get("quota") or {}).get("videos" if kind == "video" else "images")
    if limit is None:
        return
    now = now or datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    since = tasks.new_task_id(midnight)[:18]
    todays, _ = store.list(owner=user["id"], kind=kind, since=since, limit=10_000)
    # Tasks that never reached a provider cost nothing and do not count.
    spent = [t for t in todays if t.get("provider_task_id") or t["status"] not in ("failed", "cancelled")]
    used = sum(int(t["params"].get("n") or 1) for t in spent) if kind == "image" else len(spent)
    if used + count > limit:
        reset = midnight + timedelta(days=1)
        hours, minutes = divmod(int((reset - now).total_seconds()) // 60, 60)
        what = "videos" if kind == "video" else "images"
        raise QuotaExceeded(f"Your daily limit of {limit} {what} is reached ({used} used today). It resets at "
                            f"00:00 UTC, in {hours} h {minutes} min.")
