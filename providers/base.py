"""The provider interface: what every provider module implements and what it reports back.

Providers translate between a studio task record and one provider's protocol. They never touch
the task store: `submit` returns the provider's task id, `query` returns a `ProviderStatus`, and
the pipeline in `task_query` decides what to record. Errors are raised as `errors.ProviderError`
subclasses.

A provider that talks HTTP owns one `HttpClient` for its whole life (`self.http`, made in its
`__init__` with `make_http`); `close()` closes it, and the pipeline calls it when it stops.
"""

import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import fileio
from providers.http import HttpClient


class ReportState(StrEnum):
    """What a provider reports about one of its tasks (PROVIDERS.md §0).

    Not the studio's task status (tasks.py): a provider's SUCCEEDED means "the result is ready at
    the provider", after which the pipeline still downloads it before the task succeeds. The values
    are plain strings, so a state compares equal to its value.
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# The old module-level names, kept only for providers/local.py and tests/test_local.py, which
# import them; every other module uses ReportState.
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = ReportState


def N_(text):
    """Marks a provider table's English text for translation where it is defined (babel extracts
    `N_`); the text stays English in the tables and the API, and pages translate it at render
    (providers/catalog.py)."""
    return text


@dataclass
class RemoteOutput:
    """One result as the provider reports it: a URL to download, or a file already on disk."""

    kind: str                      # "video" | "image"
    url: str | None = None         # provider URL (None for the local engine)
    path: str | None = None        # path relative to DATA_DIR when already on local disk
    expires_at: str | None = None  # ISO 8601 UTC when the provider's URL stops working
    meta: dict = field(default_factory=dict)  # provider extras, e.g. {"duration": 5}


@dataclass
class ProviderStatus:
    """A provider's answer to "how is this task doing?", normalised to the common states."""

    state: ReportState
    raw_status: str | None = None  # the provider's own status value, kept for debugging
    progress: int | None = None    # 0-100 where the provider knows it
    outputs: list = field(default_factory=list)  # [RemoteOutput] once SUCCEEDED
    message: str | None = None     # failure reason from the provider
    error_code: str | None = None
    cost: dict | None = None       # what the provider charged, as reported


class Throttle:
    """Spaces calls to at most `rate` a second across threads, so parallel polling never
    exceeds a provider's documented query rate."""

    def __init__(self, rate):
        self.interval = 1.0 / rate
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self):
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


class Provider:
    """Base class; subclasses set `name` and implement the four calls."""

    name = ""
    max_concurrency = 5     # tasks in flight at once; <NAME>_MAX_CONCURRENCY overrides
    poll_interval = 5       # seconds between status queries; POLL_INTERVAL_SECONDS overrides
    query_rate = None       # documented status-query limit (requests per second), None = unpublished
    max_running_seconds = 3600  # longer than this in flight fails as "timeout"; <NAME>_MAX_RUNNING_MINUTES

    def __init__(self, config):
        self.config = config
        self.data_dir = Path(config["DATA_DIR"])
        self.max_concurrency = int(config.get(f"{self.name.upper()}_MAX_CONCURRENCY") or self.max_concurrency)
        self.poll_interval = float(config.get("POLL_INTERVAL_SECONDS") or self.poll_interval)
        minutes = config.get(f"{self.name.upper()}_MAX_RUNNING_MINUTES")
        self.max_running_seconds = float(minutes) * 60 if minutes else self.max_running_seconds
        self.query_throttle = Throttle(self.query_rate) if self.query_rate else None
        self.http = None        # the provider's HttpClient, for those that talk HTTP

    def make_http(self, base_url):
        """The provider's one HTTP client, with the configured read timeout and a connection per slot."""
        return HttpClient(self.name, base_url, timeout=(5, float(self.config.get("HTTP_TIMEOUT_SECONDS") or 30)),
                          pool_size=max(10, self.max_concurrency))

    def close(self):
        """Release what the provider holds (its HTTP connections); safe to call more than once."""
        if self.http is not None:
            self.http.close()

    def configured(self):
        """True when the keys this provider needs are present."""
        return True

    def capabilities(self):
        """Models and allowed values as data (see providers/__init__.py for the shape)."""
        raise NotImplementedError

    def submit(self, task):
        """Start the work; return the provider's task id.

        Contract with the pipeline: raise SubmitOutcomeUnknown when the provider may have
        created the task (no answer after sending, a 5xx); any other ProviderError means it
        certainly did not, and a `retryable` one keeps the task queued for a later try.
        """
        raise NotImplementedError

    def query(self, task):
        """Report the state of a submitted task as a ProviderStatus."""
        raise NotImplementedError

    def cancel(self, task):
        """Cancel at the provider where it really can; return True if it did."""
        return False

    def reconcile(self, task):
        """After a submit whose outcome is unknown: the provider task id if the task exists there,
        None if it certainly does not (so it may be submitted), or raise SubmitOutcomeUnknown."""
        from errors import SubmitOutcomeUnknown

        raise SubmitOutcomeUnknown(
            N_("%(name)s cannot tell whether the submit reached it; not re-sent to avoid a double "
               "charge"),
            provider=self.name,
            params={"name": self.name})

    def slots(self, task):
        """Concurrency slots a task holds at the provider while in flight (Kling: n per image task)."""
        return 1

    def model_cap(self, task):
        """(group, cap) when the provider limits tasks in flight per model as well (DashScope: each
        Wan model has its own documented cap), or None; the dispatcher holds both limits."""
        return

    def input_path(self, task, role):
        """Absolute path of the task's input picture with this role, or None."""
        for item in task.get("inputs") or []:
            if item["role"] == role:
                return fileio.media_root(self.data_dir) / item["path"]
        return None
