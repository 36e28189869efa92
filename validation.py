"""What the video and image endpoints share when they check a request.

Reading the JSON body, turning pydantic's errors into our `{"error": {code, message, field}}`
shape, finding the provider and model in the capability tables, and decoding the pictures.
Malformed input (not JSON, unknown fields, wrong types) is a 400; well-formed values that are out
of range or that the chosen model does not allow are a 422.
"""

import re
from typing import Annotated

import pydantic
from flask import current_app, request
from pydantic import AfterValidator, ConfigDict, PlainValidator
from pydantic_core import PydanticCustomError

import media
import request_body
import safe_fetch
from errors import N_, ProviderNotConfigured, ValidationError, field_problem

# Pydantic error types that mean "the value is of the right kind but not allowed".
_RANGE_ERRORS = {"greater_than_equal", "less_than_equal", "greater_than", "less_than",
                 "string_too_long", "string_too_short", "too_long", "too_short", "literal_error", "enum"}


# What every request model is: unknown fields refused, no coercion (`"3"` and `true` are not
# numbers, `5` is not text; a whole number is still a fine float), no NaN or infinity.
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


# Tabs and line breaks belong in prompts; NUL, other control characters and lone UTF-16
# surrogates (which JSON's \ud800 escapes can smuggle in, and no encoder can write) belong nowhere.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


_LONGEST_URL = 8192            # a picture URL longer than this is Base64 (or refused as such)
# Printable ASCII and the three line characters: what is left after deleting these is refused.
_PRINTABLE_ASCII = bytes(range(0x20, 0x7F)) + b"\t\n\r"


def _printable(value):
    # A long ASCII text (a picture's Base64) is checked by deleting the allowed bytes, 5x faster
    # than the regex's scan; isascii() is a flag lookup.
    if len(value) > 4096 and value.isascii():
        bad = bool(value.encode("ascii").translate(None, _PRINTABLE_ASCII))
    else:
        bad = _CONTROL.search(value) is not None
    if bad:
        raise PydanticCustomError("control_characters", "must not contain control characters or lone surrogates")
    return value


Text = Annotated[str, AfterValidator(_printable)]


def _picture(value):
    if isinstance(value, media.Upload):
        return value
    if type(value) is not str:
        raise PydanticCustomError("string_type", "Input should be a valid string")
    # A long value can only be Base64, whose strict decoder refuses every character outside its
    # alphabet (media.decode_image): a second scan of megabytes here would find nothing more.
    return value if len(value) > _LONGEST_URL else _printable(value)


# A picture field: Base64 text, a data: URI or a URL in JSON and form fields, or a multipart file
# part's bytes (media.Upload). One validator rather than a union, so an error names the field
# alone; the JSON schema says string, as JSON cannot carry an upload.
Picture = Annotated[object, PlainValidator(_picture, json_schema_input_type=str), request_body.TAKES_FILE]


def parse_body(schema):
    """The request's body validated by a pydantic model, or a 400/422 ValidationError: a JSON
    object, or for a model with picture fields also multipart/form-data (request_body.form_body)."""
    if request.mimetype == "multipart/form-data" and request_body.file_fields(schema):
        body = request_body.form_body(schema)
    else:
        body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ValidationError(N_("The request body must be a JSON object."), code="invalid_json")
    try:
        return schema.model_validate(body)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            raise ValidationError(N_("Unknown field '%(field)s'."), code="unknown_field", field=field,
                                  params={"field": field}) from None
        status = 422 if first["type"] in _RANGE_ERRORS else 400
        template, params = field_problem(first, field)
        raise ValidationError(template, code="invalid_field", field=field, status=status, params=params) from None


def provider_and_model(provider_id, model_id, kind):
    """The provider instance and the model entry for a request, or a clear error naming the field."""
    providers = current_app.extensions["providers"]
    provider = providers.get(provider_id)
    if provider is None:
        raise ValidationError(N_("Unknown provider '%(provider)s'. Choose one of: %(allowed)s."),
                              code="unknown_provider", field="provider", status=422,
                              params={"provider": provider_id, "allowed": ", ".join(providers)})
    if not provider.configured():
        raise ProviderNotConfigured(
            N_("Provider '%(provider)s' is not configured: set its API keys in the environment or .env."),
            field="provider", params={"provider": provider_id})
    # Kling uses one id for a video and an image model (kling-v1 ...): look the id up among this kind.
    models = {m["id"]: m for m in provider.capabilities()["models"] if m["kind"] == kind}
    model = models.get(model_id or next(iter(models), None))
    if model is None and not models:
        # A provider may offer no model of this kind (DashScope's Virginia region: no pictures).
        raise ValidationError(N_("%(provider)s offers no video models here.") if kind == "video" else
                              N_("%(provider)s offers no image models here."), code="unknown_model",
                              field="model_name", status=422, params={"provider": provider_id})
    if model is None:
        raise ValidationError(
            N_("Model '%(model)s' is not a video model of %(provider)s. Choose one of: %(allowed)s.")
            if kind == "video" else
            N_("Model '%(model)s' is not an image model of %(provider)s. Choose one of: %(allowed)s."),
            code="unknown_model", field="model_name", status=422,
            params={"model": model_id, "provider": provider_id, "allowed": ", ".join(models)})
    return provider, model


def choose(value, allowed, field, what=None):
    """`value` if allowed (the first allowed value when None), else a 422 naming the choices.

    The message names the field (`what`, the English name callers pass, is not used: a field name
    reads the same in every language)."""
    if value is None:
        return allowed[0]
    if value not in allowed:
        raise ValidationError(N_("%(field)s '%(value)s' is not offered here. Choose one of: %(allowed)s."),
                              code="unsupported_value", field=field, status=422,
                              params={"field": field, "value": value, "allowed": ", ".join(map(str, allowed))})
    return value


def check_prompts(model, prompt, negative_prompt):
    """Prompt lengths and whether the model takes a negative prompt at all."""
    limits = {"prompt": model["max_prompt"], "negative_prompt": model.get("max_negative_prompt", model["max_prompt"])}
    for field, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        if len(text or "") > limits[field]:
            raise ValidationError(N_("%(field)s is longer than %(max)s characters for %(model)s."),
                                  code="prompt_too_long", field=field, status=422,
                                  params={"field": field, "max": limits[field], "model": model["id"]})
    if negative_prompt and not model.get("negative_prompt", True):
        raise ValidationError(N_("%(model)s does not take a negative prompt."), code="unsupported_value",
                              field="negative_prompt", status=422, params={"model": model["id"]})


def decode_images(fields, min_side=media.MIN_SIDE):
    """Decode every given picture ({role: (field name, Base64 text, data: URI or URL, or None)}),
    each at least `min_side` px on its shorter side (the model's `min_side`)."""
    images = {}
    for role, (field, data) in fields.items():
        if data is None:
            continue
        if isinstance(data, media.Upload):
            images[role] = media.check_image_bytes(data.data, field, min_side=min_side)
        elif safe_fetch.is_url(data):
            try:
                fetched = safe_fetch.fetch(data.strip(), field)
            except ValueError:
                # urllib's own parse errors (`http://[::1/`, `http://[zz::1]/`, a port out of range).
                raise ValidationError(N_("%(field)s is not a valid URL."), code="invalid_url", field=field,
                                      params={"field": field}) from None
            images[role] = media.check_image_bytes(fetched, field, min_side=min_side)
        else:
            images[role] = media.decode_image(data, field, min_side=min_side)
    return images


def refuse_settings(model, req, names):
    """A 422 for the first of `names` the request sets: settings of models other than this one."""
    for name in names:
        if getattr(req, name) is not None:
            raise ValidationError(N_("%(model)s has no '%(name)s' setting."), code="unsupported_value",
                                  field=name, status=422, params={"model": model["id"], "name": name})


def check_seed_and_prompt_extend(model, req):
    """The request's `seed` / `prompt_extend` where the model takes them (a 422 where it does not);
    only the ones given, so a task records what the user chose and the provider default otherwise."""
    chosen = {}
    for name, template in (("seed", N_("%(model)s does not take a seed.")),
                           ("prompt_extend", N_("%(model)s does not take prompt_extend (prompt rewriting)."))):
        value = getattr(req, name)
        if value is None:
            continue
        if not model.get(name, False):
            raise ValidationError(template, code="unsupported_value", field=name, status=422,
                                  params={"model": model["id"]})
        chosen[name] = value
    return chosen


def queue_task(kind, provider, model, params, pictures, *, callback_url=None, prepare=None, fields=None):
    """The one way a checked request becomes a task, for every route and API shape: the user's
    limits, the pictures decoded and fitted to the provider's byte limit, `prepare(params, images)`
    (a model's last settings that depend on the pictures), then the create under the quota lock.
    `fields` are more record fields for tasks.create_task (a batch item's, a storyboard scene's)."""
    import access
    import tasks

    store = current_app.extensions["task_store"]
    access.check_request_limits(kind, model, params)
    limit = getattr(provider, "max_image_bytes", media.PROVIDER_MAX_BYTES)
    min_side = model.get("min_side", media.MIN_SIDE)    # a model documenting none gets the studio's
    images = {role: media.fit_image(image, limit) for role, image in decode_images(pictures, min_side).items()}
    if prepare is not None:
        prepare(params, images)
    return access.create_within_limits(store, kind, params, lambda task_id: tasks.create_task(
        store, current_app.config["DATA_DIR"], kind=kind, provider=provider.name, model=model["id"],
        params=params, images=images, owner=access.owner_id(), task_id=task_id, callback_url=callback_url,
        **(fields or {})))
