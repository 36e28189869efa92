"""Video generation: the request schema, its checks against the model's table, `POST /generate`.

Field names are the seed's (`image`, `image_tail`, `model_name`, `duration` "5"/"10" …) so
existing scripts keep working. A model whose table has an `advanced` entry (the self-hosted Wan
server's) also takes `image_size`, `num_frames`, `guidance_scale`, `infer_steps` and `seed`,
checked against it; other models refuse them. A good request stores its pictures and a queued task and answers
202 at once; the pipeline in task_query does the rest.
"""

from flask import Blueprint, render_template
from pydantic import BaseModel, Field, StrictInt, field_validator

import access
import idempotency
import media
import storyboards
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

bp = Blueprint("video_extend", __name__)


class VideoRequest(BaseModel):
    model_config = STRICT

    image: Picture | None = None
    image_tail: Picture | None = None
    prompt: Text | None = Field(None, max_length=2500)
    negative_prompt: Text | None = Field(None, max_length=2500)
    provider: Text = "local"
    model_name: Text | None = None
    mode: Text | None = None
    duration: Text | None = None
    cfg_scale: float | None = Field(None, ge=0, le=1)
    camera: Text | None = None
    aspect_ratio: Text | None = None
    seed: StrictInt | None = Field(None, ge=0, le=2147483647)
    prompt_extend: bool | None = None
    sound: bool | None = None
    image_size: Text | None = None
    num_frames: int | None = None
    guidance_scale: float | None = None
    infer_steps: int | None = None
    # A storyboard (storyboards.py): the scenes take the place of prompt, duration and image.
    scenes: list[storyboards.Scene] | None = Field(None, description="A storyboard: each scene a task, joined "
                                                         "into one video when all have succeeded.")
    video_config: storyboards.VideoConfig | None = Field(None, description="With scenes: how they are joined.")

    @field_validator("image", "image_tail", mode="before")
    @classmethod
    def blank_is_missing(cls, value):
        return None if value == "" else value

    @field_validator("duration", mode="before")
    @classmethod
    def duration_as_text(cls, value):
        # Kling types duration as a string; scripts often send the number.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def check_video_request(req):
    """Validate a VideoRequest against its model's table; returns (provider, model, params)."""
    if req.video_config is not None and req.scenes is None:
        raise ValidationError(N_("video_config goes with scenes."), code="invalid_field", field="video_config")
    provider, model = provider_and_model(req.provider, req.model_name, "video")
    prompt = (req.prompt or "").strip()
    check_prompts(model, req.prompt, req.negative_prompt)
    _check_frames_and_prompt(model, req, prompt)
    combo = _check_combo(model, req)
    _check_tail(model, req, combo)
    params = {
        "prompt": prompt, "negative_prompt": (req.negative_prompt or "").strip(), "mode": combo["mode"],
        "duration": combo["duration"], "cfg_scale": (req.cfg_scale if req.cfg_scale is not None else 0.5)
        if model["cfg_scale"] else None, "camera": _check_camera(model, req, combo),
        "aspect_ratio": _check_aspect_ratio(model, req),
    }
    params.update(_check_model_settings(model, req, prompt))
    sound = _check_sound(model, req, combo)
    if sound is not None:
        params["sound"] = sound
    return provider, model, params


def _check_frames_and_prompt(model, req, prompt):
    """Whether the model takes (or needs) a first frame, and a prompt when there is none."""
    if req.image is None and not model["text_to_video"]:
        raise ValidationError(N_("%(model)s makes a video from a picture: add a first frame."),
                              code="image_required", field="image",
                              params={"model": model["id"]})
    if req.image is not None and not model["image_to_video"]:
        raise ValidationError(N_("%(model)s makes video from text only: remove the picture."),
                              code="image_not_supported", field="image", status=422,
                              params={"model": model["id"]})
    if req.image is None and not prompt:
        raise ValidationError(N_("Text-to-video needs a prompt."), code="prompt_required", field="prompt")


def _check_combo(model, req):
    """The chosen mode and duration, as a combination the model offers."""
    mode = choose(req.mode, model["modes"], "mode", "Mode")
    duration = choose(req.duration, model["durations"], "duration", "Duration")
    combo = {"mode": mode, "duration": duration}
    if combo not in model["combos"]:
        raise ValidationError(N_("%(model)s does not offer %(duration)s s in %(mode)s mode."),
                              code="unsupported_value", field="duration", status=422,
                              params={"model": model["id"], "duration": duration, "mode": mode})
    return combo


def _offered(combos):
    """The combinations as text for an error message ("—" when there are none)."""
    return ", ".join(f"{c['mode']} {c['duration']} s" for c in combos) or "—"


def _check_tail(model, req, combo):
    """The tail frame: required by some models, and only with a first frame and an offered combination."""
    if req.image_tail is None and req.image is not None and model.get("tail_required"):
        raise ValidationError(N_("%(model)s makes a video between two frames: add a tail frame."),
                              code="image_required", field="image_tail",
                              params={"model": model["id"]})
    if req.image_tail is None:
        return
    if req.image is None:
        raise ValidationError(N_("A tail frame needs a first frame too."), code="image_required", field="image")
    if combo not in model["tail_combos"]:
        raise ValidationError(
            N_("%(model)s accepts a tail frame only with: %(combos)s."),
            code="tail_not_supported", field="image_tail", status=422,
            params={"model": model["id"], "combos": _offered(model["tail_combos"])})


def _check_camera(model, req, combo):
    """The camera move (None when not asked for), checked against where the model takes one."""
    if req.camera is None:
        return None
    if not model["cameras"]:
        raise ValidationError(N_("%(model)s has no camera setting."), code="unsupported_value",
                              field="camera", status=422,
                              params={"model": model["id"]})
    camera = choose(req.camera, model["cameras"], "camera", "Camera move")
    use = "image_to_video" if req.image is not None else "text_to_video"
    if use not in model.get("camera_for", [use]):
        raise ValidationError(N_("%(model)s takes a camera move only for %(kinds)s."),
                              code="unsupported_value", field="camera", status=422,
                              params={"model": model["id"],
                                      "kinds": [kind.replace("_", "-") for kind in model["camera_for"]]})
    if combo not in model.get("camera_combos", model["combos"]):
        raise ValidationError(N_("%(model)s takes a camera move only with: %(combos)s."),
                              code="unsupported_value", field="camera", status=422,
                              params={"model": model["id"], "combos": _offered(model["camera_combos"])})
    if req.image_tail is not None and not model.get("camera_with_tail", True):
        raise ValidationError(N_("%(model)s takes either a tail frame or a camera move, not both."),
                              code="unsupported_value", field="camera", status=422,
                              params={"model": model["id"]})
    return camera


def _check_aspect_ratio(model, req):
    """The aspect ratio for text-to-video (None with a picture or for a model without ratios)."""
    if req.image is None and model["aspect_ratios"]:
        # With a picture the video takes the picture's shape; the ratio only matters for text-to-video.
        return choose(req.aspect_ratio, model["aspect_ratios"], "aspect_ratio", "Aspect ratio")
    return None


def _check_model_settings(model, req, prompt):
    """The seed and prompt_extend, or the Wan server's advanced settings for a model that has them."""
    advanced = model.get("advanced")
    if advanced is not None:
        return check_advanced(req, model, advanced, prompt)     # the seed is one of its settings
    refuse_settings(model, req, ADVANCED_FIELDS)
    return check_seed_and_prompt_extend(model, req)


def _check_sound(model, req, combo):
    """Whether the video has sound (None for a model that is always silent)."""
    sound_combos = model.get("sound_combos", [])
    if not sound_combos:
        if req.sound:
            raise ValidationError(N_("%(model)s makes silent video only."), code="unsupported_value",
                                  field="sound", status=422,
                                  params={"model": model["id"]})
        return None
    default = model.get("sound_default", False)
    if req.sound is not None and req.sound != default and not model.get("sound_switch", True):
        raise ValidationError(N_("%(model)s decides about sound itself: leave the sound setting out."),
                              code="unsupported_value", field="sound", status=422,
                              params={"model": model["id"]})
    sound = default if req.sound is None else req.sound
    if req.image_tail is not None and not model.get("sound_with_tail", True):
        if req.sound:
            raise ValidationError(N_("%(model)s makes silent video only with a tail frame."),
                                  code="unsupported_value", field="sound", status=422,
                                  params={"model": model["id"]})
        return False
    if sound and combo not in sound_combos:
        if req.sound is None:
            return False            # the default asked for sound where it is not offered: silent
        offered = ", ".join(f"{c['mode']} {c['duration']} s" for c in sound_combos)
        raise ValidationError(N_("%(model)s makes sound only with: %(offered)s."), code="unsupported_value",
                              field="sound", status=422,
                              params={"model": model["id"], "offered": offered})
    return sound


ADVANCED_FIELDS = ("image_size", "num_frames", "guidance_scale", "infer_steps")   # the Wan server's


def _in_range(value, limits, field, what, model_id):
    if value is None:
        return limits.get("default")
    if not limits["min"] <= value <= limits["max"]:
        raise ValidationError(N_("%(field)s for %(model_id)s must be %(min)s–%(max)s."),
                              code="unsupported_value", field=field, status=422,
                              params={"field": field, "model_id": model_id, "min": limits["min"],
                                      "max": limits["max"]})
    return value


def check_advanced(req, model, advanced, prompt):
    """The Wan server's settings checked against the model's `advanced` table entry."""
    model_id = model["id"]
    if len(prompt) < advanced.get("prompt_min", 0):
        raise ValidationError(N_("%(model_id)s needs a prompt of at least %(prompt_min)s characters."),
                              code="prompt_too_short", field="prompt", status=422,
                              params={"model_id": model_id, "prompt_min": advanced["prompt_min"]})
    num_frames = _in_range(req.num_frames, advanced["num_frames"], "num_frames", "num_frames", model_id)
    return {"image_size": choose(req.image_size, advanced["image_size"], "image_size", "Video size"),
            "num_frames": num_frames,
            "guidance_scale": _in_range(req.guidance_scale, advanced["guidance_scale"], "guidance_scale",
                                        "guidance_scale", model_id),
            "infer_steps": _in_range(req.infer_steps, advanced["infer_steps"], "infer_steps", "infer_steps",
                                     model_id),
            "seed": _in_range(req.seed, advanced["seed"], "seed", "seed", model_id),
            # The length the frames make (81 at 16 fps: 5 s), for the account's duration limit.
            "duration": str(max(1, round(num_frames / advanced["fps"])))}


@bp.post("/generate")
@idempotency.idempotent      # the same Idempotency-Key: the same task (idempotency.py)
@access.limited("generate")
def generate():
    """Queue a video task: 202 {"task_id", "status"}."""
    req = parse_body(VideoRequest)
    if req.scenes is not None:
        record = storyboards.queue_storyboard(req)
        return {"task_id": record["id"], "status": record["status"]}, 202
    provider, model, params = check_video_request(req)
    record = queue_task("video", provider, model, params,
                        {"first": ("image", req.image), "tail": ("image_tail", req.image_tail)})
    return {"task_id": record["id"], "status": record["status"]}, 202


@bp.get("/")
@bp.get("/index.html", endpoint="page_index")
def page():
    """The video page; its form is built in the browser from /api/capabilities."""
    return render_template("index.html", image_limits=media.image_limits())
