"""302.ai: one key for two families — Kling through `/klingai`, Wan through `/aliyun/api/v1`.

302.ai passes the official protocols through unchanged (PROVIDERS.md §2.2 and §2.5), so this
module reuses the Kling and DashScope clients and changes only where requests go, how they are
authorised (`Authorization: Bearer AI302_API_KEY`), and how 302's own gateway errors read:
a non-2xx answer whose JSON is `{"error": {message, err_code}}` comes from 302 before anything
reached the model provider, so it never means "maybe created". Two 302 specifics: the Kling
create answer may carry the id at `data.task.id` instead of `data.task_id`, and 302 adds the
DashScope async header itself, as its own SDK shows (we do not send it).
"""

from errors import ProviderAuthError, ProviderQuotaError, ProviderRateLimited, ProviderRejected, ProviderUnavailable
from providers.base import Provider
from providers.dashscope import DashScopeProvider
from providers.http import retry_after_seconds
from providers.kling import KlingProvider

DEFAULT_API_BASE = "https://api.302.ai"
NAME = "ai302"


def _base(config):
    return (config.get("AI302_API_BASE") or DEFAULT_API_BASE).rstrip("/")


def gateway_error(response, provider):
    """The error for 302's own refusal (`{"error": {...}}`), or None when the answer is not one."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None
    status = response.status_code
    said = str(error.get("message") or "")[:200]
    info = {"provider": provider, "http_status": status, "provider_code": error.get("err_code")}
    if status in (401, 403):
        return ProviderAuthError(f"302.ai refused the key ({said}): check AI302_API_KEY.", **info)
    if status == 402:
        return ProviderQuotaError(f"302.ai says the balance is used up ({said}): top up at 302.ai, then retry.",
                                  **info)
    if status == 429:
        return ProviderRateLimited(f"302.ai is rate limiting ({said}); trying again later.",
                                   retry_after=retry_after_seconds(response), **info)
    if status >= 500:
        return ProviderUnavailable(f"302.ai's gateway is having trouble ({said}).", **info)
    return ProviderRejected(f"302.ai refused the request ({said}).", **info)


class KlingVia302(KlingProvider):
    """The Kling protocol under 302's `/klingai` prefix."""

    name = NAME

    def configured(self):
        return bool(self.config.get("AI302_API_KEY"))

    def api_base(self):
        return _base(self.config) + "/klingai"

    def authorization(self, fresh=False):
        return f"Bearer {self.config.get('AI302_API_KEY')}"

    def created_task_id(self, data):
        task = data.get("task") if isinstance(data, dict) else None
        nested = task.get("id") if isinstance(task, dict) else None
        return super().created_task_id(data) or nested

    def _error(self, response, envelope, submitting):
        if "code" not in envelope:
            error = gateway_error(response, self.name)
            if error:
                return error
        return super()._error(response, envelope, submitting)


class WanVia302(DashScopeProvider):
    """The DashScope protocol under 302's `/aliyun/api/v1` prefix."""

    name = NAME
    key_setting = "AI302_API_KEY"
    lists_tasks = False     # 302's account is shared and its pass-through of the task list unverified

    def api_key(self):
        return self.config.get("AI302_API_KEY")

    def api_base(self):
        return _base(self.config) + "/aliyun/api/v1"

    def async_headers(self):
        return {}       # 302 adds X-DashScope-Async itself; its own SDK never sends it

    def _error(self, response, *, creating):
        return gateway_error(response, self.name) or super()._error(response, creating=creating)


class Ai302Provider(Provider):
    """Routes each task to the Kling or the Wan family by its model id."""

    name = NAME
    max_concurrency = 5     # 302 publishes no limit; AI302_MAX_CONCURRENCY sets the account's

    def __init__(self, config):
        super().__init__(config)
        self.kling = KlingVia302(config)
        self.wan = WanVia302(config)

    def family(self, task):
        return self.kling if str(task.get("model", "")).startswith("kling") else self.wan

    def configured(self):
        return bool(self.config.get("AI302_API_KEY"))

    def capabilities(self):
        kling = [{**m, "label": f"Kling · {m['label']}"} for m in self.kling.capabilities()["models"]]
        wan = [{**m, "label": f"Wan · {m['label']}"} for m in self.wan.capabilities()["models"]]
        return {"name": self.name, "label": "302.ai (Kling and Wan)", "configured": self.configured(),
                "description": "One 302.ai key for Kling models (official format through /klingai) and "
                               "Alibaba's Wan models (DashScope format through /aliyun). Billed by 302.ai.",
                "models": kling + wan}

    def slots(self, task):
        return self.family(task).slots(task)

    def submit(self, task):
        return self.family(task).submit(task)

    def query(self, task):
        return self.family(task).query(task)

    def cancel(self, task):
        # Only DashScope has a cancel, and whether 302 passes it through is unverified (PROVIDERS.md §6).
        return False

    def reconcile(self, task):
        return self.family(task).reconcile(task)
