"""The studio's application factory: configuration, logging, error handlers, blueprints, scheduler.

Settings come from config.py (defaults, then `.env`, then the environment, then the `config`
mapping given to `create_app` by tests), typed once and copied into `app.config`. `python app.py`
serves the studio on APP_HOST:APP_PORT (127.0.0.1:5000) with the local engine and the scheduler
in-process; production runs `gunicorn "app:create_app()"`. Importing this module starts nothing.
The pipeline (scheduler.py) starts with the app unless TESTING and stops before the process exits:
Ctrl-C and SIGTERM stop `python app.py` the same graceful way, and gunicorn stops it from its
worker_exit hook.
"""

import logging
import os
import re
import secrets
from pathlib import Path

from flask import Flask


def create_app(config=None):
    """Build the studio app; `config` overrides everything (tests pass TESTING and DATA_DIR)."""
    from config import load_settings
    from request_body import StrictJSONProvider, StudioRequest

    settings, flask_extra = load_settings(config)
    app = Flask(__name__)
    # For every endpoint: a 413 for an oversized streamed body, a 400 for malformed or deep JSON.
    app.request_class = StudioRequest
    app.json = StrictJSONProvider(app)
    app.config.update(settings.model_dump(), **flask_extra)
    app.extensions["settings"] = settings

    data_dir = _prepare_data_dir(app)
    import fileio

    # inputs/ and outputs/ under MEDIA_DIR (a volume every node shares), else in DATA_DIR
    fileio.set_media_root(data_dir, app.config["MEDIA_DIR"] or data_dir)
    _configure_logging(app)

    from providers import build_providers

    app.extensions["task_store"] = _open_store(data_dir, app.config["BACKUP_DIR"], app.config["DATABASE_URL"])
    app.extensions["providers"] = build_providers(app.config)
    _register_features(app)
    if app.config["DATABASE_URL"]:
        import pg_limits

        pg_limits.install(app)      # the quota ledger and the rate limits in PostgreSQL too

    # A `flask ...` command (backup, ...) is a tool, not a studio: it never runs the pipeline.
    import click

    if not app.config["TESTING"] and click.get_current_context(silent=True) is None:
        import scheduler

        scheduler.start(app)      # also stops it at exit
    return app


def _prepare_data_dir(app):
    """DATA_DIR (made, private to the studio's user) and BACKUP_DIR as absolute paths; the secret key."""
    data_dir = Path(app.config["DATA_DIR"]).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)           # keys, accounts and people's pictures: for the studio's user only
    app.config["DATA_DIR"] = str(data_dir)
    app.config["BACKUP_DIR"] = str(Path(app.config["BACKUP_DIR"]).resolve())
    app.config["SECRET_KEY"] = app.config.get("SECRET_KEY") or _kept_secret_key(data_dir)
    return data_dir


def _register_features(app):
    """Every feature module's blueprint and hooks, in the order they must see requests."""
    import auth
    import batches
    import downloads
    import error_pages
    import gallery
    import health
    import i18n
    import image_generate
    import metrics
    import signed_inputs
    import store_cli
    import task_backup
    import task_query
    import tasks
    import video_extend
    import wan_protocol
    import webhooks
    from api import batches as api_batches
    from api import image_service, openapi, v1

    downloads.configure(app.config)     # where result links may point: public, or a configured provider
    # signed_inputs: task inputs at signed, expiring URLs, for providers that fetch them (wan_server).
    for module in (health, video_extend, image_generate, task_query, gallery, signed_inputs, v1, api_batches,
                   image_service, openapi, wan_protocol):
        app.register_blueprint(module.bp)
    metrics.init_app(app)           # before auth: a refused request is timed too
    i18n.init_app(app)
    task_backup.init_app(app)
    store_cli.init_app(app)         # flask db upgrade, flask store copy
    # The pages read the task statuses from tasks.py (studio-config JSON, the tasks page's filter).
    app.jinja_env.globals["task_statuses"] = {"all": tasks.STATUSES, "active": tasks.ACTIVE, "terminal": tasks.TERMINAL}
    batches.init_app(app)           # before auth: a batch upload's size limits apply before its form is read
    auth.init_app(app)
    webhooks.init_app(app)
    error_pages.init_app(app)      # JSON for API clients, pages for browsers

    @app.get("/api/capabilities")
    def capabilities():
        """Every provider with `configured` and its models' allowed values (drives the pages)."""
        providers = app.extensions["providers"]
        return {"providers": [{**p.capabilities(), "configured": p.configured()} for p in providers.values()]}


class StartupRefused(RuntimeError):
    """The studio will not start over a task store it cannot read (it would look empty)."""


def _open_store(data_dir, backup_dir, database_url=None):
    """The task store, or StartupRefused naming the newest good backup when the store is damaged
    or missing while backups exist — never a studio that starts empty over lost data. With
    `database_url` the store is PostgreSQL, and a database that cannot be reached refuses the
    start too: falling back to the JSON files would show a studio without its tasks."""
    if database_url:
        from task_store_pg import PgTaskStore, StoreUnavailable

        try:
            return PgTaskStore(database_url, data_dir)
        except StoreUnavailable as exc:
            raise StartupRefused(f"Refusing to start: DATABASE_URL is set but {exc.strerror}") from None
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
    os.umask(0o077)                 # every file the studio writes is private to its user (gunicorn: umask)
    _serve()
