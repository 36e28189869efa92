"""Image generation: the request schema, its checks against the model's table, `POST /generate_image`.

Field names are the seed's (`image`, `model_name` with `model` accepted as an alias,
`aspect_ratio`, `n`, `image_fidelity`, `human_fidelity`, `image_reference`). A good request stores
its reference picture and a queued task and answers 202 at once.
"""

from flask import Blueprint, current_app, render_template
from pydantic import BaseModel, Field, StrictInt, field_validator, model_validator

import access
import idempotency
import media
import tasks
from errors import ValidationError
from validation import (
    STRICT,
    Text,
    check_prompts,
    check_seed_and_prompt_extend,
    choose,
    decode_images,
    parse_body,
    provider_and_model,
)

bp = Blueprint("image_generate", __name__)


class ImageRequest(BaseModel):
    model_config = STRICT

    image: Text | None = None
    prompt: Text | None = Field(None, max_length=2500)
    negative_prompt: Text | None = Field(None, max_length=2500)
    provider: Text = "local"
    model_name: Text | None = None
    model: Text | None = None
    aspect_ratio: Text | None = None
    n: int = Field(1, ge=1, le=9)
    image_fidelity: float | None = Field(None, ge=0, le=1)
    human_fidelity: float | None = Field(None, ge=0, le=1)
    image_reference: Text | None = None
    seed: StrictInt | None = Field(None, ge=0, le=2147483647)
    prompt_extend: bool | None = None

    @field_validator("image", mode="before")
    @classmethod
    def blank_is_missing(cls, value):
        return None if value == "" else value

    @model_validator(mode="after")
    def model_alias(self):
        if self.model_name is None:
            self.model_name = self.model
        return self


def check_image_request(req):
    """Validate an ImageRequest against its model's table; returns (provider, model, params)."""
    provider, model = provider_and_model(req.provider, req.model_name, "image")
    prompt = (req.prompt or "").strip()
    check_prompts(model, req.prompt, req.negative_prompt)
    if req.image is None:
        if not model["text_to_image"]:
            message = (f"{model['id']} works from a reference picture: add one." if provider.name != "local" else
                       "The local engine makes variations of a reference picture and cannot draw from text "
                       "alone: add a reference picture.")
            raise ValidationError(message, code="image_required", field="image")
        if not prompt:
            raise ValidationError("Describe the picture: the prompt is required without a reference.",
                                  code="prompt_required", field="prompt")
    elif model.get("prompt_required") and not prompt:
        raise ValidationError(f"{model['id']} needs a prompt describing the result.",
                              code="prompt_required", field="prompt")
    elif not model["image_to_image"]:
        raise ValidationError(f"{model['id']} draws from text only: remove the reference picture.",
                              code="image_not_supported", field="image", status=422)
    if req.image is not None and req.negative_prompt and not model["negative_prompt_with_image"]:
        raise ValidationError(f"{model['id']} ignores a negative prompt with a reference picture: remove one.",
                              code="unsupported_value", field="negative_prompt", status=422)
    aspect_ratio = choose(req.aspect_ratio, model["aspect_ratios"], "aspect_ratio", "Aspect ratio")
    if not model["n_min"] <= req.n <= model["n_max"]:
        raise ValidationError(f"{model['id']} makes {model['n_min']}–{model['n_max']} images per request.",
                              code="unsupported_value", field="n", status=422)
    image_reference = None
    if req.image_reference is not None:
        if req.image is None:
            raise ValidationError("image_reference needs a reference picture.", code="image_required",
                                  field="image")
        image_reference = choose(req.image_reference, model["image_reference"] or ["(none)"],
                                 "image_reference", "Reference type")
    params = {
        "prompt": prompt, "negative_prompt": (req.negative_prompt or "").strip(),
        "aspect_ratio": aspect_ratio, "n": req.n,
        "image_fidelity": _default(req.image_fidelity, 0.5) if model["image_fidelity"] and req.image else None,
        "human_fidelity": _default(req.human_fidelity, 0.45) if model["human_fidelity"] and image_reference == "subject"
        else None,
        "image_reference": image_reference,
    }
    params.update(check_seed_and_prompt_extend(model, req))
    return provider, model, params


def _default(value, default):
    return default if value is None else value


@bp.post("/generate_image")
@idempotency.idempotent      # the same Idempotency-Key: the same task (idempotency.py)
@access.limited("generate")
def generate_image():
    """Queue an image task: 202 {"task_id", "status"}."""
    req = parse_body(ImageRequest)
    provider, model, params = check_image_request(req)
    store = current_app.extensions["task_store"]
    access.check_request_limits("image", model, params)
    images = decode_images({"reference": ("image", req.image)})
    record = access.create_within_limits(store, "image", params, lambda task_id: tasks.create_task(
        store, current_app.config["DATA_DIR"], kind="image", provider=provider.name, model=model["id"],
        params=params, images=images, owner=access.owner_id(), task_id=task_id))
    return {"task_id": record["id"], "status": record["status"]}, 202


@bp.get("/images")
def page():
    """The images page; its form is built in the browser from /api/capabilities."""
    return render_template("images.html", image_limits=media.image_limits())
