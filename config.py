"""The studio's settings: one typed object from defaults, `.env`, the environment and test overrides.

`load_settings(overrides)` reads, in order of precedence from lowest: the defaults below, the
`.env` file (`DOTENV_PATH`, default `./.env`), the process environment, and `overrides` (what
tests and `create_app(config)` pass). Every value is converted and checked once, here, so the app,
the providers and every command line read the same typed values; a bad value stops the start with
a message naming the setting. Provider keys are secrets: they are never logged or shown.
"""

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROVIDER_NAMES = ("LOCAL", "KLING", "AI302", "DASHSCOPE", "LIBLIB")
DOWNLOAD_WORKERS_PER_PROVIDER = 4      # results saved at once per provider (task_query.download)
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


class SettingsError(ValueError):
    """A setting has a value the studio cannot use."""


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    APP_HOST: str = "127.0.0.1"
    APP_PORT: int = Field(5000, ge=1, le=65535)
    DATA_DIR: str = "data"
    BACKUP_DIR: str = "backups"
    MEDIA_DIR: str | None = None                    # inputs/ and outputs/ (a volume shared by nodes); unset: DATA_DIR
    DATABASE_URL: str | None = None                 # postgresql://...: tasks in PostgreSQL; unset: JSON files
    NODE_NAME: str | None = None                    # this node among several on one database; unset: host name
    PIPELINE_LEASE_SECONDS: float = Field(30, gt=0)     # how long a node's claim on a task lasts unrenewed
    SECRET_KEY: str | None = None                   # generated and kept in DATA_DIR when unset
    POLL_INTERVAL_SECONDS: float = Field(5, gt=0)
    BACKUP_INTERVAL_MINUTES: int = Field(60, ge=1)
    BACKUP_KEEP: int = Field(24, ge=1)
    LOCAL_WORKERS: int = Field(min(2, os.cpu_count() or 1), ge=1)
    HTTP_TIMEOUT_SECONDS: float = Field(30, gt=0)   # read timeout of provider calls
    DOWNLOAD_WORKERS_PER_PROVIDER: int = Field(DOWNLOAD_WORKERS_PER_PROVIDER, ge=1, le=32)
    READY_MIN_FREE_MB: int = Field(500, ge=0)       # /readyz fails below this much free disk
    # Two pictures of at most 10 MB each, Base64-encoded (x4/3), plus the rest of the JSON.
    MAX_CONTENT_LENGTH: int = 30 * 1024 * 1024
    ADMIN_PASSWORD: str | None = None
    ADMIN_PASSWORD_RESET: bool = False
    API_KEYS: str = ""
    SESSION_COOKIE_SECURE: bool = False             # set behind HTTPS
    TRUSTED_PROXIES: int = Field(0, ge=0, le=5)     # reverse proxies in front (X-Forwarded-For)
    ALLOW_PRIVATE_URLS: bool = False                # development and tests only (picture URLs, webhooks)
    METRICS_TOKEN: str | None = None                # /metrics wants `Bearer <this>`; unset: loopback only
    WAN_PROTOCOL_PROVIDER: str = "local"            # where /video/submit (the Wan I2V protocol) sends tasks
    WAN_PROTOCOL_MODEL: str = "local-motion"
    BATCH_MAX_UPLOAD_MB: int = Field(1024, ge=1)    # a batch upload (zip or folder), unpacked size included
    ZIP_MAX_TASKS: int = Field(100, ge=1)          # tasks in one gallery download (POST /api/tasks/download.zip)
    ZIP_MAX_MB: int = Field(2048, ge=1)             # their result files together
    TESTING: bool = False

    KLING_ACCESS_KEY: str | None = None
    KLING_SECRET_KEY: str | None = None
    KLING_API_BASE: str | None = None
    AI302_API_KEY: str | None = None
    AI302_API_BASE: str | None = None
    DASHSCOPE_API_KEY: str | None = None
    DASHSCOPE_API_BASE: str | None = None
    # The region of the DashScope key: picks the base URL and the models offered (PROVIDERS.md §9.2(e)).
    DASHSCOPE_REGION: Literal["beijing", "singapore", "virginia", "frankfurt"] = "beijing"
    LIBLIB_ACCESS_KEY: str | None = None
    LIBLIB_SECRET_KEY: str | None = None
    LIBLIB_API_BASE: str | None = None
    WAN_SERVER_BASE: str | None = None              # a self-hosted Wan I2V server (PROVIDERS.md §9.5)
    WAN_SERVER_API_KEY: str | None = None
    # The studio's address as providers on the network reach it (wan_server fetches first frames from it).
    PUBLIC_BASE_URL: str | None = None

    # Per-provider tuning; unset means the provider's own default.
    LOCAL_MAX_CONCURRENCY: int | None = Field(None, ge=1)
    KLING_MAX_CONCURRENCY: int | None = Field(None, ge=1)
    AI302_MAX_CONCURRENCY: int | None = Field(None, ge=1)
    DASHSCOPE_MAX_CONCURRENCY: int | None = Field(None, ge=1)
    LIBLIB_MAX_CONCURRENCY: int | None = Field(None, ge=1)
    LOCAL_MAX_RUNNING_MINUTES: float | None = Field(None, gt=0)
    KLING_MAX_RUNNING_MINUTES: float | None = Field(None, gt=0)
    AI302_MAX_RUNNING_MINUTES: float | None = Field(None, gt=0)
    DASHSCOPE_MAX_RUNNING_MINUTES: float | None = Field(None, gt=0)
    LIBLIB_MAX_RUNNING_MINUTES: float | None = Field(None, gt=0)

    @field_validator("ADMIN_PASSWORD_RESET", "SESSION_COOKIE_SECURE", "ALLOW_PRIVATE_URLS", "TESTING",
                     mode="before")
    @classmethod
    def boolean(cls, value):
        """Booleans as people write them in .env files: 1/0, true/false, yes/no, on/off."""
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise ValueError("use 1 or 0 (true/false, yes/no, on/off)")

    @model_validator(mode="after")
    def frankfurt_needs_its_workspace_url(self):
        """Frankfurt has only workspace URLs (`https://{WorkspaceId}.eu-central-1.maas.aliyuncs.com/api/v1`)."""
        if self.DASHSCOPE_REGION == "frankfurt" and not self.DASHSCOPE_API_BASE:
            raise ValueError("DASHSCOPE_REGION=frankfurt needs DASHSCOPE_API_BASE set to the workspace's URL")
        return self

    @field_validator("DASHSCOPE_REGION", mode="before")
    @classmethod
    def region_lower(cls, value):
        """`Singapore` as well as `singapore`; `DASHSCOPE_REGION=` means the default."""
        return (value.strip().lower() or "beijing") if isinstance(value, str) else value

    @field_validator("*", mode="before")
    @classmethod
    def empty_is_unset(cls, value, info):
        """`NAME=` in a .env file means "not set", as it does for the environment."""
        if value == "" and info.field_name not in ("API_KEYS",) and cls.model_fields[info.field_name].default is None:
            return None
        return value


NAMES = tuple(Settings.model_fields)


def _from_file(path):
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if k in NAMES and v not in (None, "")} \
        if path.is_file() else {}


def load_settings(overrides=None):
    """The settings from defaults, `.env`, the environment and `overrides`, checked.

    Returns (settings, extra): `extra` holds override keys that are not studio settings (Flask's
    own, such as WTF_CSRF_ENABLED in a test), passed to Flask as they are.
    """
    overrides = dict(overrides or {})
    values = _from_file(Path(os.environ.get("DOTENV_PATH", ".env")))
    values.update({k: os.environ[k] for k in NAMES if os.environ.get(k)})
    values.update({k: v for k, v in overrides.items() if k in NAMES})
    extra = {k: v for k, v in overrides.items() if k not in NAMES}
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise SettingsError(f"The studio's settings are not usable: {problems}") from None
    return settings, extra
