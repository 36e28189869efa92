"""The image-service shape of the API: `POST /api/v1/tasks/`, `GET /api/v1/tasks/<id>/status|result`.

Scripts written for an image service send `{"model", "provider", "parameters": {...}, "is_async":
true}` with the service's parameter names (`size` "1024*1024", `aspectRatio`, `imgCount`,
`negativePrompt`, `sourceImage`) and the model ids the brief uses (`star-3-alpha-t2i`, the studio's too). Here
they are translated into a v1 image request and created by the same code as every other create
(api/v1.py `queue_image`); errors name the field the way the service's request spelled it.
"""

import re

import pydantic
from flask import Blueprint, current_app

import access
import idempotency
from api.models import ImageServiceRequest, ServiceCreated, ServiceResult, ServiceStatus, V1ImageRequest
from api.openapi import documented
from api.v1 import created, queue_image, v1_task
from errors import N_, ValidationError
from validation import parse_body

bp = Blueprint("image_service", __name__, url_prefix="/api/v1")

# Image-service parameter -> the studio's field. Model ids are the studio's own (star-3-alpha-t2i ...).
SERVICE_FIELDS = {"negativePrompt": "negative_prompt", "aspectRatio": "aspect_ratio", "imgCount": "n",
                  "sourceImage": "image", "size": "size"}
PRESET_RATIOS = {"square": "1:1", "portrait": "3:4", "landscape": "16:9"}   # Liblib's aspectRatio words


def _service_request(body):
    """The image-service request as a V1ImageRequest (errors name the service's own fields)."""
    model_id = body.model
    provider = body.provider
    if provider is None:
        offering = [p for p in current_app.extensions["providers"].values()
                    if any(m["id"] == model_id and m["kind"] == "image" for m in p.capabilities()["models"])]
        if not offering:
            raise ValidationError(N_("The studio offers no image model '%(model_id)s'."), code="unknown_model",
                                  field="model", status=422,
                                  params={"model_id": model_id})
        # A model served by several providers (Wan directly and through 302.ai): one with its keys set.
        provider = next((p for p in offering if p.configured()), offering[0]).name
    given = body.parameters.model_dump(exclude_none=True)
    fields = {}
    for name, value in given.items():
        studio_name = SERVICE_FIELDS.get(name, name)
        if studio_name in fields:
            raise ValidationError(N_("parameters: give %(name)s or its other spelling, not both."),
                                  code="invalid_field", field=f"parameters.{name}",
                                  params={"name": name})
        fields[studio_name] = value
    if "size" in fields:
        if "width" in fields or "height" in fields:
            raise ValidationError(N_("parameters: give size or width/height, not both."), code="invalid_field",
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
        raise ValidationError(N_("%(field)s: %(msg)s"), code="invalid_field", field=field, status=422,
                              params={"field": field, "msg": first["msg"]}) from None


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



@bp.get("/tasks/<task_id>/status")
@documented("A task's status (image-service shape)", responses={200: ServiceStatus})
def service_status(task_id):
    task = v1_task(access.task_or_404(current_app.extensions["task_store"], task_id))
    message = (task["error"] or {}).get("message") or f"The task is {task['status']}."
    return {"success": True, "task_id": task_id, "status": task["status"], "progress": task["progress"],
            "message": message, "error": task["error"]}


@bp.get("/tasks/<task_id>/result")
@documented("A task's results (image-service shape)", responses={200: ServiceResult})
def service_result(task_id):
    """`success` is true once the task completed; each image has its original and local URL, seed and size."""
    task = v1_task(access.task_or_404(current_app.extensions["task_store"], task_id))
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
