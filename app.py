"""The studio's application factory: configuration, logging, error handlers, blueprints, scheduler.

Configuration comes from defaults, then `.env`, then the environment, then the `config` mapping
given to `create_app` (tests). `python app.py` serves the studio on APP_HOST:APP_PORT
(127.0.0.1:5000) with the local engine and the scheduler in-process; production runs
`gunicorn "app:create_app()"`. Importing this module starts nothing. The pipeline (scheduler.py)
starts with the app unless TESTING and stops before the process exits: Ctrl-C and SIGTERM stop
`python app.py` the same graceful way, and gunicorn stops it from its worker_exit hook.
"""

import logging
import os
import re
import secrets
from pathlib import Path

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from errors import AppError

log = logging.getLogger(__name__)

DEFAULTS = {
    "APP_HOST": "127.0.0.1",
    "APP_PORT": 5000,
    "DATA_DIR": "data",
    "BACKUP_DIR": "backups",
    "POLL_INTERVAL_SECONDS": 5,
    "BACKUP_INTERVAL_MINUTES": 60,
    "BACKUP_KEEP": 24,
    "LOCAL_WORKERS": min(2, os.cpu_count() or 1),
    "HTTP_TIMEOUT_SECONDS": 30,     # read timeout of provider calls
    "READY_MIN_FREE_MB": 500,       # /readyz fails below this much free disk
    # Two pictures of at most 10 MB each, Base64-encoded (x4/3), plus the rest of the JSON.
    "MAX_CONTENT_LENGTH": 30 * 1024 * 1024,
    "TESTING": False,
}

# Settings read from the environment (and .env). Provider keys are secrets: never logged.
ENV_NAMES = (
    "APP_HOST", "APP_PORT", "DATA_DIR", "BACKUP_DIR", "SECRET_KEY", "POLL_INTERVAL_SECONDS",
    "BACKUP_INTERVAL_MINUTES", "BACKUP_KEEP", "ADMIN_PASSWORD", "API_KEYS", "LOCAL_WORKERS", "HTTP_TIMEOUT_SECONDS",
    "READY_MIN_FREE_MB", "SESSION_COOKIE_SECURE",
    "KLING_ACCESS_KEY", "KLING_SECRET_KEY", "KLING_API_BASE", "AI302_API_KEY", "AI302_API_BASE",
    "DASHSCOPE_API_KEY", "DASHSCOPE_API_BASE", "LIBLIB_ACCESS_KEY", "LIBLIB_SECRET_KEY", "LIBLIB_API_BASE",
)
# Per-provider tuning: <PROVIDER>_MAX_CONCURRENCY and <PROVIDER>_MAX_RUNNING_MINUTES.
ENV_NAMES += tuple(f"{provider}_{setting}" for provider in ("LOCAL", "KLING", "AI302", "DASHSCOPE", "LIBLIB")
                   for setting in ("MAX_CONCURRENCY", "MAX_RUNNING_MINUTES"))
INT_SETTINGS = ("APP_PORT", "BACKUP_INTERVAL_MINUTES", "BACKUP_KEEP", "LOCAL_WORKERS", "READY_MIN_FREE_MB")


def create_app(config=None):
    """Build the studio app; `config` overrides everything (tests pass TESTING and DATA_DIR)."""
    from dotenv import dotenv_values

    app = Flask(__name__)
    app.config.update(DEFAULTS)
    env_file = Path(os.environ.get("DOTENV_PATH", ".env"))
    if env_file.is_file():
        app.config.update({k: v for k, v in dotenv_values(env_file).items() if k in ENV_NAMES and v})
    app.config.update({k: os.environ[k] for k in ENV_NAMES if os.environ.get(k)})
    app.config.update(config or {})
    for name in INT_SETTINGS:
        app.config[name] = int(app.config[name])
    for name in ("POLL_INTERVAL_SECONDS", "HTTP_TIMEOUT_SECONDS"):
        app.config[name] = float(app.config[name])
    # Behind HTTPS, set SESSION_COOKIE_SECURE=1 so the session cookie never travels in clear.
    secure = str(app.config.get("SESSION_COOKIE_SECURE", "")).lower()
    app.config["SESSION_COOKIE_SECURE"] = secure in ("1", "true", "yes")

    data_dir = Path(app.config["DATA_DIR"]).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    app.config["DATA_DIR"] = str(data_dir)
    app.config["SECRET_KEY"] = app.config.get("SECRET_KEY") or _kept_secret_key(data_dir)
    _configure_logging(app)

    import auth
    import health
    import i18n
    import image_generate
    import task_query
    import video_extend
    from providers import build_providers

    app.config["BACKUP_DIR"] = str(Path(app.config["BACKUP_DIR"]).resolve())
    app.extensions["task_store"] = _open_store(data_dir, app.config["BACKUP_DIR"])
    app.extensions["providers"] = build_providers(app.config)
    app.register_blueprint(health.bp)
    app.register_blueprint(video_extend.bp)
    app.register_blueprint(image_generate.bp)
    app.register_blueprint(task_query.bp)
    i18n.init_app(app)
    auth.init_app(app)
    _register_error_handlers(app)

    @app.get("/api/capabilities")
    def capabilities():
        """Every provider with `configured` and its models' allowed values (drives the pages)."""
        providers = app.extensions["providers"]
        return {"providers": [{**p.capabilities(), "configured": p.configured()} for p in providers.values()]}

    if not app.config["TESTING"]:
        import scheduler

        scheduler.start(app)      # also stops it at exit
    return app


class StartupRefused(RuntimeError):
    """The studio will not start over a task store it cannot read (it would look empty)."""


def _open_store(data_dir, backup_dir):
    """The task store, or StartupRefused naming the newest good backup when the store is damaged
    or missing while backups exist — never a studio that starts empty over lost data."""
    from task_backup import newest_good_backup
    from task_store import StoreCorrupt, TaskStore

    store_file = data_dir / "tasks.jsonl"
    backup = None
    if store_file.exists():
        try:
            return TaskStore(data_dir)
        except StoreCorrupt as exc:
            problem = str(exc)
    else:
        backup = newest_good_backup(backup_dir)
        if backup is None:
            return TaskStore(data_dir)          # a new studio
        problem = f"{store_file} is missing"
    backup = backup or newest_good_backup(backup_dir)
    advice = (f"The newest good backup is {backup}; restore it with: python task_backup.py restore {backup}"
              if backup else "No good backup was found; repair the file by hand.")
    raise StartupRefused(f"Refusing to start: {problem}. {advice}")


def _kept_secret_key(data_dir):
    """A random SECRET_KEY kept in DATA_DIR, so every worker and restart shares it."""
    path = data_dir / "secret_key"
    if not path.exists():
        tmp = data_dir / f"secret_key.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)      # atomic and never overwrites: the first worker's key wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


def _configure_logging(app):
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # APScheduler logs every run of every job at INFO: once a second per job is noise.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    for name in ("werkzeug", "gunicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactLoginLinks) for f in logger.filters):
            logger.addFilter(_RedactLoginLinks())


class _RedactLoginLinks(logging.Filter):
    """Access logs show request paths; a one-time login link's token must not be kept in them."""

    pattern = re.compile(r"/login/[A-Za-z0-9_-]+")

    def filter(self, record):
        message = record.getMessage()
        if "/login/" in message:
            record.msg, record.args = self.pattern.sub("/login/[redacted]", message), ()
        return True


def _register_error_handlers(app):
    """One JSON error shape for every failure; 500s are logged and answered generically."""

    @app.errorhandler(AppError)
    def app_error(exc):
        return jsonify(exc.to_dict()), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc):
        code = {413: "payload_too_large", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.code, (exc.name or "error").lower().replace(" ", "_"))
        message = ("The request is larger than the studio accepts (two pictures of 10 MB at most)."
                   if exc.code == 413 else exc.description)
        return jsonify({"error": {"code": code, "message": message}}), exc.code

    @app.errorhandler(Exception)
    def unexpected(exc):
        log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
        return jsonify({"error": {"code": "internal_error",
                                  "message": "Something went wrong on the server; it has been logged."}}), 500


def _serve():
    """`python app.py`: serve until Ctrl-C or SIGTERM, then stop the pipeline before exiting."""
    import signal
    import sys

    import scheduler

    # SIGTERM would otherwise end the process on the spot; make it leave the server loop like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    studio = create_app()
    try:
        studio.run(host=studio.config["APP_HOST"], port=studio.config["APP_PORT"], threaded=True)
    finally:
        scheduler.stop_all()


if __name__ == "__main__":
    _serve()
