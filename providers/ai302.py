"""302.ai: one key for two families — Kling through `/klingai`, Wan through `/aliyun/api/v1`.

302.ai passes the official protocols through unchanged (PROVIDERS.md §2.2 and §2.5), so this
module composes the Kling and DashScope protocol clients (`kling.KlingClient`,
`dashscope.WanClient`), each configured with only what differs: where requests go, how they are
authorised (`Authorization: Bearer AI302_API_KEY`), and how 302's own gateway errors read:
a non-2xx answer whose JSON is `{"error": {message, err_code}}` comes from 302 before anything
reached the model provider, so it never means "maybe created". 302 specifics (§9.3): the Kling
create answer comes with or without Kling's `code` (302's own `{"status": 200, "result": 1}`) and
carries the id at `data.task_id` or `data.task.id` — a 2xx answer is never a failure, and one without
a readable id is "outcome unknown"; a lookup by our id that 302 answers "not found" proves nothing
(302 documents no such lookup), so such a task fails as outcome unknown, with the late check, and is
not re-sent; Wan's success reads `SUCCEEDED` or `SUCCESS`; 302 adds the DashScope async header
itself, as its own SDK shows (we do not send it); the first-and-last-frame endpoint is not among
302's documented Wan paths, so those models are not offered here.
"""

from dataclasses import replace

from errors import ProviderAuthError, ProviderQuotaError, ProviderRateLimited, ProviderRejected, ProviderUnavailable
from providers import dashscope, kling
from providers.base import N_, Provider, ReportState
from providers.capabilities import ProviderTable
from providers.errors_map import SERVER_ERRORS, map_error, rule

DEFAULT_API_BASE = "https://api.302.ai"
NAME = "ai302"
KEY_SETTING = "AI302_API_KEY"
LABEL = N_("302.ai (Kling and Wan)")
DESCRIPTION = N_("One 302.ai key for Kling models (official format through /klingai) and Alibaba's Wan "
                 "models (DashScope format through /aliyun). Billed by 302.ai.")

# 302's own refusals, by HTTP status (its `err_code` values are not published); `{said}` is its message.
GATEWAY_ERRORS = [
    rule(ProviderAuthError, N_("302.ai refused the key (%(said)s): check AI302_API_KEY."), statuses=(401, 403)),
    rule(ProviderQuotaError, N_("302.ai says the balance is used up (%(said)s): top up at 302.ai, then retry."),
         statuses=(402,)),
    rule(ProviderRateLimited, N_("302.ai is rate limiting (%(said)s); trying again later."), statuses=(429,),
         retry_after=True),
    rule(ProviderUnavailable, N_("302.ai's gateway is having trouble (%(said)s)."), statuses=SERVER_ERRORS),
    rule(ProviderRejected, N_("302.ai refused the request (%(said)s).")),
]


def gateway_error(response, provider=NAME):
    """The error for 302's own refusal (`{"error": {...}}`), or None when the answer is not one."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None
    code = error.get("err_code")
    return map_error(GATEWAY_ERRORS, response, code=code, phase=None,
                     context={"said": str(error.get("message") or "")[:200]},
                     facts={"provider": provider, "http_status": response.status_code, "provider_code": code})


def _kling_gateway_error(response, envelope):
    # An envelope with Kling's `code` is Kling's answer passed through, whatever 302 wraps around it.
    return None if "code" in envelope else gateway_error(response)


def _kling_accepted(response, envelope):
    """302's Kling answers: the official envelope (`code == 0`), or 302's own code-less one
    (`{"status": 200, "result": 1, "data": ...}`, §9.3). A 2xx answer with neither a Kling `code` nor
    302's `error` object is taken as accepted too: whether it carries an id then decides between
    "created" and "outcome unknown", never a plain failure, because 302 may have billed for it."""
    if not response.ok:
        return False
    if "code" in envelope:
        return envelope["code"] == 0
    return "error" not in envelope


def _created_task_id(data):
    """302's Kling create answer may carry the id at `data.task.id` instead of `data.task_id`."""
    task = data.get("task") if isinstance(data, dict) else None
    nested = task.get("id") if isinstance(task, dict) else None
    return kling.official_task_id(data) or nested


class Ai302Provider(Provider):
    """Routes each task to its family's client by the model id: Kling's or Wan's protocol, each over
    its own HttpClient under 302's base URL, with 302's key and 302's gateway errors first."""

    name = NAME
    max_concurrency = 5     # 302 publishes no limit; AI302_MAX_CONCURRENCY sets the account's

    def __init__(self, config):
        super().__init__(config)
        base = (config.get("AI302_API_BASE") or DEFAULT_API_BASE).rstrip("/")
        self.kling_http = self.make_http(base + "/klingai")
        self.wan_http = self.make_http(base + "/aliyun/api/v1")
        self.kling = kling.KlingClient(self.name, self.kling_http, self._authorization, self.input_path,
                                       created_task_id=_created_task_id, gateway=_kling_gateway_error,
                                       accepted=_kling_accepted,
                                       # 302 documents no lookup by external id (§9.3): "not found" is no proof
                                       not_found_is_proof=False)
        self.wan = dashscope.WanClient(
            self.name, self.wan_http, api_key=config.get(KEY_SETTING), key_setting=KEY_SETTING,
            input_path=self.input_path, data_dir=self.data_dir,
            read_timeout=float(config.get("HTTP_TIMEOUT_SECONDS") or 30),
            async_header=False,     # 302 adds X-DashScope-Async itself; its own SDK never sends it
            lists_tasks=False,      # 302's account is shared and its pass-through of the task list unverified
            gateway=gateway_error,
            # 302's SDK checks SUCCEEDED; one guide shows SUCCESS (§9.3): both are success.
            states={**dashscope.STATES, "SUCCESS": ReportState.SUCCEEDED})

    def _authorization(self, fresh=False):
        return f"Bearer {self.config.get(KEY_SETTING)}"     # a plain key: nothing to mint afresh

    def family(self, task):
        return self.kling if str(task.get("model", "")).startswith("kling") else self.wan

    def configured(self):
        return bool(self.config.get(KEY_SETTING))

    def capabilities(self):
        models = [_relabelled(m, "Kling") for m in kling.MODEL_TABLE] + [
            _relabelled(m, "Wan") for m in dashscope.model_table(dashscope.PROXY_MODELS)]
        return ProviderTable(self.name, LABEL, DESCRIPTION, self.configured(), models).as_dict()

    def slots(self, task):
        return kling.slots(task) if self.family(task) is self.kling else 1

    def submit(self, task):
        return self.family(task).submit(task)

    def query(self, task):
        return self.family(task).query(task)

    def cancel(self, task):
        # Only DashScope has a cancel, and whether 302 passes it through is unverified (PROVIDERS.md §6).
        return False

    def reconcile(self, task):
        return self.family(task).reconcile(task)

    def close(self):
        self.kling_http.close()
        self.wan_http.close()


def _relabelled(model, family):
    """A family's model under 302, its label prefixed with the family's name."""
    return replace(model, label=f"{family} · {model.label}")
