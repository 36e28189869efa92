"""The versioned public API, `/api/v1/...`: its request and response models and its routes.

One implementation behind every shape. The v1 creates (`POST /api/v1/videos/generate`,
`/images/generate`) take the fields of `/generate` and `/generate_image` (their models are
subclassed, so the rules are the same ones) plus `width`/`height` (mapped to the nearest aspect
ratio the model offers), `seed` (where the model's table says it takes one) and `callback_url`
(stored on the task; webhooks deliver to it). The image-service shape (`POST /api/v1/tasks/` with
`{"model", "provider", "parameters", "is_async"}`, `/status`, `/result`) is translated into the
same image request. Every check is the one in video_extend / image_generate / validation / access;
listing, cancel, retry and delete call task_query's routes.

v1 reports a task's status in five words (`V1_STATUS`): queued (queued); processing (submitted,
running, downloading); completed (succeeded); failed; cancelled. The models here are also what
openapi.py builds `/openapi.json` from (each route carries its models with `documented`).
"""

import math
import re
import statistics
from typing import Annotated, Literal
from urllib.parse import urlsplit

import pydantic
from flask import Blueprint, current_app
from pydantic import AfterValidator, BaseModel, Field

import access
import health
import idempotency
import task_query
import tasks
from errors import ValidationError
from image_generate import ImageRequest, check_image_request
from validation import STRICT, Text, decode_images, parse_body, provider_and_model
from video_extend import VideoRequest, check_video_request

bp = Blueprint("api_v1", __name__, url_prefix="/api/v1")

V1_STATUS = {tasks.QUEUED: "queued", tasks.SUBMITTED: "processing", tasks.RUNNING: "processing",
             tasks.DOWNLOADING: "processing", tasks.SUCCEEDED: "completed", tasks.FAILED: "failed",
             tasks.CANCELLED: "cancelled"}
V1Status = Literal["queued", "processing", "completed", "failed", "cancelled"]
# Seconds a task is expected to take when its provider and model have no finished task to learn from.
DEFAULT_ESTIMATE = {"video": 180, "image": 60}
ESTIMATE_SAMPLE = 20            # the most recent succeeded tasks the estimate is the median of


# ---- request models -------------------------------------------------------------------------

def _http_url(value):
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    return value


CallbackUrl = Annotated[Text, Field(max_length=2000), AfterValidator(_http_url)]


class V1Extras(BaseModel):
    """What v1 adds to the fields of /generate and /generate_image."""

    model_config = STRICT

    width: int | None = Field(None, ge=1, le=16384, description="With height: the nearest aspect ratio offered.")
    height: int | None = Field(None, ge=1, le=16384)
    seed: int | None = Field(None, ge=0, le=4294967295, description="Only for models whose table takes a seed.")
    callback_url: CallbackUrl | None = Field(None, description="POSTed the v1 task body when the task ends.")


class V1VideoRequest(VideoRequest, V1Extras):
    """The fields of `POST /generate`, plus width/height, seed and callback_url."""


class V1ImageRequest(ImageRequest, V1Extras):
    """The fields of `POST /generate_image`, plus width/height, seed and callback_url."""


class ImageServiceParameters(BaseModel):
    """The image service's parameter names; each is mapped onto the studio's (see SERVICE_FIELDS)."""

    model_config = STRICT

    prompt: Text | None = Field(None, max_length=2500)
    negative_prompt: Text | None = Field(None, max_length=2500)
    negativePrompt: Text | None = Field(None, max_length=2500)      # noqa: N815 - the service's name
    size: Annotated[Text, Field(pattern=r"^[0-9]{1,5}[*x][0-9]{1,5}$")] | None = Field(
        None, description='"W*H", e.g. "1024*1024": the nearest aspect ratio offered.')
    aspect_ratio: Text | None = None
    aspectRatio: Text | None = Field(None, description='"1:1" ..., or square, portrait (3:4), landscape (16:9).')  # noqa: N815
    n: int | None = Field(None, ge=1, le=9)
    imgCount: int | None = Field(None, ge=1, le=9)                  # noqa: N815
    seed: int | None = Field(None, ge=0, le=4294967295)
    width: int | None = Field(None, ge=1, le=16384)
    height: int | None = Field(None, ge=1, le=16384)
    image: Text | None = None
    sourceImage: Text | None = None                                 # noqa: N815
    image_fidelity: float | None = Field(None, ge=0, le=1)
    human_fidelity: float | None = Field(None, ge=0, le=1)
    image_reference: Text | None = None


class ImageServiceRequest(BaseModel):
    """`POST /api/v1/tasks/`: an image task in the image service's shape."""

    model_config = STRICT

    model: Text = Field(max_length=100, description="e.g. wanx2.1-t2i-turbo, star-3-alpha-t2i, local-filters")
    provider: Text | None = Field(None, max_length=64, description="The studio's provider; found from the model "
                                                                     "when left out.")
    parameters: ImageServiceParameters = ImageServiceParameters()
    is_async: Literal[True] = Field(True, description="Tasks are always asynchronous: poll /status and /result.")
    callback_url: CallbackUrl | None = None


# Image-service parameter -> the studio's field; the model ids other clients use for ours.
SERVICE_FIELDS = {"negativePrompt": "negative_prompt", "aspectRatio": "aspect_ratio", "imgCount": "n",
                  "sourceImage": "image", "size": "size"}
SERVICE_MODELS = {"star-3-alpha-t2i": ("liblib", "star-3-alpha"),
                  "star-3-alpha-i2i": ("liblib", "star-3-alpha-img2img")}
PRESET_RATIOS = {"square": "1:1", "portrait": "3:4", "landscape": "16:9"}   # Liblib's aspectRatio words


# ---- response models ------------------------------------------------------------------------

class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """Every error: `{"error": {"code", "message", "field"}}`."""

    error: ErrorDetail


class V1Created(BaseModel):
    task_id: str
    status: Literal["queued"]
    estimated_time: int = Field(description="Seconds: the median duration of this provider and model's recent "
                                            "succeeded tasks, else 180 for a video and 60 for images.")
    created_at: str


class V1Output(BaseModel):
    kind: str
    url: str | None = Field(None, description="The studio's copy (needs the same credentials).")
    thumbnail: str | None = None
    original_url: str | None = Field(None, description="The provider's link, without its signature.")
    width: int | None = None
    height: int | None = None
    duration: float | None = None
    bytes: int | None = None
    seed: int | None = None


class V1Result(BaseModel):
    output_path: str | None
    thumbnail: str | None
    outputs: list[V1Output]


class V1TaskError(BaseModel):
    code: str
    message: str
    retryable: bool = False


class V1Task(BaseModel):
    task_id: str
    kind: Literal["video", "image"]
    provider: str
    model: str
    status: V1Status = Field(description="queued (queued); processing (submitted, running, downloading); "
                                         "completed (succeeded); failed; cancelled.")
    progress: int | None
    result: V1Result | None = Field(description="Set once the task is completed.")
    error: V1TaskError | None
    created_at: str
    updated_at: str
    retry_of: str | None = None
    callback_url: str | None = None


class V1TaskList(BaseModel):
    tasks: list[V1Task]
    total: int
    offset: int
    limit: int


class V1ListQuery(BaseModel):
    """The listing's query arguments (checked by task_query's listing rules)."""

    status: str | None = Field(None, max_length=200, description="Comma-separated v1 statuses.")
    kind: Literal["video", "image"] | None = None
    provider: str | None = Field(None, max_length=64)
    q: str | None = Field(None, max_length=500, description="Text in the prompt.")
    offset: int | None = Field(None, ge=0, le=10**9)
    limit: int | None = Field(None, ge=1, le=200)


class ServiceCreated(V1Created):
    success: Literal[True]
    message: str


class ServiceStatus(BaseModel):
    success: Literal[True]
    task_id: str
    status: V1Status
    progress: int | None
    message: str
    error: V1TaskError | None


class ServiceImage(BaseModel):
    original_url: str | None = Field(description="The provider's link, without its signature.")
    local_url: str | None = Field(description="The studio's copy.")
    thumbnail_url: str | None
    seed: int | None
    size: str | None = Field(description='"W*H"')
    width: int | None
    height: int | None


class ServiceResults(BaseModel):
    task_id: str
    status: V1Status
    images: list[ServiceImage]
    videos: list[V1Output]


class ServiceResult(BaseModel):
    success: bool = Field(description="True when the task completed.")
    message: str
    results: ServiceResults


class V1Health(BaseModel):
    status: Literal["ok", "unavailable"]
    ready: bool
    checks: dict[str, str]


def documented(summary, *, request=None, responses, query=None, idempotent=False, public=False):
    """Attach a route's models for openapi.py (the document is built from these, not written)."""
    def mark(view):
        view.openapi = {"summary": summary, "doc": view.__doc__, "request": request, "responses": responses,
                        "query": query, "idempotent": idempotent, "public": public}
        return view
    return mark


# ---- the task in v1's words -----------------------------------------------------------------

def v1_task(record):
    """A task record as v1 shows it (links without signatures, via tasks.for_client)."""
    record = tasks.for_client(record)
    outputs = [_v1_output(o, record) for o in record["outputs"]]
    completed = record["status"] == tasks.SUCCEEDED
    result = ({"output_path": outputs[0]["url"] if outputs else None,
               "thumbnail": outputs[0]["thumbnail"] if outputs else None, "outputs": outputs} if completed else None)
    return V1Task(task_id=record["id"], kind=record["kind"], provider=record["provider"], model=record["model"],
                  status=V1_STATUS[record["status"]], progress=record.get("progress"), result=result,
                  error=record.get("error"), created_at=record["created_at"], updated_at=record["updated_at"],
                  retry_of=record.get("retry_of"), callback_url=record.get("callback_url")).model_dump(mode="json")


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
        raise ValidationError("This model takes no aspect ratio (the result keeps the picture's shape): remove "
                              f"{field}.", code="unsupported_value", field=field, status=422)
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
        raise ValidationError("Give width and height together.", code="invalid_field", field=field)
    if req.aspect_ratio is not None:
        raise ValidationError("Give either aspect_ratio or width/height.", code="invalid_field", field="width")
    _, model = provider_and_model(req.provider, req.model_name, kind)
    offered = [] if kind == "video" and req.image is not None else model["aspect_ratios"]
    req.aspect_ratio = _nearest_ratio(req.width, req.height, offered, "width")


def _apply_seed(req, model, params):
    """A seed goes into the task's settings only where the model's table takes one."""
    if req.seed is None or "seed" in params:
        return
    if not model.get("seed"):
        raise ValidationError(f"{model['id']} takes no seed.", code="unsupported_value", field="seed", status=422)
    params["seed"] = req.seed


def _queue(kind, provider, model, params, pictures, callback_url):
    """Create the task through the studio's limits; the v1 202 answer."""
    store = _store()
    access.check_request_limits(kind, model, params)
    images = decode_images(pictures)
    record = access.create_within_limits(store, kind, params, lambda task_id: tasks.create_task(
        store, current_app.config["DATA_DIR"], kind=kind, provider=provider.name, model=model["id"],
        params=params, images=images, owner=access.owner_id(), task_id=task_id, callback_url=callback_url))
    return record


def queue_video(req):
    _apply_size(req, "video")
    provider, model, params = check_video_request(req)
    _apply_seed(req, model, params)
    return _queue("video", provider, model, params,
                  {"first": ("image", req.image), "tail": ("image_tail", req.image_tail)}, req.callback_url)


def queue_image(req):
    _apply_size(req, "image")
    provider, model, params = check_image_request(req)
    _apply_seed(req, model, params)
    return _queue("image", provider, model, params, {"reference": ("image", req.image)}, req.callback_url)


@bp.post("/videos/generate")
@documented("Queue a video task", request=V1VideoRequest, responses={202: V1Created}, idempotent=True)
@idempotency.idempotent
@access.limited("generate")
def generate_video():
    """The fields of `POST /generate`, plus width/height, seed and callback_url."""
    return created(queue_video(parse_body(V1VideoRequest))), 202


@bp.post("/images/generate")
@documented("Queue an image task", request=V1ImageRequest, responses={202: V1Created}, idempotent=True)
@idempotency.idempotent
@access.limited("generate")
def generate_image():
    """The fields of `POST /generate_image`, plus width/height, seed and callback_url."""
    return created(queue_image(parse_body(V1ImageRequest))), 202


def _service_request(body):
    """The image-service request as a V1ImageRequest (errors name the service's own fields)."""
    model_id = body.model
    provider = body.provider
    if model_id in SERVICE_MODELS and provider in (None, SERVICE_MODELS[model_id][0]):
        provider, model_id = SERVICE_MODELS[model_id]
    if provider is None:
        offering = [p for p in current_app.extensions["providers"].values()
                    if any(m["id"] == model_id and m["kind"] == "image" for m in p.capabilities()["models"])]
        if not offering:
            raise ValidationError(f"The studio offers no image model '{model_id}'.", code="unknown_model",
                                  field="model", status=422)
        # A model served by several providers (Wan directly and through 302.ai): one with its keys set.
        provider = next((p for p in offering if p.configured()), offering[0]).name
    given = body.parameters.model_dump(exclude_none=True)
    fields = {}
    for name, value in given.items():
        studio_name = SERVICE_FIELDS.get(name, name)
        if studio_name in fields:
            raise ValidationError(f"parameters: give {name} or its other spelling, not both.",
                                  code="invalid_field", field=f"parameters.{name}")
        fields[studio_name] = value
    if "size" in fields:
        if "width" in fields or "height" in fields:
            raise ValidationError("parameters: give size or width/height, not both.", code="invalid_field",
                                  field="parameters.size")
        fields["width"], fields["height"] = (int(side) for side in re.split(r"[*x]", fields.pop("size")))
    if "aspect_ratio" in fields:
        fields["aspect_ratio"] = PRESET_RATIOS.get(fields["aspect_ratio"], fields["aspect_ratio"])
    try:
        return V1ImageRequest.model_validate({**fields, "provider": provider, "model_name": model_id,
                                              "callback_url": body.callback_url}), given
    except pydantic.ValidationError as exc:
        # Only what the service's names allow and the studio's do not (a size of 0 or 99999 pixels).
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"])
        raise ValidationError(f"{field}: {first['msg']}", code="invalid_field", field=field, status=422) from None


def _service_field(field, given):
    """The image service's name for a studio field named in an error."""
    if field == "model_name":
        return "model"
    if field is None or field in ("model", "provider", "callback_url", "is_async") or field.startswith("parameters."):
        return field
    if field in ("width", "height") and "size" in given:
        return "parameters.size"
    spelled = [name for name in given if SERVICE_FIELDS.get(name, name) == field]
    return f"parameters.{spelled[0] if spelled else field}"


@bp.post("/tasks/")
@documented("Queue an image task (image-service shape)", request=ImageServiceRequest,
            responses={202: ServiceCreated}, idempotent=True)
@idempotency.idempotent
@access.limited("generate")
def service_create():
    """`{"model", "provider", "parameters": {...}, "is_async": true}`; parameters in the service's names
    (`size` "1024*1024", `aspectRatio`, `imgCount`, `negativePrompt`, `sourceImage`) or the studio's."""
    body = parse_body(ImageServiceRequest)
    given = body.parameters.model_dump(exclude_none=True)
    try:
        req, given = _service_request(body)
        record = queue_image(req)
    except ValidationError as exc:
        exc.field = _service_field(exc.field, given)
        raise
    return {"success": True, "message": "The task is queued.", **created(record)}, 202


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
            raise ValidationError(f"Unknown status '{status[:40]}'.", code="invalid_field", field="status")
        statuses += matching
    kind = args.get("kind") or None
    if kind not in (None, "video", "image"):
        raise ValidationError("kind must be video or image.", code="invalid_field", field="kind")
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


@bp.get("/tasks/<task_id>/status")
@documented("A task's status (image-service shape)", responses={200: ServiceStatus})
def service_status(task_id):
    task = v1_task(access.task_or_404(_store(), task_id))
    message = (task["error"] or {}).get("message") or f"The task is {task['status']}."
    return {"success": True, "task_id": task_id, "status": task["status"], "progress": task["progress"],
            "message": message, "error": task["error"]}


@bp.get("/tasks/<task_id>/result")
@documented("A task's results (image-service shape)", responses={200: ServiceResult})
def service_result(task_id):
    """`success` is true once the task completed; each image has its original and local URL, seed and size."""
    task = v1_task(access.task_or_404(_store(), task_id))
    outputs = (task["result"] or {}).get("outputs", [])
    images = [{"original_url": o["original_url"], "local_url": o["url"], "thumbnail_url": o["thumbnail"],
               "seed": o["seed"], "size": f"{o['width']}*{o['height']}" if o["width"] and o["height"] else None,
               "width": o["width"], "height": o["height"]} for o in outputs if o["kind"] == "image"]
    done = task["status"] == "completed"
    message = ("The task completed." if done else (task["error"] or {}).get("message")
               or f"The task is {task['status']}; no results yet.")
    return {"success": done, "message": message, "results": {
        "task_id": task_id, "status": task["status"], "images": images,
        "videos": [o for o in outputs if o["kind"] == "video"]}}


@bp.get("/health")
@documented("Whether the studio can do its job", responses={200: V1Health, 503: V1Health}, public=True)
@access.public
def health_check():
    """The checks of /readyz (store, disk, pipeline heartbeat); 503 when one fails."""
    body, status = health.readyz()
    return {"status": "ok" if body["ready"] else "unavailable", **body}, status
