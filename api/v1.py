"""The v1 routes: video and image creates, tasks (read, list, cancel, retry, delete) and health.

One implementation behind every shape: a create is checked by video_extend / image_generate /
validation, created through access.create_within_limits, and answered in v1's words; listing,
cancel, retry and delete call task_query's routes and rules. Beyond the fields of `/generate` and
`/generate_image`, `width`/`height` choose the nearest aspect ratio the model offers, `seed` is
passed on where the model's table takes one, and `callback_url` is stored on the task (webhooks
deliver to it). The image-service shape (api/image_service.py) creates through `queue_image`.
"""

import math
import re
import statistics

from flask import Blueprint, current_app, has_request_context

import access
import health
import idempotency
import queue_info
import storyboards
import task_query
import tasks
from api.models import (
    DEFAULT_ESTIMATE,
    V1_STATUS,
    V1Created,
    V1Health,
    V1ImageRequest,
    V1ListQuery,
    V1Task,
    V1TaskList,
    V1VideoRequest,
)
from api.openapi import documented
from errors import N_, ValidationError
from i18n import translate
from image_generate import check_image_request, prepare_images
from validation import parse_body, provider_and_model, queue_task
from video_extend import check_video_request

bp = Blueprint("api_v1", __name__, url_prefix="/api/v1")

ESTIMATE_SAMPLE = 20            # the most recent succeeded tasks the estimate is the median of


# ---- the task in v1's words -----------------------------------------------------------------

def v1_task(record):
    """A task record as v1 shows it (links without signatures, via tasks.for_client)."""
    # In a request: the caller's language, the queue fields and scene counts. A webhook (sent by the
    # pipeline, no request) is about a task's end and carries the English.
    in_request = has_request_context()
    record = tasks.for_client(record, queue=queue_info.for_request(current_app) if in_request else None,
                              translate=translate if in_request else None)
    scenes = storyboards.scene_counts(_store(), record) if in_request and storyboards.is_storyboard(record) else None
    outputs = [_v1_output(o, record) for o in record["outputs"]]
    completed = record["status"] == tasks.SUCCEEDED
    result = ({"output_path": outputs[0]["url"] if outputs else None,
               "thumbnail": outputs[0]["thumbnail"] if outputs else None, "outputs": outputs} if completed else None)
    return V1Task(task_id=record["id"], kind=record["kind"], provider=record["provider"], model=record["model"],
                  status=V1_STATUS[record["status"]], progress=record.get("progress"), result=result,
                  error=record.get("error"), created_at=record["created_at"], updated_at=record["updated_at"],
                  retry_of=record.get("retry_of"), callback_url=record.get("callback_url"),
                  queue_position=record.get("queue_position"), eta_seconds=record.get("eta_seconds"),
                  storyboard_id=record.get("storyboard_id"), scene_index=record.get("scene_index"),
                  scenes=scenes).model_dump(mode="json")


def _v1_output(out, record):
    seed = (out.get("meta") or {}).get("seed")
    return {"kind": out["kind"], "url": out.get("url"), "thumbnail": out.get("thumbnail_url"),
            "original_url": out.get("remote_url"), "width": out.get("width"), "height": out.get("height"),
            "duration": out.get("duration"), "bytes": out.get("bytes"),
            "seed": seed if isinstance(seed, int) else record["params"].get("seed")}


def _store():
    return current_app.extensions["task_store"]


def estimated_time(kind, provider, model):
    """The median seconds of the provider and model's recent succeeded tasks, else DEFAULT_ESTIMATE."""
    page, _ = _store().list(status=tasks.SUCCEEDED, kind=kind, provider=provider, limit=200)
    took = [(tasks.parse_iso(t["finished_at"]) - tasks.parse_iso(t["created_at"])).total_seconds()
            for t in page if t["model"] == model and t.get("finished_at")][:ESTIMATE_SAMPLE]
    return max(1, round(statistics.median(took))) if took else DEFAULT_ESTIMATE[kind]


def created(record):
    return {"task_id": record["id"], "status": V1_STATUS[record["status"]], "created_at": record["created_at"],
            "estimated_time": estimated_time(record["kind"], record["provider"], record["model"])}


# ---- creates --------------------------------------------------------------------------------

def _nearest_ratio(width, height, offered, field):
    ratios = [r for r in offered if re.fullmatch(r"[0-9]+:[0-9]+", r)]
    if not ratios:
        raise ValidationError(N_("This model takes no aspect ratio (the result keeps the picture's shape): remove "
                                 "%(field)s."), code="unsupported_value", field=field, status=422,
                              params={"field": field})
    def distance(ratio):
        a, b = (int(side) for side in ratio.split(":"))
        return abs(math.log(width / height) - math.log(a / b))
    return min(ratios, key=distance)


def _apply_size(req, kind):
    """width/height -> the nearest aspect ratio the chosen model offers (the request keeps the rest)."""
    if req.width is None and req.height is None:
        return
    field = "width" if req.width is not None else "height"
    if req.width is None or req.height is None:
        raise ValidationError(N_("Give width and height together."), code="invalid_field", field=field)
    if req.aspect_ratio is not None:
        raise ValidationError(N_("Give either aspect_ratio or width/height."), code="invalid_field", field="width")
    _, model = provider_and_model(req.provider, req.model_name, kind)
    if "width" in (model.get("advanced") or {}):
        return                  # a model that takes a size in pixels itself (liblib-custom)
    offered = [] if kind == "video" and req.image is not None else model["aspect_ratios"]
    req.aspect_ratio = _nearest_ratio(req.width, req.height, offered, "width")
    req.width = req.height = None


def _apply_seed(req, model, params):
    """A seed goes into the task's settings only where the model's table takes one."""
    if req.seed is None or "seed" in params:
        return
    if not model.get("seed"):
        raise ValidationError(N_("%(model)s takes no seed."), code="unsupported_value", field="seed", status=422,
                              params={"model": model["id"]})
    params["seed"] = req.seed


def queue_video(req):
    if req.video_config is not None and req.scenes is None:
        raise ValidationError(N_("video_config goes with scenes."), code="invalid_field", field="video_config")
    if req.scenes is not None:              # a storyboard: its size is video_config's resolution
        if req.width is not None or req.height is not None:
            raise ValidationError(N_("With scenes, give the size as video_config.resolution."), code="invalid_field",
                                  field="width" if req.width is not None else "height")
        return storyboards.queue_storyboard(req)
    _apply_size(req, "video")
    provider, model, params = check_video_request(req)
    _apply_seed(req, model, params)
    return queue_task("video", provider, model, params,
                      {"first": ("image", req.image), "tail": ("image_tail", req.image_tail)},
                      callback_url=req.callback_url)


def queue_image(req):
    _apply_size(req, "image")
    provider, model, params = check_image_request(req)
    _apply_seed(req, model, params)
    return queue_task("image", provider, model, params, {"reference": ("image", req.image)},
                      callback_url=req.callback_url, prepare=prepare_images(model))


@bp.post("/videos/generate")
@documented("Queue a video task", request=V1VideoRequest, responses={202: V1Created}, idempotent=True)
@idempotency.idempotent
@access.limited("generate")
def generate_video():
    """The fields of `POST /generate`, plus width/height, seed and callback_url; with `scenes[]` (and
    `video_config`) a storyboard: one task per scene, joined into one MP4 (storyboards.py)."""
    return created(queue_video(parse_body(V1VideoRequest))), 202


@bp.post("/images/generate")
@documented("Queue an image task", request=V1ImageRequest, responses={202: V1Created}, idempotent=True)
@idempotency.idempotent
@access.limited("generate")
def generate_image():
    """The fields of `POST /generate_image`, plus width/height, seed and callback_url."""
    return created(queue_image(parse_body(V1ImageRequest))), 202


# ---- reading and changing tasks -------------------------------------------------------------

@bp.get("/tasks")
@documented("List tasks", responses={200: V1TaskList}, query=V1ListQuery)
def list_tasks():
    """Newest first; status takes v1 statuses (comma-separated); kind, provider, q (prompt text); paging."""
    args = task_query._list_args()
    statuses = []
    for status in [s for s in args.get("status", "").split(",") if s]:
        matching = [studio for studio, v1 in V1_STATUS.items() if v1 == status]
        if not matching:
            raise ValidationError(N_("Unknown status '%(status)s'."), code="invalid_field", field="status",
                                  params={"status": status[:40]})
        statuses += matching
    kind = args.get("kind") or None
    if kind not in (None, "video", "image"):
        raise ValidationError(N_("kind must be video or image."), code="invalid_field", field="kind")
    offset = task_query._int_arg(args, "offset", 0, 0, 10**9)
    limit = task_query._int_arg(args, "limit", 50, 1, 200)
    page, total = _store().list(status=statuses or None, kind=kind, provider=args.get("provider") or None,
                                text=args.get("q") or None, owner=access.visible_owner(), offset=offset, limit=limit)
    return {"tasks": [v1_task(t) for t in page], "total": total, "offset": offset, "limit": limit}


@bp.get("/tasks/<task_id>")
@documented("A task", responses={200: V1Task})
def get_task(task_id):
    return v1_task(access.task_or_404(_store(), task_id))


@bp.post("/tasks/<task_id>/cancel")
@documented("Cancel a task that has not finished", responses={200: V1Task})
def cancel_task(task_id):
    task_query.cancel_task(task_id)
    return v1_task(_store().get(task_id))


@bp.post("/tasks/<task_id>/retry")
@documented("Queue a new task with a finished task's settings", responses={202: V1Created}, idempotent=True)
@idempotency.idempotent
@access.limited("generate")
def retry_task(task_id):
    """The new task keeps the old one's pictures, settings and callback_url."""
    old = access.task_or_404(_store(), task_id)
    answer, _ = task_query.retry_task(task_id)
    record = _store().get(answer["task_id"])
    if old.get("callback_url"):
        record = _store().update(record["id"], {"callback_url": old["callback_url"]})
    return created(record), 202


@bp.delete("/tasks/<task_id>")
@documented("Delete a finished task with its files", responses={204: None})
def delete_task(task_id):
    return task_query.delete_task(task_id)



@bp.get("/health")
@documented("Whether the studio can do its job", responses={200: V1Health, 503: V1Health}, public=True)
@access.public
def health_check():
    """The checks of /readyz (store, disk, pipeline heartbeat); 503 when one fails."""
    body, status = health.readyz()
    return {"status": "ok" if body["ready"] else "unavailable", **body}, status
