"""How a failure is answered: one renderer for every error, JSON for API clients, a page for browsers.

Everything that goes wrong in a request ends in `render(exc)`: an `AppError` as it is, a werkzeug
HTTPException (404, 405, 413 ...) or an unexpected exception turned into one first, so the JSON
body `{"error": {"code", "message", "field"}}` and the HTML page (`templates/errors/<status>.html`,
else `errors/error.html`, in the studio's layout) say the same thing. Whether the client gets JSON
is decided once, in `wants_json`; auth.py asks it too (a 401 or a redirect to the sign-in page).
Messages are translated here, into the request's language (i18n.py), from the English template
and parameters each error carries (errors.py). Unexpected exceptions are logged with their
traceback and answered with a generic 500 that never carries the exception's text (which may
hold a provider's body or a key).

This is a module of its own rather than part of errors.py because it needs Flask (the request,
templates, Babel), while errors.py is imported by low-level modules (the store, the providers)
that must not depend on a web framework.
"""

import logging

from flask import jsonify, make_response, render_template, request
from markupsafe import escape
from werkzeug.exceptions import HTTPException

from errors import N_, AppError, InsufficientStorage, RateLimited
from i18n import translate

log = logging.getLogger(__name__)

# Paths only scripts and API clients call: they always get JSON, whatever they accept.
JSON_PATHS = ("/api/", "/media/", "/generate", "/video/", "/metrics", "/openapi.json")


def wants_json():
    """Whether this request is answered in JSON: an API path, a JSON body, or an Accept preferring
    JSON; a browser navigating to a page (Accept: text/html, or no Accept at all) gets HTML."""
    return (request.path.startswith(JSON_PATHS) or request.is_json
            or request.accept_mimetypes.best_match(("text/html", "application/json")) == "application/json")


def _from_http(exc):
    """The AppError for a werkzeug HTTPException, with our code and, where we have one, our message."""
    known = {
        400: ("bad_request", N_("The request could not be understood.")),
        404: ("not_found", N_("There is nothing at this address. Check the link, or go back to the studio.")),
        405: ("method_not_allowed", N_("This address does not accept %(method)s requests.")),
        413: ("payload_too_large",
              N_("The request is larger than the studio accepts (two pictures of 10 MB at most).")),
        429: ("rate_limited", N_("Too many requests; wait a moment and try again.")),
    }
    code, message = known.get(exc.code, ((exc.name or "error").lower().replace(" ", "_"),
                                         N_("The request could not be answered.")))
    params = {"method": request.method} if exc.code == 405 else None
    return AppError(message, code=code, status=exc.code, params=params)


def as_app_error(exc):
    """`exc` as the AppError the client is told about; an unexpected exception is a generic 500."""
    if isinstance(exc, AppError):
        return exc
    if isinstance(exc, HTTPException):
        return _from_http(exc)
    # A full disk is the operator's to fix, not a bug: say so (507) whichever write met it.
    return InsufficientStorage.from_os_error(exc) or AppError(
        N_("Something went wrong on the server; it has been logged."), code="internal_error", status=500)


def _page(error, page):
    """The HTML for `error`: the view's own page when it shows its errors itself, else the error page."""
    try:
        if page is not None:
            return page(error)
        return render_template([f"errors/{error.status}.html", "errors/error.html"], status=error.status,
                               code=error.code, message=error.localized(translate))
    except Exception:          # noqa: BLE001 - the answer must go out even if the layout cannot render
        log.exception("the error page for a %s could not be rendered", error.status)
        return f"<!doctype html><title>{error.status}</title><p>{escape(error.message)}</p>"


def render(exc, page=None):
    """The response for `exc`: JSON or an HTML page, with the error's status and headers.

    `page(error)`, when given, renders the HTML itself (the sign-in form shows its errors on the
    form); JSON clients get the usual body either way.
    """
    if isinstance(exc, HTTPException) and exc.response is not None:
        return exc.response             # abort(response): the view already made the answer
    error = as_app_error(exc)
    if error.status >= 500 and not isinstance(exc, AppError):
        log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    response = jsonify(error.to_dict(translate)) if wants_json() else make_response(_page(error, page))
    response.status_code = error.status
    if isinstance(exc, HTTPException):
        # Keep what the status needs besides the body: a 405's Allow, a 401's WWW-Authenticate.
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
    if isinstance(error, RateLimited):
        response.headers["Retry-After"] = str(error.retry_after)
    return response


def init_app(app):
    """Answer every error through `render`: the studio's errors, HTTP errors and unexpected ones."""
    for kind in (AppError, HTTPException, Exception):
        app.register_error_handler(kind, render)
