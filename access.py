"""Who is asking, and what they may see and spend.

Views say what they need with the decorators here (`public`, `session_only`, `admin_only`,
`limited`); `auth.py` identifies the caller (a session or an API key), enforces those rules and
leaves the user in `g.user`. The feature modules ask here whose tasks a request may touch, and
create tasks through
`create_within_limits`, which holds the user's limits (set by the admin, None = no limit):

- `images_per_day`, `videos_per_day`: counted in the spending ledger (ledger.py), UTC days;
- `max_duration`: the longest video in seconds; `max_resolution`: the largest output side in
  pixels, where the model states its output size (`output_side`);
- `max_in_flight`: tasks not yet finished at once.

Users see only their own tasks and files; the admin sees everything. A task that is not yours
answers 404, exactly like one that does not exist.
"""

import re
from datetime import timedelta

from flask import current_app, g

import metrics
import tasks
from clock import utcnow
from errors import N_, NotFound, QuotaExceeded, ValidationError

# Output sizes that the model tables state only in words: a Wan resolution tier ("720P"), a
# Kling label ("std 720p / pro 1080p", or "(720p)"). Heights, turned into the long side of 16:9.
_TIER = re.compile(r"(\d{3,4})P$")
_LABEL_TIERS = re.compile(r"(std|pro)\s+(\d{3,4})p")
_LABEL_TIER = re.compile(r"\((\d{3,4})p\)")


# ---- what a view needs, said where the view is defined (auth.py enforces it)

def public(view):
    """Anyone may call this view; credentials sent to it are ignored."""
    view.access = "public"
    return view


def session_only(view):
    """Only a signed-in browser, never an API key."""
    view.access = "session"
    return view


def admin_only(view):
    """Only the admin (and, through a key, one with the `admin` scope)."""
    view.access = "admin"
    return view


def limited(name):
    """Count each call against the caller's rate limit `name` (auth.RATE_LIMITS)."""
    def mark(view):
        view.rate_limit = name
        return view
    return mark


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
        raise NotFound(N_("No task '%(id)s'."), params={"id": task_id})
    return task


def units(kind, params):
    """What a task spends of the daily limit: one video, or n images. A storyboard reserves one video
    per scene it makes later itself (those starting from the previous scene's last frame); the
    scenes queued with it spend their own (storyboards.py moves a reserved unit to each later scene)."""
    if params.get("scenes"):
        return sum(1 for scene in params["scenes"] if scene.get("first_frame") == "previous_last")
    return int(params.get("n") or 1) if kind == "image" else 1


def output_side(model, params):
    """The long side in pixels of what a model makes with these settings, when it says so."""
    mode = str(params.get("mode") or "")
    tier = _TIER.search(mode.upper())
    if tier is None:
        tiers = dict(_LABEL_TIERS.findall(model.get("label", "")))
        height = tiers.get(mode) or next(iter(_LABEL_TIER.findall(model.get("label", ""))), None)
    else:
        height = tier.group(1)
    return round(int(height) * 16 / 9) if height else None


def check_request_limits(kind, model, params, user=None):
    """Refuse, with a 403 naming the field, a video longer or an output larger than the user's limits."""
    limits = (user or current_user()).get("limits") or {}
    duration = params.get("duration")
    too_long = kind == "video" and limits.get("max_duration") is not None and duration \
        and int(float(duration)) > limits["max_duration"]
    if too_long:
        raise ValidationError(N_("Your account allows videos of at most %(max)s s."), code="limit_exceeded",
                              field="duration", status=403, params={"max": limits["max_duration"]})
    side = output_side(model, params)
    if limits.get("max_resolution") is not None and side and side > limits["max_resolution"]:
        raise ValidationError(N_("Your account allows results of at most %(max)s px on the long side; this "
                                 "setting makes %(side)s px."), code="limit_exceeded",
                              field="mode" if params.get("mode") else "size", status=403,
                              params={"max": limits["max_resolution"], "side": side})


def usage(user, now=None):
    """Today's spending against the daily limits, for the account page and /api/me."""
    ledger = current_app.extensions["ledger"]
    limits = user.get("limits") or {}
    result = {}
    for kind, name in (("image", "images_per_day"), ("video", "videos_per_day")):
        used = ledger.spent_today(user["id"], kind, now)
        limit = limits.get(name)
        result[f"{kind}s"] = {"used": used, "limit": limit, "left": None if limit is None else max(0, limit - used)}
    return result


def create_within_limits(store, kind, params, create, now=None):
    """Check the caller's daily quota and tasks in flight, record the spend and create the task,
    all in one step under the ledger lock; returns what `create(task_id)` made."""
    user = current_user()
    ledger = current_app.extensions["ledger"]
    limits = user.get("limits") or {}
    count = units(kind, params)
    with ledger.locked():
        now = now or utcnow()
        limit = limits.get(f"{kind}s_per_day")
        if limit is not None:
            used = ledger.spent_today(user["id"], kind, now)
            if used + count > limit:
                raise _quota_exceeded(kind, limit, used, now)
        if limits.get("max_in_flight") is not None:
            _, in_flight = store.list(owner=user["id"], status=list(tasks.ACTIVE), limit=1)
            if in_flight >= limits["max_in_flight"]:
                raise QuotaExceeded(N_("You have %(count)d tasks in progress, the most your account allows at "
                                       "once; wait for one to finish."), code="too_many_in_flight",
                                    params={"count": in_flight})
        # Spend first, under the id the task will have: if the disk is full nothing is created,
        # and if the create fails the spend is given back.
        task_id = tasks.new_task_id()
        ledger.record(user["id"], kind, count, task_id, now)
        try:
            return metrics.task_created(create(task_id))
        except BaseException:
            ledger.record(user["id"], kind, -count, task_id, now)
            raise


def _quota_exceeded(kind, limit, used, now):
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    hours, minutes = divmod(int((midnight + timedelta(days=1) - now).total_seconds()) // 60, 60)
    template = (N_("Your daily limit of %(limit)d videos is reached (%(used)d used today). It resets at 00:00 "
                   "UTC, in %(hours)d h %(minutes)d min.") if kind == "video" else
                N_("Your daily limit of %(limit)d images is reached (%(used)d used today). It resets at 00:00 "
                   "UTC, in %(hours)d h %(minutes)d min."))
    return QuotaExceeded(template, params={"limit": limit, "used": used, "hours": hours, "minutes": minutes})
