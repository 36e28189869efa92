"""How the studio reads a request body: the size cap on streamed bodies and strict JSON.

The app's request class and JSON provider are replaced (`app.request_class = StudioRequest`,
`app.json = StrictJSONProvider(app)`), so every endpoint gets these rules, whatever view reads
the body:

- A chunked body has no Content-Length, so werkzeug can only cap it while reading; its cap stops
  quietly at MAX_CONTENT_LENGTH and hands the view a truncated body (then a confusing 400). Here
  one byte past the cap is a 413 at once.
- A multipart/form-data body (what the pages send pictures as) is parsed once, in memory (no
  temporary files, so nothing is left behind whatever fails), with at most MAX_FORM_PARTS parts;
  a malformed body is remembered (`form_error`) rather than silently read as an empty form, and
  `form_body` turns it into the same dict a JSON body gives: the text fields as they are for text
  fields of the request model and as JSON values for the others (`n=2`, `sound=true`,
  `loras=[...]`), file parts as `media.Upload` for the model's picture fields only. Every refusal
  names its field.
- JSON is parsed strictly: nesting deeper than MAX_JSON_DEPTH (Python's parser recurses and dies
  of RecursionError at about 1,000), NaN/Infinity, numbers that overflow to infinity, duplicate
  keys and text that is not UTF-8 are refused. The refusal is a ValidationError (400,
  `invalid_json`) rather than a ValueError, so it is raised even to a view that asked for
  `get_json(silent=True)`: a malformed body never turns into "no body".
"""

import functools
import hashlib
import io
import json
import math
import re
import typing

import numpy as np
from flask import Request, current_app, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream, get_input_stream

import media
from errors import N_, PayloadTooLarge, ValidationError

MAX_JSON_DEPTH = 64
# The generate forms have about 25 fields and two pictures: more parts is not a person's request.
MAX_FORM_PARTS = 64

# A JSON string, written so the regex engine never backtracks ("unrolled loop").
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_OPENERS = np.frombuffer(b"[{", dtype=np.uint8)


class _CappedStream(LimitedStream):
    """A streamed body that may hold at most `cap` bytes: reading byte cap + 1 is a 413."""

    def __init__(self, stream, cap):
        super().__init__(stream, cap + 1, is_max=True)
        self._cap = cap

    def readinto(self, b):
        count = super().readinto(b)
        if self._pos > self._cap:
            raise RequestEntityTooLarge()
        return count


def _too_deep(text, limit=MAX_JSON_DEPTH):
    """Whether brackets outside strings nest deeper than `limit` (or never close)."""
    if text.count("[") + text.count("{") <= limit:
        return False                    # the usual body: a few brackets around long strings
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if len(brackets) <= limit:
        return False
    codes = np.frombuffer(brackets.encode("ascii"), dtype=np.uint8)
    steps = np.isin(codes, _OPENERS).astype(np.int8) * 2 - 1     # +1 opens, -1 closes
    depth = np.cumsum(steps, dtype=np.int32)
    return bool(depth.max() > limit or depth[-1] != 0)


def _refuse_duplicates(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key '{key[:40]}'")
        obj[key] = value
    return obj


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is too large")
    return value


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON with a strict `loads`; it is what `request.get_json` parses with."""

    def loads(self, data, **kwargs):
        try:
            # UTF-8 only (RFC 8259); json would also guess UTF-16 and UTF-32.
            text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        except UnicodeDecodeError:
            raise ValidationError(N_("The request body is not valid UTF-8 text."), code="invalid_json") from None
        if _too_deep(text):
            raise ValidationError(N_("The JSON body nests deeper than %(max)s levels (or is unbalanced)."),
                                  code="invalid_json", params={"max": MAX_JSON_DEPTH})
        try:
            return json.loads(text, **{"object_pairs_hook": _refuse_duplicates, "parse_constant": _refuse_constant,
                                       "parse_float": _finite_float, **kwargs})
        except (ValueError, RecursionError) as exc:
            raise ValidationError(N_("The request body is not valid JSON: %(detail)s"),
                                  code="invalid_json", params={"detail": str(exc)[:120]}) from None


class StudioRequest(Request):
    """Flask's request with the streamed-body cap and the form parsing above."""

    max_form_parts = MAX_FORM_PARTS
    form_error = None       # why a multipart body could not be parsed, when it could not

    @cached_property
    def stream(self):
        cap = self.max_content_length
        if self.content_length is None and cap is not None and "wsgi.input_terminated" in self.environ:
            return _CappedStream(self.environ["wsgi.input"], cap)
        return get_input_stream(self.environ, max_content_length=cap)

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        # In memory: the body is capped by MAX_CONTENT_LENGTH anyway, and a picture is checked from
        # bytes; a temporary file would be written, read back and left to clean up.
        return io.BytesIO()

    def make_form_data_parser(self):
        parser = super().make_form_data_parser()
        parser.silent = False           # a malformed body is an error, not an empty form
        return parser

    def _load_form_data(self):
        if "form" in self.__dict__:
            return
        try:
            super()._load_form_data()
        except ValueError as exc:
            self.form_error = str(exc)[:200] or "unparsable"      # werkzeug's words, quoted as data
            self.__dict__.update(form=self.parameter_storage_class(), files=self.parameter_storage_class())
        except RequestEntityTooLarge:
            raise PayloadTooLarge(
                N_("The form has more than %(parts)s parts, or a text field over %(bytes)s bytes: send pictures "
                   "as files."), code="payload_too_large",
                params={"parts": self.max_form_parts, "bytes": self.max_form_memory_size}) from None


# ---- multipart/form-data as a request model's body

class _TakesFile:
    """The mark of a request model field that takes a picture file (validation.Picture)."""

    def __repr__(self):
        return "TAKES_FILE"


TAKES_FILE = _TakesFile()


def _mentions(annotation, wanted):
    """Whether a type annotation is or contains `wanted` (through unions, Annotated, Optional)."""
    if annotation is wanted:
        return True
    return any(_mentions(arg, wanted) for arg in typing.get_args(annotation) if not isinstance(arg, str | int))


def _marked(field):
    return TAKES_FILE in field.metadata or _mentions(field.annotation, TAKES_FILE)


@functools.cache
def file_fields(schema):
    """The fields of a request model that take a picture file (media.Upload), in their order."""
    return tuple(name for name, field in schema.model_fields.items() if _marked(field))


@functools.cache
def _text_fields(schema):
    """The fields whose form value is their text: text fields, and picture fields given as text."""
    return frozenset(name for name, field in schema.model_fields.items()
                     if _mentions(field.annotation, str) or _marked(field))


def form_body(schema):
    """The multipart/form-data body as the dict a JSON body would be, for `schema` to validate."""
    if not request.mimetype_params.get("boundary"):
        raise ValidationError(N_("A multipart/form-data body needs the boundary= parameter of its Content-Type."),
                              code="invalid_multipart")
    form, files = request.form, request.files       # parsed once (the CSRF check may have read it)
    if request.form_error:
        raise ValidationError(N_("The multipart/form-data body is malformed: %(detail)s"),
                              code="invalid_multipart", params={"detail": request.form_error})
    if not (form or files):
        raise ValidationError(N_("The multipart/form-data body is malformed: it has no parts."),
                              code="invalid_multipart")
    body = {}
    for name, values in form.lists():
        _only_once(name, values, body)
        body[name] = _form_value(schema, name, values[0])
    pictures = file_fields(schema)
    for name, parts in files.lists():
        _only_once(name, parts, body)
        if name not in pictures:
            raise ValidationError(N_("'%(field)s' cannot be a file: only %(fields)s take one."),
                                  code="unexpected_file", field=name, params={"field": name, "fields": list(pictures)})
        data = parts[0].stream.getvalue()
        if data or parts[0].filename:           # an empty file input sends a part with neither
            body[name] = media.Upload(data, parts[0].filename or "")
    return body


def form_digest():
    """What identifies a parsed multipart body (its raw bytes are gone once the form is read): the
    fields and the files' names and contents, in a canonical order. For idempotency keys."""
    digest = hashlib.sha256()
    for name, value in sorted(request.form.items(multi=True)):
        digest.update(json.dumps(["field", name, value]).encode())
    for name, upload in sorted(request.files.items(multi=True), key=lambda item: item[0]):
        digest.update(json.dumps(["file", name, upload.filename]).encode())
        digest.update(hashlib.sha256(upload.stream.getvalue()).digest())
    return digest.hexdigest().encode()


def _only_once(name, values, body):
    if len(values) > 1 or name in body:
        raise ValidationError(N_("'%(field)s' is sent more than once."), code="duplicate_field", field=name,
                              params={"field": name})


def _form_value(schema, name, text):
    """A form field's text as the value its model field takes: text for a text field (and for a
    field the model does not have, which it then refuses by name), else the JSON value it spells."""
    if name not in schema.model_fields or name in _text_fields(schema):
        return text
    try:
        return current_app.json.loads(text)
    except ValidationError:
        raise ValidationError(N_("%(field)s: '%(value)s' is not a value this field takes (a number, true/false, "
                                 "or JSON for a list or an object)."), code="invalid_field", field=name,
                              params={"field": name, "value": text[:40]}) from None
