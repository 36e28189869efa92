"""Image generation: the request schema, its checks against the model's table, `POST /generate_image`.

Field names are the seed's (`image`, `model_name` with `model` accepted as an alias,
`aspect_ratio`, `n`, `image_fidelity`, `human_fidelity`, `image_reference`). A model whose table
has an `advanced` entry (liblib-custom) also takes `checkpoint_id`, `base_model`, `loras`,
`sampler`, `steps`, `cfg_scale`, `seed`, `width`, `height` and `hires_fix`, checked against that
entry; other models refuse them. A provider's `model_aliases` keep old model ids working, and a
request with a reference picture and no model picks the provider's first image-to-image model when
its first model draws from text only. A good request stores its reference picture (fitted to the
provider's byte limit) and a queued task and answers 202 at once.
"""

import re

from flask import Blueprint, current_app, render_template
from pydantic import BaseModel, Field, StrictInt, field_validator, model_validator

import access
import idempotency
import media
from errors import N_, ValidationError
from validation import (
    STRICT,
    Picture,
    Text,
    check_prompts,
    check_seed_and_prompt_extend,
    choose,
    parse_body,
    provider_and_model,
    queue_task,
    refuse_settings,
)

bp = Blueprint("image_generate", __name__)


class Lora(BaseModel):
    model_config = STRICT

    id: Text
    weight: float | None = None


class HiresFix(BaseModel):
    model_config = STRICT

    steps: int | None = None
    denoising_strength: float | None = None
    upscaler: int | None = None
    width: int | None = None
    height: int | None = None


# The settings only a model with an `advanced` table entry takes.
# liblib-custom's own settings (its seed is checked with them; other models' seed by their table).
ADVANCED_FIELDS = ("checkpoint_id", "base_model", "loras", "sampler", "steps", "cfg_scale", "width", "height",
                   "hires_fix")
_VERSION_UUID = re.compile(r"[0-9a-f]{32}")     # Liblib model version ids (the `versionUuid` of a model page)


class ImageRequest(BaseModel):
    model_config = STRICT

    image: Picture | None = None
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
    checkpoint_id: Text | None = None
    base_model: Text | None = None
    loras: list[Lora] | None = Field(None, max_length=10)
    sampler: int | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    seed: StrictInt | None = Field(None, ge=0, le=2147483647)
    prompt_extend: bool | None = None
    width: int | None = None
    height: int | None = None
    hires_fix: HiresFix | None = None

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
    provider, model = provider_and_model(req.provider, _model_id(req), "image")
    prompt = (req.prompt or "").strip()
    check_prompts(model, req.prompt, req.negative_prompt)
    _check_image_and_prompt(provider, model, req, prompt)
    aspect_ratio = choose(req.aspect_ratio, model["aspect_ratios"], "aspect_ratio", "Aspect ratio")
    if not model["n_min"] <= req.n <= model["n_max"]:
        raise ValidationError(N_("%(model)s makes %(n_min)s–%(n_max)s images per request."),
                              code="unsupported_value", field="n", status=422,
                              params={"model": model["id"], "n_min": model["n_min"], "n_max": model["n_max"]})
    image_reference = _check_image_reference(model, req)
    params = {
        "prompt": prompt, "negative_prompt": (req.negative_prompt or "").strip(),
        "aspect_ratio": aspect_ratio, "n": req.n,
        "image_fidelity": _default(req.image_fidelity, 0.5) if model["image_fidelity"] and req.image else None,
        "human_fidelity": _default(req.human_fidelity, 0.45) if model["human_fidelity"] and image_reference == "subject"
        else None,
        "image_reference": image_reference,
    }
    params.update(_check_model_settings(model, req))
    return provider, model, params


def _check_image_and_prompt(provider, model, req, prompt):
    """Whether the model takes (or needs) a reference picture, and the prompt each case needs."""
    if req.image is None:
        if not model["text_to_image"]:
            message = (N_("%(model)s works from a reference picture: add one.") if provider.name != "local" else
                       N_("The local engine makes variations of a reference picture and cannot draw from text "
                          "alone: add a reference picture."))
            raise ValidationError(message, code="image_required", field="image", params={"model": model["id"]})
        if not prompt:
            raise ValidationError(N_("Describe the picture: the prompt is required without a reference."),
                                  code="prompt_required", field="prompt")
    elif model.get("prompt_required") and not prompt:
        raise ValidationError(N_("%(model)s needs a prompt describing the result."),
                              code="prompt_required", field="prompt",
                              params={"model": model["id"]})
    elif not model["image_to_image"]:
        raise ValidationError(N_("%(model)s draws from text only: remove the reference picture."),
                              code="image_not_supported", field="image", status=422,
                              params={"model": model["id"]})
    if req.image is not None and req.negative_prompt and not model["negative_prompt_with_image"]:
        raise ValidationError(N_("%(model)s ignores a negative prompt with a reference picture: remove one."),
                              code="unsupported_value", field="negative_prompt", status=422,
                              params={"model": model["id"]})


def _check_image_reference(model, req):
    """The reference type (None when not asked for); it needs a reference picture."""
    if req.image_reference is None:
        return None
    if req.image is None:
        raise ValidationError(N_("image_reference needs a reference picture."), code="image_required",
                              field="image")
    return choose(req.image_reference, model["image_reference"] or ["(none)"], "image_reference", "Reference type")


def _check_model_settings(model, req):
    """The seed and prompt_extend, or the advanced settings for a model that has them."""
    advanced = model.get("advanced")
    if advanced is not None:
        return check_advanced(req, model, advanced)
    refuse_settings(model, req, ADVANCED_FIELDS)
    return check_seed_and_prompt_extend(model, req)


def _model_id(req):
    """The model the request means: an old id by its new name; with a reference picture and no model,
    the provider's first image-to-image model if its first model draws from text only."""
    provider = current_app.extensions["providers"].get(req.provider)
    if provider is None:
        return req.model_name
    if req.model_name is not None:
        return getattr(provider, "model_aliases", {}).get(req.model_name, req.model_name)
    models = [m for m in provider.capabilities()["models"] if m["kind"] == "image"]
    if req.image is not None and models and not models[0]["image_to_image"]:
        return next((m["id"] for m in models if m["image_to_image"]), None)
    return None


def _in_range(value, limits, field, what, model_id):
    if value is None:
        return limits.get("default")
    if not limits["min"] <= value <= limits["max"]:
        raise ValidationError(N_("%(field)s for %(model_id)s must be %(min)s–%(max)s."),
                              code="unsupported_value", field=field, status=422,
                              params={"field": field, "model_id": model_id, "min": limits["min"],
                                      "max": limits["max"]})
    return value


def check_advanced(req, model, advanced):
    """The advanced settings (liblib-custom's) checked against the model's `advanced` table entry."""
    model_id = model["id"]
    base_model = _check_checkpoint(req, advanced)
    loras = _check_loras(req, advanced["loras"], model_id)
    sampler = advanced["sampler_default"] if req.sampler is None else req.sampler
    if not 0 <= sampler < len(advanced["samplers"]):
        raise ValidationError(N_("sampler is one of Liblib's %(count)s samplers, 0–%(last)s."),
                              code="unsupported_value", field="sampler", status=422,
                              params={"count": len(advanced["samplers"]), "last": len(advanced["samplers"]) - 1})
    width, height = _check_sides(req, advanced, model_id)
    hires = None if req.hires_fix is None else _check_hires_fix(req.hires_fix, advanced["hires_fix"], model_id)
    return {"checkpoint_id": req.checkpoint_id, "base_model": base_model, "loras": loras, "sampler": sampler,
            "steps": _in_range(req.steps, advanced["steps"], "steps", "Steps", model_id),
            "cfg_scale": _in_range(req.cfg_scale, advanced["cfg_scale"], "cfg_scale", "CFG scale", model_id),
            "seed": _in_range(req.seed, advanced["seed"], "seed", "Seed", model_id),
            "width": width, "height": height, "hires_fix": hires}


def _check_checkpoint(req, advanced):
    """The base model, and a well-formed checkpoint_id where the base model needs one; returns the base model."""
    base_model = choose(req.base_model, advanced["base_models"], "base_model", "Base model")
    if req.checkpoint_id is not None and not _VERSION_UUID.fullmatch(req.checkpoint_id):
        raise ValidationError(N_("checkpoint_id is a Liblib model version id: 32 hex digits (versionUuid=… in the "
                                 "model page's address)."), code="invalid_field", field="checkpoint_id", status=422)
    if req.checkpoint_id is None and base_model in advanced["checkpoint_required"]:
        raise ValidationError(N_("A %(base_model)s checkpoint is needed: give its checkpoint_id."),
                              code="checkpoint_required", field="checkpoint_id",
                              params={"base_model": base_model})
    return base_model


def _check_loras(req, lora_limits, model_id):
    """The LoRAs as [{"id", "weight"}], their count, ids and weights checked."""
    loras = []
    if len(req.loras or []) > lora_limits["max"]:
        raise ValidationError(N_("%(model_id)s takes at most %(max)s LoRAs."), code="unsupported_value",
                              field="loras", status=422,
                              params={"model_id": model_id, "max": lora_limits["max"]})
    for i, lora in enumerate(req.loras or []):
        if not _VERSION_UUID.fullmatch(lora.id):
            raise ValidationError(N_("A LoRA id is a Liblib model version id: 32 hex digits."), code="invalid_field",
                                  field=f"loras.{i}.id", status=422)
        weight = lora_limits["weight_default"] if lora.weight is None else lora.weight
        if not lora_limits["weight_min"] <= weight <= lora_limits["weight_max"]:
            raise ValidationError(N_("A LoRA weight must be %(weight_min)s–%(weight_max)s."),
                                  code="unsupported_value", field=f"loras.{i}.weight", status=422,
                                  params={"weight_min": lora_limits["weight_min"],
                                          "weight_max": lora_limits["weight_max"]})
        loras.append({"id": lora.id, "weight": weight})
    return loras


def _check_sides(req, advanced, model_id):
    """The result's width and height (both None: the reference picture's size, filled in once decoded)."""
    # With a reference picture the sides are the result's (img2img's resized sides, up to 2048).
    sides = advanced["resized_side"] if req.image is not None else None
    width = _in_range(req.width, sides or advanced["width"], "width", "Width", model_id)
    height = _in_range(req.height, sides or advanced["height"], "height", "Height", model_id)
    if sides and width is not None and (req.width is None) != (req.height is None):
        raise ValidationError(N_("Give both width and height, or neither to keep the reference picture's size."),
                              code="invalid_field", field="width" if req.width is None else "height", status=422)
    if sides and req.width is None:
        width = height = None       # the reference picture's size, filled in once it is decoded
    return width, height


def _check_hires_fix(fix, limits, model_id):
    """The hi-res fix settings checked against the `hires_fix` entry of the advanced table."""
    hires = {"steps": _in_range(fix.steps, limits["steps"], "hires_fix.steps", "Hi-res steps", model_id),
             "denoising_strength": _in_range(fix.denoising_strength, limits["denoising_strength"],
                                             "hires_fix.denoising_strength", "Hi-res denoising", model_id),
             "upscaler": limits["upscaler_default"] if fix.upscaler is None else fix.upscaler,
             "width": _in_range(fix.width, limits["width"], "hires_fix.width", "Hi-res width", model_id),
             "height": _in_range(fix.height, limits["height"], "hires_fix.height", "Hi-res height", model_id)}
    if not 0 <= hires["upscaler"] <= 100:
        raise ValidationError(N_("hires_fix.upscaler is one of Liblib's upscaler numbers (0–100)."),
                              code="unsupported_value", field="hires_fix.upscaler", status=422)
    return hires


def prepare_images(model):
    """What a model still needs from the decoded pictures (liblib-custom's sizes), or None."""
    if not model.get("advanced"):
        return None
    return lambda params, images: _fill_sizes(params, images, model["advanced"])


def _fill_sizes(params, images, limits):
    """Sizes that follow the reference picture (img2img) or the base size (hi-res fix: twice it)."""
    reference = images.get("reference")
    if "width" in params and params["width"] is None and reference is not None:
        side = limits["resized_side"]
        scale = min(1.0, side["max"] / max(reference.width, reference.height))
        params["width"], params["height"] = (max(side["min"], round(reference.width * scale)),
                                             max(side["min"], round(reference.height * scale)))
    hires = params.get("hires_fix")
    if hires:
        top = limits["hires_fix"]["width"]["max"]
        hires["width"] = hires["width"] or min(top, params["width"] * 2)
        hires["height"] = hires["height"] or min(top, params["height"] * 2)


def _default(value, default):
    return default if value is None else value


@bp.post("/generate_image")
@idempotency.idempotent      # the same Idempotency-Key: the same task (idempotency.py)
@access.limited("generate")
def generate_image():
    """Queue an image task: 202 {"task_id", "status"}."""
    req = parse_body(ImageRequest)
    provider, model, params = check_image_request(req)
    record = queue_task("image", provider, model, params, {"reference": ("image", req.image)},
                        prepare=prepare_images(model))
    return {"task_id": record["id"], "status": record["status"]}, 202


@bp.get("/images")
def page():
    """The images page; its form is built in the browser from /api/capabilities."""
    return render_template("images.html", image_limits=media.image_limits())
