"""What a batch looks like now: its items' states, counts, progress, ETA, finish time and cost.

Its own module because all of it is computed from the task records, which are the truth (the
batch record only lists task ids): v1's status words per item (or `refused`), the batch's status
(running, paused, cancelled, completed, completed_with_errors), the percent finished, an ETA from
the durations of finished items, and the providers' charges summed. The finish time and the total
cost are also kept in the batch record once they change.
"""

import math
import statistics

from flask import current_app

import tasks
from api.models import V1_STATUS
from errors import N_, Text, shown_text

ITEM_STATUSES = ("queued", "processing", "completed", "failed", "cancelled", "refused")


def _store():
    return current_app.extensions["batch_store"]


def _tasks():
    return current_app.extensions["task_store"]


def _error(error, translate, field=None):
    """An item's error as the API shows it: `{code, message, field}`, the message in the reader's
    language when it was kept as a template (a record stored as plain English shows as it was)."""
    if not error:
        return None
    return {"code": error["code"], "message": shown_text(error, translate) if translate else error["message"],
            "field": field}


def item_view(entry, task, translate=None):
    """An item as the API shows it: name, task id, status in v1's words (or refused), error, prompt;
    with `translate` (the request's gettext) its error is in the reader's language."""
    if entry["task_id"] is None:
        error = entry["error"]
        return {"name": entry["name"], "task_id": None, "status": "refused", "prompt": None,
                "error": _error(error, translate, error.get("field"))}
    if task is None:
        return {"name": entry["name"], "task_id": entry["task_id"], "status": "failed", "prompt": None,
                "error": _error({"code": "task_deleted", **Text(N_("The item's task was deleted.")).fields()},
                                translate)}
    return {"name": entry["name"], "task_id": task["id"], "status": V1_STATUS[task["status"]],
            "error": _error(task.get("error"), translate),
            "prompt": task["params"].get("prompt"), "progress": task.get("progress"),
            "thumbnail": _thumbnail(task), "outputs": [o.get("url") for o in task.get("outputs") or [] if o.get("url")]}


def _thumbnail(task):
    """The result's thumbnail, else (before there is one) the item's own picture; both served by /media."""
    output = next((o for o in task.get("outputs") or [] if o.get("thumbnail_url")), None)
    if output:
        return output["thumbnail_url"]
    given = next((i for i in task.get("inputs") or [] if i.get("path")), None)
    return "/media/" + given["path"] if given else None


def batch_tasks(record):
    """{task id: task record} of the batch's items (missing ids map to None)."""
    return {e["task_id"]: _tasks().get(e["task_id"]) for e in record["items"] if e.get("task_id")}


def summary(record, with_items=True, translate=None):
    """The batch as the API and the pages show it: counts per state, progress, ETA, cost, items
    (their errors in the reader's language with `translate`, the request's gettext)."""
    found = batch_tasks(record)
    items = [item_view(e, found.get(e["task_id"]), translate) for e in record["items"]]
    counts = dict.fromkeys(ITEM_STATUSES, 0)
    for item in items:
        counts[item["status"]] += 1
    live = [t for t in found.values() if t]
    answer = {"batch_id": record["id"], "name": record["name"], "kind": record["kind"],
              "provider": record["provider"], "model": record["model"], "settings": record["settings"],
              "status": _status(record, counts, len(items)), "counts": counts, "total": len(items),
              "progress": _progress(items, counts), "eta_seconds": _eta(live, counts),
              "created_at": record["created_at"], "finished_at": _finished_at(live, counts), "cost": _cost(live),
              "paused": bool(record.get("paused"))}
    if with_items:
        answer["items"] = items
    _remember_end(record, answer["finished_at"], answer["cost"])
    return answer


def _remember_end(record, finished_at, cost):
    """Keep the finish time and the total cost in the record too, once they change (a retry reopens it)."""
    if (record.get("finished_at"), record.get("cost")) != (finished_at, cost):
        _store().update(record["id"], lambda r: r.update(finished_at=finished_at, cost=cost))


def _status(record, counts, total):
    pending = counts["queued"] + counts["processing"]
    if record.get("cancelled") and not pending:
        return "cancelled"
    if record.get("paused"):
        return "paused"
    if pending:
        return "running"
    return "completed" if counts["completed"] == total else "completed_with_errors"


def _progress(items, counts):
    """Percent of the items finished; items in flight count with their own progress."""
    if not items:
        return 100
    done = sum(counts[s] for s in ("completed", "failed", "cancelled", "refused"))
    partial = sum((i.get("progress") or 0) / 100 for i in items if i["status"] == "processing")
    return min(100, round(100 * (done + partial) / len(items)))


def _eta(live, counts):
    """Seconds until the rest is done: the median time of finished items, times the rounds left at
    the parallelism seen now; None before any item has finished."""
    remaining = counts["queued"] + counts["processing"]
    if not remaining:
        return 0
    took = [(tasks.parse_iso(t["finished_at"]) - tasks.parse_iso(t.get("submitted_at") or t["created_at"]))
            .total_seconds() for t in live if t["status"] == tasks.SUCCEEDED and t.get("finished_at")]
    if not took:
        return None
    parallel = max(1, counts["processing"])
    return max(1, round(statistics.median(took) * remaining / parallel))


def _finished_at(live, counts):
    if counts["queued"] + counts["processing"]:
        return None
    ends = [t["finished_at"] for t in live if t.get("finished_at")]
    return max(ends) if ends else None


def _cost(live):
    """The providers' charges summed per unit ({"units": 12}), None when no provider said."""
    total = {}
    for task in live:
        for unit, value in (task.get("cost") or {}).items():
            number = _number(value)
            if number is not None:
                total[unit] = round(total.get(unit, 0) + number, 6)
    return total or None


def _number(value):
    """A charge as a number: providers send numbers or numeric text (Kling's units are "1")."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    return int(number) if number.is_integer() else number
