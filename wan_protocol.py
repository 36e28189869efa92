"""The Wan I2V service protocol (PROVIDERS.md §9.5), served: `/video/submit`, `/video/status`, `/video/cancel`.

Scripts written for the self-hosted Wan2.1-I2V service talk to the studio unchanged. Their tasks
are ordinary studio tasks, made by the same rules as `POST /generate` (video_extend's checks,
access.create_within_limits, the picture fetched through safe_fetch), and go to the provider and
model named by WAN_PROTOCOL_PROVIDER and WAN_PROTOCOL_MODEL (by default the local engine's
`local-motion`). The protocol's fields become the studio's:

- `image_url` -> the first frame (public http(s) only); `prompt` -> prompt (10–500 characters);
- `num_frames` -> the offered duration nearest to num_frames / 16 s (Wan makes 16 frames a second);
- `guidance_scale` (1–20) -> cfg_scale (0–1) where the model has one;
- `image_size` -> the model's 480P mode where it has one (the video keeps the picture's shape);
  `model`, `infer_steps` and `seed` are checked and kept in the task's params.

`requestId` is the task id in 32 hex digits (nine zeros, the id's 17 time digits, its 6-hex suffix),
so no second index is needed. Auth is the studio's (`Authorization: Bearer <API key>`). Errors are
the studio's shape with the service's FastAPI-style `detail` text added: 400 bad parameter or a
picture that could not be fetched, 401, 404 unknown requestId, 422 out of range.
"""

import re
from typing import Literal

from flask import Blueprint, current_app, jsonify, request
from pydantic import BaseModel, Field
from pydantic import ValidationError as PydanticError

import access
import task_query
import tasks
from errors import N_, AppError, NotFound, ValidationError, field_problem
from validation import STRICT, Text, parse_body, queue_task
from video_extend import VideoRequest, check_video_request

bp = Blueprint("wan_protocol", __name__)

FRAMES_PER_SECOND = 16
STATUS = {"queued": "InQueue", "submitted": "InQueue", "running": "InProgress", "downloading": "InProgress",
          "succeeded": "Succeed", "failed": "Failed", "cancelled": "Cancelled"}
# Studio field names in errors, in the protocol's words.
FIELDS = {"image": "image_url", "duration": "num_frames", "mode": "image_size", "cfg_scale": "guidance_scale",
          "model_name": "model", "provider": "model"}
_REQUEST_ID = re.compile(r"0{9}(\d{8})(\d{6})(\d{3})([0-9a-f]{6})")
_TASK_ID = re.compile(r"(\d{8})T(\d{6})(\d{3})Z-([0-9a-f]{6})")


class SubmitRequest(BaseModel):
    model_config = STRICT

    model: Text | None = Field(None, max_length=100)
    prompt: Text = Field(min_length=10, max_length=500)
    image_url: Text = Field(max_length=4096)
    image_size: Literal["480x832", "832x480", "auto"]
    num_frames: int = Field(ge=24, le=120)
    guidance_scale: float = Field(ge=1.0, le=20.0)
    infer_steps: int = Field(ge=20, le=100)
    seed: int | None = Field(None, ge=0, le=2147483647)


class RequestIdBody(BaseModel):
    model_config = STRICT

    requestId: Text = Field(max_length=64)     # noqa: N815 - the protocol's spelling


def request_id(task_id):
    """The protocol's 32-hex requestId of a studio task id."""
    match = _TASK_ID.fullmatch(task_id)
    return "0" * 9 + "".join(match.groups()) if match else task_id


def task_id_of(rid):
    match = _REQUEST_ID.fullmatch(rid)
    if match is None:
        raise NotFound(N_("No task '%(id)s'."), params={"id": rid[:40]})
    day, clock, millis, suffix = match.groups()
    return f"{day}T{clock}{millis}Z-{suffix}"


@bp.errorhandler(AppError)
def protocol_error(exc):
    """The studio's error shape, with the field in the protocol's words and the service's `detail`."""
    body = exc.to_dict()
    field = body["error"].get("field")
    if field in FIELDS:
        body["error"]["field"] = FIELDS[field]
        body["error"]["message"] = body["error"]["message"].replace(field, FIELDS[field], 1)
    body["detail"] = body["error"]["message"]
    return jsonify(body), exc.status


def _nearest(allowed, wanted):
    """The offered duration nearest to `wanted` seconds (the shorter one on a tie)."""
    try:
        return min(allowed, key=lambda value: (abs(float(value) - wanted), float(value)))
    except (TypeError, ValueError):
        return allowed[0] if allowed else None


@bp.post("/video/submit")
@access.limited("generate")
def submit():
    """Queue a video from a picture URL: 202 {"requestId"}."""
    req = parse_body(SubmitRequest)
    if not req.image_url.strip().lower().startswith(("http://", "https://")):
        raise ValidationError(N_("image_url must be a public http(s) URL."), code="invalid_url", field="image_url")
    config = current_app.config
    provider = current_app.extensions["providers"].get(config["WAN_PROTOCOL_PROVIDER"])
    model = next((m for m in provider.capabilities()["models"] if m["id"] == config["WAN_PROTOCOL_MODEL"]), {}) \
        if provider else {}
    modes = model.get("modes") or []
    mode = next((m for m in modes if "480" in m), None)
    duration = _nearest(model.get("durations") or [], req.num_frames / FRAMES_PER_SECOND)
    try:
        video = VideoRequest(image=req.image_url.strip(), prompt=req.prompt, provider=config["WAN_PROTOCOL_PROVIDER"],
                             model_name=config["WAN_PROTOCOL_MODEL"], mode=mode, duration=duration,
                             cfg_scale=round((req.guidance_scale - 1) / 19, 3) if model.get("cfg_scale") else None)
    except PydanticError as exc:
        first = exc.errors(include_url=False)[0]
        template, params = field_problem(first, ".".join(str(part) for part in first["loc"]))
        raise ValidationError(template, code="invalid_field", status=422, params=params) from None
    provider, model, params = check_video_request(video)
    params["wan"] = {"model": req.model, "image_size": req.image_size, "num_frames": req.num_frames,
                     "guidance_scale": req.guidance_scale, "infer_steps": req.infer_steps, "seed": req.seed}
    try:
        record = queue_task("video", provider, model, params, {"first": ("image_url", video.image)})
    except ValidationError as exc:
        if exc.code == "url_unavailable":
            exc.status = 400            # §9.5: "400 image download failed"
        raise
    return {"requestId": request_id(record["id"])}, 202


@bp.post("/video/status")
def status():
    """{"status", "results": {"videos": [{"url"}], "timings", "seed"}} (and `reason` when it failed)."""
    task = access.task_or_404(current_app.extensions["task_store"], task_id_of(parse_body(RequestIdBody).requestId))
    answer = {"status": STATUS[task["status"]]}
    if task["status"] == tasks.SUCCEEDED:
        base = (current_app.config.get("PUBLIC_BASE_URL") or request.host_url).rstrip("/")
        started, finished = tasks.parse_iso(task.get("submitted_at")), tasks.parse_iso(task.get("finished_at"))
        answer["results"] = {
            "videos": [{"url": base + o["url"]} for o in task["outputs"] if o.get("url")],
            "timings": {"inference": round((finished - started).total_seconds()) if started and finished else None},
            "seed": (task["params"].get("wan") or {}).get("seed")}
    elif task["status"] == tasks.FAILED and task.get("error"):
        answer["reason"] = task["error"]["message"]
    return answer


@bp.post("/video/cancel")
def cancel():
    """Cancel the task (at the provider too, by the pipeline): {"status": "Succeed"}."""
    task_id = task_id_of(parse_body(RequestIdBody).requestId)
    task = access.task_or_404(current_app.extensions["task_store"], task_id)
    if task["status"] != tasks.CANCELLED:
        task_query.cancel_task(task_id)     # the one place the cancel rule (and the refund) lives
    return {"status": "Succeed"}
