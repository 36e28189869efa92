"""Who may use the studio: login always on, sessions, API keys with scopes, CSRF, rate limits.

Every route needs a signed-in session or `Authorization: Bearer <key>`, except the login pages,
static assets and health checks, which ignore any credentials sent to them. A session is a random
id kept server-side (accounts.py) and carried in the signed cookie; signing out or changing the
password ends it for real. A session carries a CSRF token that every state-changing request must
send back (jQuery's `X-CSRFToken` header, a hidden field on forms); Bearer requests are not sent
by browsers on their own, so they need none.

API keys have scopes: `read` for GET and HEAD, `generate` for every other method, `admin` for
the views marked `access.admin_only`. Views marked `access.session_only` (making keys, changing the password)
refuse keys altogether, so a leaked key can never mint a key that outlives it.

Sign-in attempts are slowed per (address, user name), per user name and per address, checked and
recorded in one step (rate_limit.py). A browser that has signed in before carries a signed
device cookie and is then slowed on its own, so a guesser elsewhere cannot lock the owner out.
`TRUSTED_PROXIES` (the number of reverse proxies in front, default 0) decides whether
X-Forwarded-For names the client.
"""

import secrets
import sys
from typing import Literal
from urllib.parse import urlsplit

from flask import Blueprint, current_app, g, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_wtf.csrf import CSRFError, CSRFProtect
from itsdangerous import BadSignature, URLSafeSerializer
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from werkzeug.middleware.proxy_fix import ProxyFix

import access
from access import admin_only, public, session_only
from accounts import ADMIN, LIMITS, SCOPES, open_accounts
from error_pages import render as render_error
from error_pages import wants_json
from errors import N_, Forbidden, LoginRequired, NotFound, RateLimited, ValidationError
from i18n import translate
from ledger import Ledger
from rate_limit import RateLimiter
from validation import parse_body

bp = Blueprint("auth", __name__)
csrf = CSRFProtect()

PUBLIC_ENDPOINTS = {"static"}      # Flask's own view; every other view says so with access.public
LOGIN_FREE_TRIES = {"pair": 5, "user": 5, "address": 30, "device": 5}
RATE_LIMITS = {"generate": (30, 60)}        # calls per window (seconds), per user
DEVICE_COOKIE = "studio_device"
DEVICE_MAX_AGE = 365 * 24 * 3600
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "media-src 'self' blob:; connect-src 'self'; font-src 'self' data:; object-src 'none'; "
       "base-uri 'self'; form-action 'self'; frame-ancestors 'none'")


def _view():
    return current_app.view_functions.get(request.endpoint)


def _rule():
    if request.endpoint in PUBLIC_ENDPOINTS:
        return "public"
    return getattr(_view(), "access", "user")


# ---- wiring

def init_app(app):
    """Wire authentication into the app and make sure an admin exists."""
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_SECURE=bool(app.config.get("SESSION_COOKIE_SECURE")),
                      WTF_CSRF_CHECK_DEFAULT=False, WTF_CSRF_TIME_LIMIT=None,
                      PERMANENT_SESSION_LIFETIME=14 * 24 * 3600)
    proxies = int(app.config.get("TRUSTED_PROXIES") or 0)
    if proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=0)
    # In PostgreSQL when the tasks are (DATABASE_URL), else accounts.json in DATA_DIR.
    accounts = open_accounts(app.extensions["task_store"], app.config.get("API_KEYS"))
    app.extensions["accounts"] = accounts
    app.extensions["rate_limiter"] = RateLimiter(app.config["DATA_DIR"], app.config["SECRET_KEY"])
    app.extensions["ledger"] = Ledger(app.config["DATA_DIR"])
    reset = str(app.config.get("ADMIN_PASSWORD_RESET", "")).lower() in ("1", "true", "yes")
    generated = accounts.ensure_admin(app.config.get("ADMIN_PASSWORD"), reset=reset)
    if generated:
        _announce_admin(app, accounts, generated)
    csrf.init_app(app)
    app.before_request(authenticate)
    app.after_request(security_headers)
    app.register_error_handler(CSRFError, _csrf_failed)
    app.register_error_handler(RateLimited, _rate_limited)
    app.register_blueprint(bp)


def _announce_admin(app, accounts, password):
    """Print the first admin password and a one-time login link once, on the console only."""
    token = accounts.create_login_link(ADMIN)
    host = app.config["APP_HOST"] if app.config["APP_HOST"] not in ("0.0.0.0", "::") else "127.0.0.1"
    print("\n" + "=" * 72 + "\n  AIAPI Studio: an admin account was created.\n"
          f"  user: admin   password: {password}\n"
          f"  one-time login link (15 min): http://{host}:{app.config['APP_PORT']}/login/{token}\n"
          "  Set ADMIN_PASSWORD to choose the password yourself. This is shown only once.\n" + "=" * 72,
          file=sys.stderr, flush=True)


def authenticate():
    """Identify the caller; refuse what the view's rule does not allow; enforce CSRF."""
    rule = _rule()
    _identify(use_key=rule != "public")
    if rule == "public":
        return None
    if g.user is None:
        if wants_json():
            raise LoginRequired(N_("Sign in, or send 'Authorization: Bearer <API key>'."))
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    _check_rule(rule)
    if not g.via_key and request.method not in ("GET", "HEAD", "OPTIONS"):
        csrf.protect()
    _count_rate_limit()
    return None


def _identify(use_key):
    """g.user from the API key (unless `use_key` is off: public views ignore credentials) or the session."""
    accounts = current_app.extensions["accounts"]
    g.user, g.via_key, g.scopes = None, False, ()
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer ") and use_key:
        g.user, g.scopes = accounts.user_for_key(header[len("Bearer "):].strip())
        if g.user is None:
            raise LoginRequired(N_("The API key is not valid."), code="invalid_api_key")
        g.via_key = True
    elif session.get("sid"):
        g.user = accounts.session_user(session["sid"])
        if g.user is None:
            session.clear()         # signed out elsewhere, password changed, or user removed


def _count_rate_limit():
    limit = getattr(_view(), "rate_limit", None)
    if limit:
        wait = current_app.extensions["rate_limiter"].hit(f"{limit}:{g.user['id']}", *RATE_LIMITS[limit])
        if wait:
            raise RateLimited(N_("Too many new tasks in a minute; try again in %(seconds)d s."), wait,
                              params={"seconds": wait})


def _check_rule(rule):
    if rule == "admin" and (g.user["role"] != "admin" or (g.via_key and "admin" not in g.scopes)):
        raise Forbidden(N_("Only the admin can do this.") if g.user["role"] != "admin" else
                        N_("This API key lacks the '%(scope)s' scope."), code="forbidden", params={"scope": "admin"})
    if rule == "session" and g.via_key:
        raise Forbidden(N_("API keys cannot do this: sign in on the Account page."), code="session_required")
    if g.via_key:
        needed = "read" if request.method in ("GET", "HEAD", "OPTIONS") else "generate"
        if needed not in g.scopes:
            raise Forbidden(N_("This API key lacks the '%(scope)s' scope."), code="insufficient_scope",
                            params={"scope": needed})


def security_headers(response):
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.path.startswith("/api/"):
        response.headers["Cache-Control"] = "no-store"
    return response


def _drain_body():
    """Read what the client is still sending, so an early answer reaches it instead of a reset."""
    try:
        while request.stream.read(1 << 16):
            pass
    except Exception:           # noqa: BLE001 - the client went away; nothing to answer then
        pass


def _sign_in_form():
    """On the sign-in form its errors show on the form again (error_pages.render's `page`), else None."""
    if request.endpoint != "auth.login":
        return None
    return lambda error: render_template("login.html", error=error.localized(translate),
                                         next_url=request.values.get("next", ""))


def _csrf_failed(exc):
    return render_error(ValidationError(
        N_("The security token of this page is missing or expired: reload the page and try again."),
        code="csrf_failed"), page=_sign_in_form())


def _rate_limited(exc):
    _drain_body()           # met before the body was read; the renderer adds Retry-After
    return render_error(exc, page=_sign_in_form())


def _sign_in(user):
    session.clear()
    session.permanent = True
    session["sid"] = current_app.extensions["accounts"].create_session(user["id"])


def _safe_next(target):
    """Only a path on this site: never an open redirect elsewhere."""
    parts = urlsplit(target or "")
    if parts.scheme or parts.netloc or not (target or "").startswith("/") or target.startswith(("//", "/\\")):
        return url_for("video_extend.page")
    return target


def _device_serializer():
    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt="studio-device")


def _known_device():
    """(device id, user id) from a valid device cookie, else (None, None)."""
    try:
        value = _device_serializer().loads(request.cookies.get(DEVICE_COOKIE, ""))
        return str(value["d"]), str(value["u"])
    except (BadSignature, KeyError, TypeError, ValueError):
        return None, None


def _login_keys(username):
    """The sign-in counters this attempt counts against, with their free tries."""
    device, device_user = _known_device()
    known = current_app.extensions["accounts"].user_by_name(username)
    if device and known and device_user == known["id"]:
        # A browser this user signed in with before: whatever a guesser elsewhere did, it is
        # slowed only by its own failures.
        return {f"login-device:{device}": LOGIN_FREE_TRIES["device"]}
    address = request.remote_addr or "?"
    return {f"login-pair:{address}:{username}": LOGIN_FREE_TRIES["pair"],
            f"login-address:{address}": LOGIN_FREE_TRIES["address"],
            f"login-user:{username}": LOGIN_FREE_TRIES["user"]}


# ---- pages

@bp.route("/login", methods=["GET", "POST"])
@public
def login():
    next_url = request.values.get("next", "")
    if request.method == "GET":
        if g.user:
            return redirect(_safe_next(next_url))
        return render_template("login.html", next_url=next_url, error=None)
    csrf.protect()
    username = (request.form.get("username") or "").strip().lower()[:64]
    limiter = current_app.extensions["rate_limiter"]
    keys = _login_keys(username)
    wait = limiter.attempt(keys)
    if wait:
        raise RateLimited(N_("Too many sign-in attempts. Try again in %(seconds)d s."), wait, params={"seconds": wait})
    user = current_app.extensions["accounts"].check_password(username, request.form.get("password"))
    if user is None:
        return render_template("login.html", next_url=next_url,
                               error=_("Wrong user name or password.")), 401
    limiter.forgive(keys)
    _sign_in(user)
    response = redirect(_safe_next(next_url))
    device, device_user = _known_device()
    if device is None or device_user != user["id"]:
        cookie = _device_serializer().dumps({"d": secrets.token_urlsafe(12), "u": user["id"]})
        response.set_cookie(DEVICE_COOKIE, cookie, max_age=DEVICE_MAX_AGE, httponly=True, samesite="Lax",
                            secure=current_app.config["SESSION_COOKIE_SECURE"])
    return response


@bp.get("/login/<token>")
@public
def login_link(token):
    user = current_app.extensions["accounts"].redeem_login_link(token)
    if user is None:
        return render_template("login.html", next_url="",
                               error=_("This login link was already used or has expired.")), 403
    _sign_in(user)
    return redirect(url_for("video_extend.page"))


@bp.post("/logout")
@session_only
def logout():
    current_app.extensions["accounts"].end_session(session.get("sid"))
    session.clear()
    return redirect(url_for("auth.login"))


@bp.get("/account")
def account_page():
    return render_template("account.html", active_page="account", usage=access.usage(g.user))


# ---- JSON: the caller, API keys, users

class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr | None = Field(None, max_length=60)
    scopes: list[Literal[SCOPES]] | None = Field(None, min_length=1, max_length=3)
    expires_in_days: StrictInt | None = Field(None, ge=1, le=3650)


class PasswordRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: StrictStr = Field(max_length=1024)
    new_password: StrictStr = Field(max_length=1024)
    revoke_keys: Literal["all"] | list[StrictStr] | None = None


Limit = StrictInt | None


class LimitsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images_per_day: Limit = Field(None, ge=0, le=1_000_000)
    videos_per_day: Limit = Field(None, ge=0, le=1_000_000)
    max_resolution: Limit = Field(None, ge=64, le=16384)
    max_duration: Limit = Field(None, ge=1, le=3600)
    max_in_flight: Limit = Field(None, ge=1, le=10_000)


class UserRequest(LimitsRequest):
    username: StrictStr = Field(max_length=64)
    password: StrictStr = Field(max_length=1024)


@bp.get("/api/me")
def me():
    user = g.user
    return {"id": user["id"], "username": user["username"], "role": user["role"], "limits": user["limits"],
            "usage": access.usage(user), "scopes": list(g.scopes) if g.via_key else None}


@bp.get("/api/keys")
@session_only
def list_keys():
    return {"keys": current_app.extensions["accounts"].api_keys(g.user["id"])}


@bp.post("/api/keys")
@session_only
def create_key():
    body = parse_body(KeyRequest)
    key, record = current_app.extensions["accounts"].create_api_key(
        g.user["id"], body.name, scopes=body.scopes or ("generate", "read"), expires_in_days=body.expires_in_days)
    return {"key": key, "record": record}, 201


@bp.delete("/api/keys/<key_id>")
@session_only
def delete_key(key_id):
    current_app.extensions["accounts"].delete_api_key(g.user["id"], key_id)
    return "", 204


@bp.post("/api/account/password")
@session_only
def change_password():
    body = parse_body(PasswordRequest)
    accounts = current_app.extensions["accounts"]
    if accounts.check_password(g.user["username"], body.current_password) is None:
        raise ValidationError(N_("The current password is wrong."), code="wrong_password", field="current_password")
    accounts.set_password(g.user["id"], body.new_password, keep_session=session.get("sid"),
                          revoke_keys=body.revoke_keys or ())
    return {"ok": True}


@bp.get("/api/users")
@admin_only
def list_users():
    accounts = current_app.extensions["accounts"]
    secret = ("password_hash", "webhook_secret")
    return {"users": [{**{k: v for k, v in u.items() if k not in secret}, "usage": access.usage(u)}
                      for u in accounts.users()]}


@bp.post("/api/users")
@admin_only
def create_user():
    body = parse_body(UserRequest)
    limits = {name: getattr(body, name) for name in LIMITS}
    user = current_app.extensions["accounts"].create_user(body.username, body.password, **limits)
    return user, 201


@bp.patch("/api/users/<user_id>")
@admin_only
def update_user(user_id):
    """Change a user's limits: only the fields sent change; null removes a limit."""
    body = parse_body(LimitsRequest)
    return current_app.extensions["accounts"].set_limits(user_id, body.model_dump(exclude_unset=True))


@bp.delete("/api/users/<user_id>")
@admin_only
def delete_user(user_id):
    if user_id == ADMIN:
        raise ValidationError(N_("The admin account cannot be deleted."), code="invalid_field", field="username")
    if not current_app.extensions["accounts"].delete_user(user_id):
        raise NotFound(N_("No user '%(id)s'."), params={"id": user_id})
    return "", 204
