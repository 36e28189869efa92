"""Batches: a named set of tasks made together, resumed without repeats, watched, paused, retried.

A batch record (batch_store.py) keeps the owner, the name, the kind, provider, model and shared
settings, and per item its name, its key and its task id, or why it was refused. Every item
becomes a task through validation.queue_task (quota, ledger, in-flight limits and picture fitting
apply to each), carrying `batch_id` and `batch_item`; an item that is refused (bad picture,
prompt too long, quota) is listed with the reason while the others run. Counts, progress, ETA and
cost are computed from the task records, which are the truth.

Resume, not repeat: an item's key is the sha256 of its picture bytes, its prompts and the shared
settings. Submitting again under the same batch name (same owner) adds to that batch and makes
tasks only for keys that have no task succeeded or in flight. Pause marks the batch's queued tasks
`paused` (the dispatcher leaves them queued); resume clears it; cancel cancels what has not finished;
retry-failed re-runs failed and cancelled items through the task retry path.

The pages `/batches`, `/batches/new` and `/batches/<id>` are here; the API is api/batches.py,
the uploads' reading batch_intake.py, the counts, progress and ETA batch_progress.py, the results
zip and reports batch_report.py, the command `flask batch run` batch_cli.py, the records batch_store.py.
"""

import base64
import hashlib
import json

import pydantic
from flask import Blueprint, current_app, render_template, request

import access
import task_query
import tasks
from batch_intake import MAX_MEMBERS
from batch_progress import batch_tasks
from batch_store import open_batches
from errors import N_, AppError, Conflict, NotFound, Text, ValidationError, field_problem
from image_generate import ImageRequest, check_image_request, prepare_images
from validation import provider_and_model, queue_task
from video_extend import VideoRequest, check_video_request

bp = Blueprint("batches", __name__)

RETRYABLE = (tasks.FAILED, tasks.CANCELLED)
CHECKPOINT_EVERY = 50           # items between saves of a long submit, so a crash loses little
_SCHEMAS = {"video": VideoRequest, "image": ImageRequest}
UPLOAD_ENDPOINTS = {"api_batches.create_batch"}


def _store():
    return current_app.extensions["batch_store"]


def _tasks():
    return current_app.extensions["task_store"]


def batch_or_404(batch_id):
    """The batch if the caller may see it (its owner, or the admin); else 404, as for a missing one."""
    record = _store().get(batch_id)
    if record is None or not (access.is_admin() or record.get("owner") == access.owner_id()):
        raise NotFound(N_("No batch '%(id)s'."), params={"id": str(batch_id)[:64]})
    return record


# ---- submitting -----------------------------------------------------------------------------

def item_key(picture, prompt, negative_prompt, settings):
    """The item's identity: its picture's content hash, its prompts and the batch's settings."""
    blob = json.dumps({"picture": hashlib.sha256(picture).hexdigest(), "prompt": prompt or "",
                       "negative_prompt": negative_prompt or "", "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def submit(settings, items):
    """Create the batch (or add to the owner's batch of that name) and queue its new items.

    Returns (record, tasks created). Settings the whole batch cannot use are a 4xx before anything
    is made; an item's own problem only refuses that item.
    """
    shared = settings.model_dump(exclude={"name", "items", "kind"}, exclude_none=True)
    for field in shared:
        if field not in _SCHEMAS[settings.kind].model_fields:
            raise ValidationError(N_("A video batch takes no '%(field)s'.") if settings.kind == "video" else
                                  N_("An image batch takes no '%(field)s'."), code="unsupported_value",
                                  field=field, status=422, params={"field": field})
    _, model = provider_and_model(settings.provider, settings.model_name, settings.kind)
    _unique_names(items)
    with _store().adding(access.owner_id(), settings.name):     # what is live is decided and acted on in one turn
        record = _batch_for(settings, model["id"], shared)
        live = {e["key"] for e in record["items"] if e.get("key") and _live(e.get("task_id"))}
        entries, created = [], 0
        for number, item in enumerate(items, 1):
            entry = _submit_item(record, item, live)
            if entry is not None:
                entries.append(entry)
                created += bool(entry["task_id"])
            if number % CHECKPOINT_EVERY == 0:
                record, entries = _merge(record["id"], entries), []
        return _merge(record["id"], entries), created


def _unique_names(items):
    """Two items of one upload never share a name (it is how an entry is replaced): `a`, `a (2)` ..."""
    seen = {}
    for item in items:
        count = seen[item.name] = seen.get(item.name, 0) + 1
        if count > 1:
            item.name = f"{item.name} ({count})"


def _live(task_id):
    task = _tasks().get(task_id) if task_id else None
    return bool(task) and task["status"] in (*tasks.ACTIVE, tasks.SUCCEEDED)


def _batch_for(settings, model_id, shared):
    owner = access.owner_id()
    existing = _store().find(owner, settings.name) if settings.name else None
    if existing is None:
        now = tasks.iso(tasks.utcnow())
        return _store().create({
            "id": "b" + tasks.new_task_id(), "owner": owner, "name": settings.name or f"Batch {now[:16]}",
            "kind": settings.kind, "provider": settings.provider, "model": model_id, "settings": shared,
            "items": [], "created_at": now, "paused": False, "cancelled": False})
    for field, value in (("kind", settings.kind), ("provider", settings.provider), ("model_name", model_id)):
        if existing[field if field != "model_name" else "model"] != value:
            raise Conflict(N_("Batch '%(name)s' uses another %(field)s; choose another name for a new batch."),
                           field=field, params={"name": existing["name"], "field": field})
    if existing.get("paused"):
        raise Conflict(N_("Batch '%(name)s' is paused; resume it before adding to it."), field="name",
                       params={"name": existing["name"]})

    def adopt(record):
        record.update(settings=shared, cancelled=False)
    return _store().update(existing["id"], adopt)


def _refused(name, exc):
    return {"name": name, "key": None, "task_id": None, "status": "refused",
            "error": {"code": exc.code, **Text(exc.template, **exc.params).fields(), "field": exc.field}}


def _submit_item(record, item, live):
    """The item's new entry, or None when a task for its key is already done or in flight."""
    if item.error:
        return {"name": item.name, "key": None, "task_id": None, "status": "refused", "error": item.error}
    try:
        picture = item.load()
        key = item_key(picture, item.prompt, item.negative_prompt,
                       {**record["settings"], "kind": record["kind"], "model": record["model"]})
        if key in live:
            return None
        task = _queue(record, item, picture)
    except AppError as exc:
        return _refused(item.name, exc)
    live.add(key)
    return {"name": item.name, "key": key, "task_id": task["id"], "status": "created", "error": None}


def _queue(record, item, picture):
    """One item as a task, checked as /generate or /generate_image checks a request."""
    fields = {**record["settings"], "prompt": item.prompt, "image": base64.b64encode(picture).decode()}
    if item.negative_prompt:
        fields["negative_prompt"] = item.negative_prompt
    try:
        req = _SCHEMAS[record["kind"]].model_validate(fields)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        too_long = first["type"] in ("too_long", "string_too_long") and "prompt" in (field or "")
        code = "prompt_too_long" if too_long else "invalid_field"
        template, params = field_problem(first, field)
        raise ValidationError(template, code=code, field=field, status=422, params=params) from None
    if record["kind"] == "video":
        provider, model, params = check_video_request(req)
        return queue_task("video", provider, model, params, {"first": ("image", req.image)},
                          fields=_item_fields(record, item))
    provider, model, params = check_image_request(req)
    return queue_task("image", provider, model, params, {"reference": ("image", req.image)},
                      prepare=prepare_images(model), fields=_item_fields(record, item))


def _item_fields(record, item):
    return {"batch_id": record["id"], "batch_item": item.name}


def _merge(batch_id, entries):
    """Add entries to the record; an entry replaces the one of the same name (a re-run of that item)."""
    def change(record):
        index = {e["name"]: i for i, e in enumerate(record["items"])}
        for entry in entries:
            if entry["name"] in index:
                record["items"][index[entry["name"]]] = entry
            else:
                index[entry["name"]] = len(record["items"])
                record["items"].append(entry)
    return _store().update(batch_id, change)


# ---- acting on a whole batch ----------------------------------------------------------------

def retry_failed(record):
    """Re-run every failed or cancelled item through the task retry path; (record, tasks made, refusals)."""
    found, made, refusals, entries = batch_tasks(record), 0, [], []
    for entry in record["items"]:
        task = found.get(entry.get("task_id"))
        if task is None or task["status"] not in RETRYABLE:
            continue
        try:
            answer, _ = task_query.retry_task(task["id"])
        except AppError as exc:
            refusals.append({"name": entry["name"], "code": exc.code, **Text(exc.template, **exc.params).fields()})
            continue
        _tasks().update(answer["task_id"], {"batch_id": record["id"], "batch_item": entry["name"],
                                            "paused": True if record.get("paused") else None})
        entries.append({**entry, "task_id": answer["task_id"], "status": "created", "error": None})
        made += 1
    return _merge(record["id"], entries), made, refusals


def _hold(task_id, paused):
    def change(task):
        if task["status"] == tasks.QUEUED or not paused:
            task["paused"] = True if paused else None
    _tasks().update(task_id, change)


def set_paused(record, paused):
    """Pause (the queued items stay queued and are not sent) or resume the batch."""
    record = _store().update(record["id"], lambda r: r.update(paused=paused))
    for task_id, task in batch_tasks(record).items():
        if task and (task["status"] == tasks.QUEUED or task.get("paused")):
            _hold(task_id, paused)
    return record


def cancel(record):
    """Cancel every item that has not finished (one being saved finishes)."""
    record = _store().update(record["id"], lambda r: r.update(cancelled=True, paused=False))
    for task_id, task in batch_tasks(record).items():
        if task and task["status"] in tasks.ACTIVE:
            try:
                task_query.cancel_task(task_id)
            except Conflict:        # its result is being saved: it can no longer be cancelled
                continue
    return record


# ---- pages ----------------------------------------------------------------------------------

@bp.get("/batches")
def list_page():
    """The owner's batches with their progress."""
    return render_template("batches.html")


@bp.get("/batches/new")
def new_page():
    """Drop a folder, a zip and a prompts file, or paste rows."""
    return render_template("batches_new.html")


@bp.get("/batches/<batch_id>")
def detail_page(batch_id):
    """One batch: counts, progress, ETA, the items' grid, actions and downloads."""
    record = batch_or_404(batch_id)
    return render_template("batches_detail.html", batch_id=record["id"], batch_name=record["name"])


def _upload_limits():
    """A batch upload may be far larger than a single request (and have a part per dropped file)."""
    if request.endpoint in UPLOAD_ENDPOINTS:
        request.max_content_length = current_app.config["BATCH_MAX_UPLOAD_MB"] * 2**20
        request.max_form_parts = MAX_MEMBERS + 100


def init_app(app):
    """The batch store, the pages, the upload limits (before auth reads any form) and `flask batch`."""
    import batch_cli

    app.extensions["batch_store"] = open_batches(app.extensions["task_store"])
    app.register_blueprint(bp)
    app.before_request(_upload_limits)
    batch_cli.init_app(app)
