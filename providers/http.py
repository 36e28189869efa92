"""The one HTTP helper every provider talks through.

It owns what must be the same for every provider: explicit timeouts, bounded retries with
exponential backoff, jitter and `Retry-After` for idempotent calls (queries), and the rule that
a non-idempotent submit is never sent twice. A submit that fails before anything was sent
(connection refused, connect timeout) is reported as `ProviderUnavailable` (safe to try later);
one that fails after the request may have reached the provider (read timeout, connection reset)
is `SubmitOutcomeUnknown`, for the pipeline to reconcile. HTTP error statuses are returned to the
provider module, which maps them from its structured codes. Nothing here logs headers, bodies or
query strings, so keys and signatures never reach the logs.
"""

import logging
import random
import time

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError

from errors import N_, ProviderBadResponse, ProviderUnavailable, SubmitOutcomeUnknown

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = {429, 500, 502, 503, 504}
MAX_RETRY_AFTER = 60.0


def sleep(seconds):
    """The only place the helper waits; tests replace it to run without delays."""
    time.sleep(seconds)


def jitter(delay):
    """Full jitter keeps many clients from retrying in lockstep."""
    return random.uniform(delay / 2, delay)


def retry_after_seconds(response):
    """Seconds from a Retry-After header (numeric form), capped; None when absent or unreadable."""
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value))) if value else None
    except ValueError:
        return None


class HttpClient:
    """Talks to one provider's base URL with one session, for the provider's whole life.

    The session keeps connections open between calls (TLS set up once, not per query) and is
    shared by the pipeline's threads: `requests` sessions are safe for that as long as nobody
    changes them after construction, and nothing here does. `close()` drops the connections.
    """

    def __init__(self, provider, base_url, *, timeout=(5, 30), retries=3, backoff=1.0, pool_size=10):
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.session = requests.Session()
        # One kept connection per thread that may call at once, so none is opened and thrown away.
        adapter = HTTPAdapter(pool_maxsize=pool_size)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)

    def close(self):
        """Close every kept connection; a later call opens new ones, so closing twice is harmless."""
        self.session.close()

    def url(self, path):
        return path if path.startswith(("http://", "https://")) else self.base_url + path

    def request(self, method, path, *, idempotent, task_id=None, **kwargs):
        """Send a request; returns the response whatever its status (after retries if idempotent)."""
        kwargs.setdefault("timeout", self.timeout)
        attempts = self.retries + 1 if idempotent else 1
        for attempt in range(1, attempts + 1):
            started = time.monotonic()
            try:
                response = self.session.request(method, self.url(path), **kwargs)
            except requests.RequestException as exc:
                if not idempotent and not _nothing_sent(exc):
                    log.warning("%s %s %s for task %s: no answer after sending (%s)", self.provider,
                                method, path, task_id, type(exc).__name__)
                    raise SubmitOutcomeUnknown(
                        N_("%(provider)s did not answer the submit; it may or may not have been accepted, so it "
                           "is not sent again."), provider=self.provider,
                        params={"provider": self.provider}) from None
                failure = exc
                response = None
            else:
                log.info("%s %s %s for task %s -> %s in %.0f ms", self.provider, method, path, task_id,
                         response.status_code, (time.monotonic() - started) * 1000)
                if not idempotent or response.status_code not in RETRYABLE_STATUSES or attempt == attempts:
                    return response
            if attempt == attempts:
                raise ProviderUnavailable(
                    N_("%(provider)s could not be reached (%(error)s)."),
                    provider=self.provider,
                    params={"provider": self.provider, "error": type(failure).__name__}) from None
            wait = retry_after_seconds(response) or jitter(self.backoff * 2 ** (attempt - 1))
            log.info("%s %s %s for task %s: retry %d in %.1f s", self.provider, method, path, task_id,
                     attempt, wait)
            sleep(wait)
        raise AssertionError("unreachable")

    def get(self, path, **kwargs):
        return self.request("GET", path, idempotent=True, **kwargs)

    def submit(self, path, **kwargs):
        """POST that creates something at the provider: sent exactly once."""
        return self.request("POST", path, idempotent=False, **kwargs)


def _nothing_sent(exc):
    """True when the request certainly never reached the provider (the connection never opened)."""
    if isinstance(exc, (requests.ConnectTimeout, requests.exceptions.InvalidURL,
                        requests.exceptions.MissingSchema)):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(exc, requests.ConnectionError) and isinstance(reason, NewConnectionError)


def json_body(response, provider):
    """The response's JSON object, or ProviderBadResponse when it is not one."""
    try:
        body = response.json()
    except ValueError:
        raise ProviderBadResponse(
            N_("%(provider)s answered HTTP %(status)s with a body that is not JSON."),
            provider=provider, http_status=response.status_code,
            params={"provider": provider, "status": response.status_code}) from None
    if not isinstance(body, dict):
        raise ProviderBadResponse(N_("%(provider)s answered with unexpected JSON."), provider=provider,
                                  http_status=response.status_code,
                                  params={"provider": provider})
    return body
