"""The API's OpenAPI 3.1 document (`/openapi.json`) and its interactive docs (`/docs`).

The document is assembled, not written: every route of the app that carries `documented`
metadata becomes an operation, its request body and responses are the JSON schemas of the very
pydantic models that validate the requests and shape the answers (`models_json_schema`), and
every error is the one `ErrorBody` shape. `/docs` is Swagger UI, vendored under static/vendor/ and
started by static/js/docs.js (no inline script, so it runs under the studio's CSP, offline).
"""

import re

from flask import Blueprint, current_app, render_template
from pydantic.json_schema import models_json_schema

from access import public
from api.models import ErrorBody

bp = Blueprint("openapi", __name__)

REF = "#/components/schemas/{model}"
DESCRIPTION = """The studio's versioned API. Authenticate with `Authorization: Bearer <API key>`
(keys have scopes: `read` for GET, `generate` for the rest).

**Statuses.** v1 reports a task's status in five words: `queued` (the studio's queued);
`processing` (submitted, running, downloading); `completed` (succeeded: every result is saved on
the studio); `failed`; `cancelled`.

**Idempotency.** Every create takes an `Idempotency-Key` header (1-255 printable ASCII characters).
For 24 hours the same key from the same user with the same request returns the first answer again
(status and body, with `Idempotent-Replayed: true`) instead of creating a second task; the same key
with a different request is a 409 `idempotency_conflict`. A second request with a key whose first
request is still being served waits for it and gets its answer. Only a created task is remembered:
a refused request may be corrected and sent with the same key.

**Errors** are always `{"error": {"code", "message", "field"}}`: 400 malformed input, 401 no or bad
credentials, 403 not allowed, 404 no such task (or not yours), 409 conflict, 413 too large, 422 a
value the chosen model does not allow, 429 rate or quota limit, 507 disk full.
"""
_ARG = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


def documented(summary, *, request=None, responses, query=None, idempotent=False, public=False, form=None):
    """Attach a route's models for the document (the document is built from these, not written);
    `form` is the model of a multipart body the route also takes."""
    def mark(view):
        view.openapi = {"summary": summary, "doc": view.__doc__, "request": request, "responses": responses,
                        "query": query, "idempotent": idempotent, "public": public, "form": form}
        return view
    return mark


def _documented_routes(app):
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        meta = getattr(app.view_functions[rule.endpoint], "openapi", None)
        if meta is not None:
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                yield _ARG.sub(r"{\1}", rule.rule), method.lower(), meta, list(rule.arguments)


def document(app):
    """The OpenAPI 3.1 document of every documented route of `app`."""
    routes = list(_documented_routes(app))
    models = {ErrorBody}
    for *_, meta, _args in routes:
        models.update(m for m in meta["responses"].values() if m is not None and not isinstance(m, str))
        models.update(m for m in (meta["request"], meta["form"]) if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    # Requests as they are validated, answers as they are serialised.
    keys, schemas = models_json_schema([(m, "serialization" if m not in _requests(routes) else "validation")
                                        for m in ordered], ref_template=REF)
    refs = {model: keys[(model, mode)]["$ref"] for (model, mode) in keys}
    paths = {}
    for path, method, meta, args in routes:
        paths.setdefault(path, {})[method] = _operation(path, method, meta, args, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "AIAPI Studio API", "version": "1.0.0", "description": DESCRIPTION},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": schemas.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "An API key from the Account page."}}},
        "security": [{"bearer": []}],
    }


def _requests(routes):
    return {m for *_, meta, _args in routes for m in (meta["request"], meta["form"]) if m is not None}


def _json(ref):
    return {"application/json": {"schema": {"$ref": ref}}}


def _operation(path, method, meta, args, refs):
    doc = (meta["doc"] or "").strip()
    operation = {"summary": meta["summary"], "operationId": f"{method}_{path}".replace("/", "_").strip("_")
                 .replace("{", "").replace("}", ""), "tags": [_tag(path)], "responses": {}}
    if doc:
        operation["description"] = doc
    parameters = _parameters(meta, args)
    if parameters:
        operation["parameters"] = parameters
    if meta["request"] is not None:
        operation["requestBody"] = {"required": True, "content": _json(refs[meta["request"]])}
    if meta["form"] is not None:
        operation["requestBody"]["content"]["multipart/form-data"] = {"schema": {"$ref": refs[meta["form"]]}}
    for status, model in meta["responses"].items():
        operation["responses"][str(status)] = _response(status, model, meta, refs)
    operation["responses"]["default"] = {"description": "An error.", "content": _json(refs[ErrorBody])}
    if meta["public"]:
        operation["security"] = []
    return operation


def _parameters(meta, args):
    """Path arguments, the query model's fields and, for idempotent creates, the Idempotency-Key header."""
    parameters = [{"name": arg, "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}}
                  for arg in args]
    if meta["query"] is not None:
        schema = meta["query"].model_json_schema()
        for name, prop in schema["properties"].items():
            prop = next((s for s in prop.get("anyOf", []) if s.get("type") != "null"), prop) | {
                k: v for k, v in prop.items() if k == "description"}
            parameters.append({"name": name, "in": "query", "required": False, "schema": prop})
    if meta["idempotent"]:
        parameters.append({"name": "Idempotency-Key", "in": "header", "required": False,
                           "description": "Makes the create safe to retry for 24 hours (see the introduction).",
                           "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                                      "pattern": "^[\\x21-\\x7e]+$"}})
    return parameters


def _response(status, model, meta, refs):
    if isinstance(model, str):      # a file of this media type (batch results and reports)
        return {"description": "A file.", "content": {model: {"schema": {"type": "string", "format": "binary"}}}}
    answer = {"description": model.__doc__.strip().splitlines()[0] if model and model.__doc__ else
              ("No content." if model is None else model.__name__)}
    if model is not None:
        answer["content"] = _json(refs[model])
    if meta["idempotent"] and 200 <= status < 300:
        answer["headers"] = {"Idempotent-Replayed": {
            "description": "Sent when this is the remembered answer to an earlier request with the same key.",
            "schema": {"type": "string", "enum": ["true"]}}}
    return answer


def _tag(path):
    if path.startswith("/api/v1/tasks"):
        return "tasks"
    if path.startswith("/api/v1/batches"):
        return "batches"
    return "create" if path.endswith("/generate") else "studio"


@bp.get("/openapi.json")
@public
def openapi_json():
    if "openapi" not in current_app.extensions:
        current_app.extensions["openapi"] = document(current_app)     # the routes are fixed once the app is built
    return current_app.extensions["openapi"]


@bp.get("/docs")
@public
def docs():
    """Swagger UI over /openapi.json."""
    return render_template("docs.html")
