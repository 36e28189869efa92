"""Who may use the studio: login always on, API keys, CSRF, rate limits and security headers.

Every route needs a signed-in session or `Authorization: Bearer <key>`, except the login pages,
static assets and health checks (`PUBLIC_ENDPOINTS`). A session carries a CSRF token that every
state-changing request must send back (jQuery's `X-CSRFToken` header, a hidden field on forms);
Bearer requests are not sent by browsers on their own, so they need none. On first start the
admin account is made with `ADMIN_PASSWORD`, or with a random password printed once to the
console together with a one-time login link.
"""

import sys
from urllib.parse import urlsplit

from flask import Blueprint, current_app, g, jsonify, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_wtf.csrf import CSRFError, CSRFProtect

from accounts import ADMIN, Accounts
from errors import Forbidden, LoginRequired, NotFound, RateLimited, ValidationError
from rate_limit import RateLimiter

bp = Blueprint("auth", __name__)
csrf = CSRFProtect()

PUBLIC_ENDPOINTS = {"auth.login", "auth.login_link", "static", "health.healthz", "health.readyz"}
LOGIN_LIMIT = (10, 15 * 60)         # failed attempts per 15 minutes, per address and per user name
GENERATE_LIMIT = (30, 60)           # new tasks per minute and user
GENERATING_ENDPOINTS = {"video_extend.generate", "image_generate.generate_image", "task_query.retry_task"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "media-src 'self' blob:; connect-src 'self'; font-src 'self' data:; object-src 'none'; "
       "base-uri 'self'; form-action 'self'; frame-ancestors 'none'")


def init_app(app):
    """Wire authentication into the app and make sure an admin exists."""
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_SECURE=bool(app.config.get("SESSION_COOKIE_SECURE")),
                      WTF_CSRF_CHECK_DEFAULT=False, WTF_CSRF_TIME_LIMIT=None,
                      PERMANENT_SESSION_LIFETIME=14 * 24 * 3600)
    accounts = Accounts(app.config["DATA_DIR"], app.config.get("API_KEYS"))
    app.extensions["accounts"] = accounts
    app.extensions["rate_limiter"] = RateLimiter(app.config["DATA_DIR"])
    generated = accounts.ensure_admin(app.config.get("ADMIN_PASSWORD"))
    if generated:
        _announce_admin(app, accounts, generated)
    csrf.init_app(app)
    app.before_request(authenticate)
    app.after_request(security_headers)
    app.register_error_handler(CSRFError, lambda exc: (jsonify({"error": {
        "code": "csrf_failed",
        "message": "The security token of this page is missing or expired: reload the page and try again."}}),
        400))
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


def _wants_json():
    return (request.path.startswith(("/api/", "/media/", "/generate")) or request.is_json
            or request.accept_mimetypes.best == "application/json")


def authenticate():
    """Identify the caller; refuse anonymous requests outside PUBLIC_ENDPOINTS; enforce CSRF."""
    accounts = current_app.extensions["accounts"]
    g.user, g.via_key = None, False
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        g.user = accounts.user_for_key(header[len("Bearer "):].strip())
        if g.user is None:
            raise LoginRequired("The API key is not valid.", code="invalid_api_key")
        g.via_key = True
    elif session.get("uid"):
        user = accounts.user(session["uid"])
        # A session ends when its user is gone or changed password.
        if user and session.get("pw") == user["password_hash"][-12:]:
            g.user = user
        else:
            session.clear()
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if g.user is None:
        if _wants_json():
            raise LoginRequired("Sign in, or send 'Authorization: Bearer <API key>'.")
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    if not g.via_key and request.method not in ("GET", "HEAD", "OPTIONS"):
        csrf.protect()
    if request.endpoint in GENERATING_ENDPOINTS:
        wait = current_app.extensions["rate_limiter"].hit(f"generate:{g.user['id']}", *GENERATE_LIMIT)
        if wait:
            raise RateLimited(f"Too many new tasks in a minute; try again in {wait} s.", wait)
    return None


def security_headers(response):
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.path.startswith("/api/"):
        response.headers["Cache-Control"] = "no-store"
    return response


def _rate_limited(exc):
    if _wants_json():
        response = jsonify(exc.to_dict())
    else:
        response = current_app.make_response(render_template("login.html", error=exc.message, next_url=""))
    response.status_code = exc.status
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _sign_in(user):
    session.clear()
    session.permanent = True
    session["uid"] = user["id"]
    session["pw"] = user["password_hash"][-12:]


def _safe_next(target):
    """Only a path on this site: never an open redirect elsewhere."""
    parts = urlsplit(target or "")
    if parts.scheme or parts.netloc or not (target or "").startswith("/") or target.startswith("//"):
        return url_for("video_extend.page")
    return target


# ---- pages

@bp.route("/login", methods=["GET", "POST"])
def login():
    next_url = request.values.get("next", "")
    if request.method == "GET":
        return render_template("login.html", next_url=next_url, error=None)
    csrf.protect()
    username = (request.form.get("username") or "").strip().lower()
    limiter = current_app.extensions["rate_limiter"]
    # Failed attempts count, per address and per user name: a guesser is stopped either way.
    keys = (f"login-ip:{request.remote_addr}", f"login-user:{username}")
    for key in keys:
        wait = limiter.hit(key, *LOGIN_LIMIT, record=False)
        if wait:
            raise RateLimited(_("Too many sign-in attempts. Try again in %(seconds)d s.", seconds=wait), wait)
    user = current_app.extensions["accounts"].check_password(username, request.form.get("password"))
    if user is None:
        for key in keys:
            limiter.hit(key, *LOGIN_LIMIT)
        return render_template("login.html", next_url=next_url,
                               error=_("Wrong user name or password.")), 401
    limiter.clear(f"login-user:{username}")
    _sign_in(user)
    return redirect(_safe_next(next_url))


@bp.get("/login/<token>")
def login_link(token):
    user = current_app.extensions["accounts"].redeem_login_link(token)
    if user is None:
        return render_template("login.html", next_url="",
                               error=_("This login link was already used or has expired.")), 403
    _sign_in(user)
    return redirect(url_for("video_extend.page"))


@bp.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("auth.login"))


@bp.get("/account")
def account_page():
    return render_template("account.html", active_page="account")


# ---- JSON: the caller, API keys, users

def _admin_only():
    if g.user["role"] != "admin":
        raise Forbidden("Only the admin can manage users.")


@bp.get("/api/me")
def me():
    return {key: g.user[key] for key in ("id", "username", "role", "quota")}


@bp.get("/api/keys")
def list_keys():
    return {"keys": current_app.extensions["accounts"].api_keys(g.user["id"])}


@bp.post("/api/keys")
def create_key():
    body = request.get_json(silent=True) or {}
    key, record = current_app.extensions["accounts"].create_api_key(g.user["id"], body.get("name"))
    return {"key": key, "record": record}, 201


@bp.delete("/api/keys/<key_id>")
def delete_key(key_id):
    current_app.extensions["accounts"].delete_api_key(g.user["id"], key_id)
    return "", 204


@bp.post("/api/account/password")
def change_password():
    body = request.get_json(silent=True) or {}
    accounts = current_app.extensions["accounts"]
    if accounts.check_password(g.user["id"], body.get("current_password")) is None:
        raise ValidationError("The current password is wrong.", code="wrong_password", field="current_password")
    user = accounts.set_password(g.user["id"], body.get("new_password"))
    if not g.via_key:
        session["pw"] = user["password_hash"][-12:]     # other sessions of this user end; this one stays
    return {"ok": True}


@bp.get("/api/users")
def list_users():
    _admin_only()
    return {"users": [{k: v for k, v in u.items() if k != "password_hash"}
                      for u in current_app.extensions["accounts"].users()]}


@bp.post("/api/users")
def create_user():
    _admin_only()
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ValidationError("The request body must be a JSON object.", code="invalid_json")
    quotas = {}
    for field in ("images_per_day", "videos_per_day"):
        value = body.get(field)
        if value not in (None, "") and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValidationError(f"{field} must be a whole number of 0 or more, or empty for no limit.",
                                  code="invalid_field", field=field)
        quotas[field] = None if value in (None, "") else value
    user = current_app.extensions["accounts"].create_user(body.get("username"), body.get("password"), **quotas)
    return user, 201


@bp.delete("/api/users/<user_id>")
def delete_user(user_id):
    _admin_only()
    if user_id == ADMIN:
        raise ValidationError("The admin account cannot be deleted.", code="invalid_field", field="username")
    if not current_app.extensions["accounts"].delete_user(user_id):
        raise NotFound(f"No user '{user_id}'.")
    return "", 204
