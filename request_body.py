"""How the studio reads a request body: the size cap on streamed bodies and strict JSON.

The app's request class and JSON provider are replaced (`app.request_class = StudioRequest`,
`app.json = StrictJSONProvider(app)`), so every endpoint gets these rules, whatever view reads
the body:

- A chunked body has no Content-Length, so werkzeug can only cap it while reading; its cap stops
  quietly at MAX_CONTENT_LENGTH and hands the view a truncated body (then a confusing 400). Here
  one byte past the cap is a 413 at once.
- JSON is parsed strictly: nesting deeper than MAX_JSON_DEPTH (Python's parser recurses and dies
  of RecursionError at about 1,000), NaN/Infinity, numbers that overflow to infinity, duplicate
  keys and text that is not UTF-8 are refused. The refusal is a ValidationError (400,
  `invalid_json`) rather than a ValueError, so it is raised even to a view that asked for
  `get_json(silent=True)`: a malformed body never turns into "no body".
"""

import json
import math
import re

import numpy as np
from flask import Request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream, get_input_stream

from errors import N_, ValidationError

MAX_JSON_DEPTH = 64

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
    """Flask's request with the streamed-body cap above."""

    @cached_property
    def stream(self):
        cap = self.max_content_length
        if self.content_length is None and cap is not None and "wsgi.input_terminated" in self.environ:
            return _CappedStream(self.environ["wsgi.input"], cap)
        return get_input_stream(self.environ, max_content_length=cap)
