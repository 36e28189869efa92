"""Task input pictures at signed, expiring, read-only URLs, for providers that fetch them themselves.

A self-hosted Wan server (providers/wan_server.py, PROVIDERS.md §9.5) takes the first frame as a
URL, not as bytes, so the studio has to serve that one picture to a caller without a session.
`signed_url(config, task_id, role)` makes `PUBLIC_BASE_URL/signed-input/<token>`: the token is the
task id, the input's role and an expiry, signed with SECRET_KEY (itsdangerous, its own salt, so a
token of any other part of the studio is not one here). The view opens exactly the file the task
record lists for that role, read-only, never through a symlink; an expired, forged or altered
token, a task or role that is not there, or any other path is the same 404. Nothing else of the
studio is reachable through it: it serves no listing, no other task's file and no output.
"""

import os
import stat
import time

from flask import Blueprint, current_app, send_file
from itsdangerous import BadSignature, URLSafeSerializer

import access
import fileio
from errors import N_, NotFound

bp = Blueprint("signed_inputs", __name__)

SALT = "signed-input-v1"
LIFETIME_SECONDS = 3600         # long enough for a queued server to fetch it, short enough to leak little
ROLES = ("first", "tail", "reference")


def now():
    """The clock tokens expire by; tests move it."""
    return time.time()


def _serializer(secret_key):
    return URLSafeSerializer(secret_key, salt=SALT)


def signed_url(config, task_id, role, lifetime=LIFETIME_SECONDS):
    """The public URL of a task's input picture, valid for `lifetime` seconds."""
    token = _serializer(config["SECRET_KEY"]).dumps({"t": task_id, "r": role, "e": int(now() + lifetime)})
    return f"{config['PUBLIC_BASE_URL'].rstrip('/')}/signed-input/{token}"


def _claims(token):
    try:
        claims = _serializer(current_app.config["SECRET_KEY"]).loads(token)
    except BadSignature:
        raise NotFound(N_("No such file.")) from None
    if not (isinstance(claims, dict) and isinstance(claims.get("t"), str) and claims.get("r") in ROLES
            and isinstance(claims.get("e"), int) and claims["e"] > now()):
        raise NotFound(N_("No such file."))
    return claims["t"], claims["r"]


@bp.get("/signed-input/<token>")
@access.public
def signed_input(token):
    """The one input picture a valid token names; 404 for everything else."""
    task_id, role = _claims(token)
    task = current_app.extensions["task_store"].get(task_id)
    entry = next((item for item in (task or {}).get("inputs") or [] if item.get("role") == role), None)
    if entry is None:
        raise NotFound(N_("No such file."))
    data_dir = os.path.realpath(fileio.media_root(current_app.config["DATA_DIR"]))
    path = os.path.join(data_dir, entry["path"])
    if os.path.realpath(os.path.dirname(path)) != os.path.join(data_dir, "inputs", task_id):
        raise NotFound(N_("No such file."))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        raise NotFound(N_("No such file.")) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotFound(N_("No such file."))
    mimetype = "image/png" if path.endswith(".png") else "image/jpeg"
    response = send_file(os.fdopen(fd, "rb"), mimetype=mimetype, conditional=False, etag=False)
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["X-Robots-Tag"] = "noindex"
    return response
