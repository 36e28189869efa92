"""Aliyun DashScope (Model Studio) Wan models: image-to-video and text-to-image (PROVIDERS.md §3).

Both kinds are asynchronous tasks: a create call (`X-DashScope-Async: enable`) answers with
`output.task_id`, `GET /tasks/{id}` reports PENDING/RUNNING/SUCCEEDED/FAILED/CANCELED/UNKNOWN and
the result URLs, which (like the task id) live 24 h. Decisions worth knowing:

- `prompt_extend` is sent as false: DashScope's default (true) has an LLM rewrite the prompt, so the
  video would follow text the user never wrote and the task takes longer. A `WanClient` may flip
  `prompt_extend`; the rewritten text (`actual_prompt`) is kept in each output's meta.
- `n` is always sent: DashScope's default is 4 images, billed per image.
- The service silently truncates prompts past 800 (negative 500) characters, so the capability table
  refuses longer text instead.
- The first frame goes as a `data:{mime};base64,` URI, the mime from the file's real format. Wan takes
  sides of 360-2000 px (the newest page says 240-8000; we keep the narrower, older rule): a picture
  with a side under 360 px is refused before anything is sent, a larger one is scaled down to fit
  2000 px (the video is at most 1080P, so nothing is lost), and a PNG with transparency, which Wan
  does not take, is flattened onto white.
- Partial image success: a task with n > 1 SUCCEEDS when at least one image was made; the failed
  entries (`code`, `message`) are reported in `cost["partial_failures"]` (the task record keeps
  `cost`) and in the status message, and only the images that were made are outputs.
- `Throttling.AllocationQuota` (the quota allocated for the period is used up) is treated as a rate
  limit with a long backoff: it recovers by itself, and the pipeline fails the task after repeated
  refusals anyway.
- DashScope tasks carry no client id, so a submit whose answer was lost is matched through the
  batch task query by model and time window: exactly one unclaimed candidate is adopted, anything
  else is reported as unknown with the console hint, never guessed.

The protocol is `WanClient`'s, configured with a base URL, a key and a few switches, so a proxy
that speaks the same protocol (302.ai's `/aliyun/api/v1`) uses it too; the model tables are module data.
"""

import base64
import io
import logging
from datetime import UTC, datetime, timedelta, timezone

from PIL import Image, ImageOps

import downloads
import media
import submit_journal
from errors import (
    ProviderAuthError,
    ProviderBadResponse,
    ProviderQuotaError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    SubmitOutcomeUnknown,
)
from providers.base import N_, Provider, ProviderStatus, RemoteOutput
from providers.base import ReportState as State
from providers.capabilities import ImageModel, ProviderTable, VideoModel, combos
from providers.errors_map import OTHER, SERVER_ERRORS, SUBMIT, map_error, rule
from providers.http import json_body

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://dashscope.aliyuncs.com/api/v1"
VIDEO_PATH = "/services/aigc/video-generation/video-synthesis"
IMAGE_PATH = "/services/aigc/text2image/image-synthesis"
RESULT_LIFETIME = timedelta(hours=24)
MAX_PROMPT, MAX_NEGATIVE_PROMPT = 800, 500
MIN_SIDE, MAX_SIDE = 360, 2000          # sides of the first frame Wan image-to-video takes

# Image-to-video models (§3.3): resolution tiers and durations, cheapest first, because the first
# value is what the studio uses when a request leaves it out. All silent, no tail frame.
VIDEO_MODELS = {
    "wan2.2-i2v-flash": {"label": "Wan 2.2 Flash (image to video)",
                         "resolutions": ["480P", "720P", "1080P"], "durations": ["5"]},
    "wan2.2-i2v-plus": {"label": "Wan 2.2 Plus (image to video)",
                        "resolutions": ["480P", "1080P"], "durations": ["5"]},
    "wanx2.1-i2v-turbo": {"label": "Wanx 2.1 Turbo (image to video)",
                          "resolutions": ["480P", "720P"], "durations": ["3", "4", "5"]},
    "wanx2.1-i2v-plus": {"label": "Wanx 2.1 Plus (image to video)",
                         "resolutions": ["720P"], "durations": ["5"]},
}
# Text-to-image models (§3.4), all on the same endpoint with the same parameters.
IMAGE_MODELS = {
    "wanx2.1-t2i-turbo": "Wanx 2.1 Turbo (text to image)",
    "wanx2.1-t2i-plus": "Wanx 2.1 Plus (text to image)",
    "wanx2.0-t2i-turbo": "Wanx 2.0 Turbo (text to image)",
}
# Our aspect ratios as DashScope `size` "W*H": every side within 512..1440, at most about 2 MP.
IMAGE_SIZES = {
    "1:1": (1024, 1024), "16:9": (1280, 720), "9:16": (720, 1280), "4:3": (1152, 864),
    "3:4": (864, 1152), "3:2": (1248, 832), "2:3": (832, 1248), "21:9": (1440, 616),
}
IMAGE_N_MAX = 4

STATES = {"PENDING": State.QUEUED, "RUNNING": State.RUNNING, "SUSPENDED": State.RUNNING,
          "SUCCEEDED": State.SUCCEEDED, "FAILED": State.FAILED, "CANCELED": State.CANCELLED, "UNKNOWN": State.FAILED}
AUTH_CODES = {"InvalidApiKey", "AccessDenied", "Model.AccessDenied"}
BILLING_CODES = {"Arrearage", "PrepaidBillOverdue", "PostpaidBillOverdue", "CommodityNotPurchased",
                 "AllocationQuota.FreeTierOnly"}
ALLOCATION_QUOTA_BACKOFF = 60           # seconds before trying again after Throttling.AllocationQuota
BEIJING = timezone(timedelta(hours=8))  # DashScope's timestamps and task-list filters are Beijing time
RECONCILE_SLACK = timedelta(seconds=60)  # clock skew between us and DashScope, either way
LIST_PAGE_SIZE = 50
LIST_MAX_PAGES = 4

LABEL = N_("Aliyun DashScope (Wan)")
DESCRIPTION = N_("Alibaba's Tongyi Wanxiang (Wan) models on DashScope / Model Studio: video from a "
                 "first frame, pictures from text. Results are kept by DashScope for 24 hours.")
RESOLUTION_LABEL = N_("Resolution")

# DashScope's `code` first where it is decisive whatever the status (billing, the key, quota),
# the HTTP status next, the codes that only explain a plain refusal last. `{detail}` is
# DashScope's code and message, shown, never matched.
ERRORS = [
    rule(SubmitOutcomeUnknown, "{provider} failed while taking the submit ({detail}); the task may or may not "
         "exist there, so it is not sent again.", statuses=SERVER_ERRORS, phase=SUBMIT),
    rule(ProviderQuotaError, "{provider} refused for a billing reason ({detail}). Settle or top up the Alibaba "
         "Cloud account (or turn off 'free tier only' for the model) and retry the task.", codes=BILLING_CODES),
    rule(ProviderAuthError, "{provider} refused the key ({detail}). Check {key_setting}, and that the key, the "
         "endpoint's region and the model belong together and the model is activated.", codes=AUTH_CODES,
         statuses=(401, 403)),
    rule(ProviderRateLimited, "{provider}'s quota allocated for this period is used up ({detail}); trying "
         "again later.", codes=("Throttling.AllocationQuota",), retry_after=True,
         retry_default=ALLOCATION_QUOTA_BACKOFF),
    rule(ProviderRateLimited, "{provider} is rate limiting ({detail}); trying again later.",
         codes=("Throttling*",), statuses=(429,), retry_after=True),
    rule(ProviderUnavailable, "{provider} is having trouble ({detail}).", statuses=SERVER_ERRORS),
    rule(ProviderRejected, "{provider} does not know this model here ({detail}). Model names differ by region "
         "(wan2.1-* on the international endpoint, wanx2.1-* in Beijing).", codes=("ModelNotFound",)),
    rule(ProviderRejected, "{provider}'s content moderation refused the prompt or picture ({detail}). Change "
         "them and try again.", codes=("DataInspectionFailed",)),
    rule(ProviderRejected, "{provider} rejected the request ({detail})."),
]


def model_table():
    """The capability-table entries of the Wan models (shared with proxies of this protocol)."""
    videos = [
        VideoModel(id=model_id, label=spec["label"], image_to_video=True, text_to_video=False,
                   modes=list(spec["resolutions"]), mode_label=RESOLUTION_LABEL, durations=list(spec["durations"]),
                   combos=combos((r, d) for r in spec["resolutions"] for d in spec["durations"]),
                   tail_combos=[], cfg_scale=False, cameras=[], aspect_ratios=[], max_prompt=MAX_PROMPT,
                   max_negative_prompt=MAX_NEGATIVE_PROMPT)
        for model_id, spec in VIDEO_MODELS.items()]
    images = [
        ImageModel(id=model_id, label=label, text_to_image=True, image_to_image=False,
                   aspect_ratios=list(IMAGE_SIZES), n_min=1, n_max=IMAGE_N_MAX, image_fidelity=False,
                   human_fidelity=False, image_reference=[], negative_prompt_with_image=False,
                   max_prompt=MAX_PROMPT, max_negative_prompt=MAX_NEGATIVE_PROMPT)
        for model_id, label in IMAGE_MODELS.items()]
    return videos + images


class DashScopeProvider(Provider):
    """Wan image-to-video and text-to-image through DashScope's asynchronous HTTP API."""

    name = "dashscope"
    key_setting = "DASHSCOPE_API_KEY"   # named in error messages
    # DashScope publishes 2 tasks in flight per model for Wan 2.1 and nothing firmer for the newer
    # models; one cap of 2 for the whole provider stays on the safe side (DASHSCOPE_MAX_CONCURRENCY).
    max_concurrency = 2
    query_rate = 20         # documented: about 20 status queries a second per account

    def __init__(self, config):
        super().__init__(config)
        self.http = self.make_http(self.api_base())
        self.client = WanClient(self.name, self.http, api_key=self.api_key(), key_setting=self.key_setting,
                                input_path=self.input_path, data_dir=self.data_dir,
                                read_timeout=float(config.get("HTTP_TIMEOUT_SECONDS") or 30))

    # ---- where a proxy of the same protocol differs

    def api_key(self):
        return self.config.get("DASHSCOPE_API_KEY")

    def api_base(self):
        return (self.config.get("DASHSCOPE_API_BASE") or DEFAULT_API_BASE).rstrip("/")

    # ---- the provider interface: the protocol is the client's

    def configured(self):
        return bool(self.api_key())

    def capabilities(self):
        return ProviderTable(self.name, LABEL, DESCRIPTION, self.configured(), model_table()).as_dict()

    def submit(self, task):
        return self.client.submit(task)

    def query(self, task):
        return self.client.query(task)

    def cancel(self, task):
        return self.client.cancel(task)

    def reconcile(self, task):
        return self.client.reconcile(task)


class WanClient:
    """DashScope's Wan protocol over one HttpClient, for DashScope itself or a proxy of it (302.ai).

    `async_header`: send `X-DashScope-Async: enable` on creates (302 adds it itself);
    `lists_tasks`: reconcile a lost submit through the batch task query; `gateway(response)` may
    claim an error answer before DashScope's table does.
    """

    def __init__(self, name, http, *, api_key, key_setting, input_path, data_dir, read_timeout,
                 async_header=True, lists_tasks=True, prompt_extend=False, gateway=None):
        self.name = name
        self.http = http
        self.api_key = api_key
        self.key_setting = key_setting
        self.input_path = input_path
        self.data_dir = data_dir
        self.read_timeout = read_timeout
        self.async_header = async_header
        self.lists_tasks = lists_tasks
        self.prompt_extend = prompt_extend
        self.gateway = gateway

    def auth_headers(self):
        return {"Authorization": f"Bearer {self.api_key}"}

    def async_headers(self):
        """Sent on create calls only: DashScope's HTTP API runs these models asynchronously only."""
        return {"X-DashScope-Async": "enable"} if self.async_header else {}

    def submit(self, task):
        """Create the task at DashScope and return its task id."""
        if task["kind"] == "video":
            path, body = VIDEO_PATH, self.video_body(task)
        else:
            path, body = IMAGE_PATH, self.image_body(task)
        headers = {**self.auth_headers(), "Content-Type": "application/json", **self.async_headers()}
        response = self.http.submit(path, json=body, headers=headers, task_id=task["id"])
        if not 200 <= response.status_code < 300:
            raise self._error(response, creating=True)
        # Past a 2xx the task exists: an answer we cannot read must not lead to a second create.
        try:
            output = json_body(response, self.name).get("output")
        except ProviderBadResponse:
            output = None
        provider_task_id = output.get("task_id") if isinstance(output, dict) else None
        if not isinstance(provider_task_id, str) or not provider_task_id:
            raise SubmitOutcomeUnknown(
                f"{self.name} accepted the submit but its answer carried no task id; the task may exist "
                "there, so it is not sent again.", provider=self.name, http_status=response.status_code)
        return provider_task_id

    def query(self, task):
        """Ask DashScope about the task and translate its answer."""
        response = self.http.get(f"/tasks/{task['provider_task_id']}", headers=self.auth_headers(),
                                 task_id=task["id"])
        if response.status_code != 200:
            raise self._error(response, creating=False)
        body = json_body(response, self.name)
        output = body.get("output")
        if not isinstance(output, dict) or not isinstance(output.get("task_status"), str):
            raise ProviderBadResponse(f"{self.name} answered a task query without output.task_status.",
                                      provider=self.name, http_status=200)
        raw = output["task_status"]
        cost = body.get("usage") if isinstance(body.get("usage"), dict) else None
        if raw == "UNKNOWN":
            return ProviderStatus(State.FAILED, raw, error_code="task_unknown", message=(
                f"{self.name} no longer knows this task: task ids expire after 24 h, or the key or "
                "region changed since it was submitted."))
        state = STATES.get(raw, State.RUNNING)        # a status we do not know yet: still running
        if state == State.FAILED:
            return ProviderStatus(State.FAILED, raw, error_code=output.get("code") or "provider_failed",
                                  message=output.get("message") or f"{self.name} reported the task as failed.",
                                  cost=cost)
        if state == State.SUCCEEDED:
            return self._succeeded(task, raw, output, cost)
        return ProviderStatus(state, raw, cost=cost)

    def cancel(self, task):
        """Cancel at DashScope, which only works while the task is still PENDING."""
        if not task.get("provider_task_id"):
            return False
        response = self.http.request("POST", f"/tasks/{task['provider_task_id']}/cancel", idempotent=True,
                                     headers=self.auth_headers(), task_id=task["id"])
        if response.status_code == 200:
            return True
        if response.status_code == 400 and _error_fields(response)[0] == "UnsupportedOperation":
            log.info("task %s: %s would not cancel %s (no longer PENDING)", task["id"], self.name,
                     task["provider_task_id"])
            return False
        raise self._error(response, creating=False)

    def reconcile(self, task):
        """After a submit whose answer was lost: DashScope's id for it, from the batch task query.

        DashScope tasks carry no id of ours, so the task is found by what is known: the model and
        the moment it was sent. `GET /tasks/?start_time=&end_time=&model_name=&page_no=&page_size=`
        (Model Studio "Manage asynchronous tasks", batch query; PROVIDERS.md §3.6; the official SDK's
        `VideoSynthesis.list` sends the same parameters) lists the account's tasks in a window of at
        most 24 h given as `YYYYMMDDhhmmss`, read as Beijing time like the service's own timestamps,
        in pages of `data` entries with `task_id`, `model_name` and `status` (`total` counts them
        all). Exactly one candidate that no other studio task already owns (per the submit journal)
        is adopted; none or several leave the outcome unknown, with the console hint.
        """
        if not self.lists_tasks:
            raise SubmitOutcomeUnknown(
                f"The submit to {self.name} got no usable answer, and DashScope tasks carry no id of ours to "
                "look it up by. It was not sent again to avoid a double charge: check the task list in the "
                "Model Studio console, then retry this task if nothing was created.", provider=self.name)
        started = datetime.fromisoformat(task["submit_started_at"].replace("Z", "+00:00"))
        # From a little before the attempt was recorded until the read timeout has surely passed.
        window = (started - RECONCILE_SLACK, started + timedelta(seconds=self.read_timeout) + RECONCILE_SLACK)
        claimed = submit_journal.for_dir(self.data_dir).claimed()
        candidates = [t for t in self._listed(task, *window) if t not in claimed]
        if len(candidates) == 1:
            log.info("task %s: the batch task query found %s task %s", task["id"], self.name, candidates[0])
            return candidates[0]
        raise SubmitOutcomeUnknown(
            f"The submit to {self.name} got no usable answer, and DashScope tasks carry no id of ours to "
            f"look it up by; its task list shows {len(candidates) or 'no'} {task['model']} task"
            f"{'' if len(candidates) == 1 else 's'} from that moment. It was not sent again to avoid a double "
            "charge: check the task list in the Model Studio console, then retry this task if nothing was "
            "created.", provider=self.name)

    def _listed(self, task, start, end):
        """Task ids of the task's model created in [start, end], from every page of the batch query."""
        params = {"start_time": _beijing(start), "end_time": _beijing(end), "model_name": task["model"],
                  "page_size": LIST_PAGE_SIZE}
        found = []
        for page_no in range(1, LIST_MAX_PAGES + 1):
            response = self.http.get("/tasks/", params={**params, "page_no": page_no},
                                     headers=self.auth_headers(), task_id=task["id"])
            if response.status_code != 200:
                raise self._error(response, creating=False)
            body = json_body(response, self.name)
            entries = body.get("data")
            if not isinstance(entries, list):
                raise ProviderBadResponse(f"{self.name} answered the task list without data.",
                                          provider=self.name, http_status=200)
            found += [e["task_id"] for e in entries if isinstance(e, dict) and isinstance(e.get("task_id"), str)
                      and e.get("model_name") in (None, task["model"])]
            total = body.get("total")
            if not entries or not isinstance(total, int) or page_no * LIST_PAGE_SIZE >= total:
                return found
        # More candidates than we page through cannot be told apart anyway.
        raise SubmitOutcomeUnknown(f"{self.name}'s task list has too many tasks in the submit's window to tell "
                                   "which one is this task's; check the Model Studio console.", provider=self.name)

    # ---- request bodies

    def video_body(self, task):
        """The image-to-video create body (§3.3)."""
        params = task["params"]
        _check_prompts(self.name, params)
        body_input = {"img_url": self._data_uri(self.input_path(task, "first"))}
        if params.get("prompt"):
            body_input["prompt"] = params["prompt"]
        if params.get("negative_prompt"):
            body_input["negative_prompt"] = params["negative_prompt"]
        return {"model": task["model"], "input": body_input,
                "parameters": {"resolution": params["mode"], "duration": int(params["duration"]),
                               "prompt_extend": self.prompt_extend, "watermark": False}}

    def image_body(self, task):
        """The text-to-image create body (§3.4); `n` always explicit (the default is 4, billed each)."""
        params = task["params"]
        _check_prompts(self.name, params)
        width, height = IMAGE_SIZES[params["aspect_ratio"]]
        body_input = {"prompt": params["prompt"]}
        if params.get("negative_prompt"):
            body_input["negative_prompt"] = params["negative_prompt"]
        return {"model": task["model"], "input": body_input,
                "parameters": {"size": f"{width}*{height}", "n": int(params["n"]),
                               "prompt_extend": self.prompt_extend, "watermark": False}}

    def _data_uri(self, path):
        """The first frame as a data: URI Wan accepts (see the module docstring for the rules)."""
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if min(width, height) < MIN_SIDE:
                raise ProviderRejected(
                    f"Wan needs a first frame with both sides of at least {MIN_SIDE} px; this one is "
                    f"{width}×{height}. Use a larger picture.", provider=self.name, code="image_too_small")
            transparent = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
            if max(width, height) > MAX_SIDE or transparent:
                data = _fit_for_wan(img, transparent)
        mime = {"jpeg": "image/jpeg", "png": "image/png"}[media.sniff_format(data[:64])]
        return f"data:{mime};base64,{base64.b64encode(data).decode()}"

    # ---- answers

    def _succeeded(self, task, raw, output, cost):
        if task["kind"] == "video":
            url = output.get("video_url")
            if not url:
                raise ProviderBadResponse(f"{self.name} reported success without a video_url.",
                                          provider=self.name, http_status=200)
            meta = {"resolution": task["params"]["mode"], "duration": int(task["params"]["duration"]),
                    **_prompts_of(output)}
            return ProviderStatus(State.SUCCEEDED, raw, progress=100, cost=cost,
                                  outputs=[RemoteOutput("video", url=url, expires_at=_expiry(url), meta=meta)])
        results = [r for r in output.get("results") or [] if isinstance(r, dict)]
        outputs = [RemoteOutput("image", url=r["url"], expires_at=_expiry(r["url"]),
                                meta={"index": i, **_prompts_of(r)})
                   for i, r in enumerate(results) if r.get("url")]
        failures = [{"index": i, "code": r.get("code"), "message": r.get("message")}
                    for i, r in enumerate(results) if not r.get("url")]
        if not outputs:
            first = failures[0] if failures else {}
            return ProviderStatus(State.FAILED, raw, cost=cost, error_code=first.get("code") or "no_outputs",
                                  message=first.get("message") or f"{self.name} finished without any image.")
        cost = dict(cost or {})
        if isinstance(output.get("task_metrics"), dict):
            cost["task_metrics"] = output["task_metrics"]
        message = None
        if failures:
            cost["partial_failures"] = failures
            message = f"{len(failures)} of {len(results)} images failed: " + "; ".join(
                f"#{f['index'] + 1} {f['code']}: {f['message']}" for f in failures)
        return ProviderStatus(State.SUCCEEDED, raw, progress=100, outputs=outputs, cost=cost, message=message)

    def _error(self, response, *, creating):
        """The ProviderError for an HTTP error answer: the gateway's (if any), else the ERRORS table's."""
        claimed = self.gateway(response) if self.gateway else None
        if claimed:
            return claimed
        code, message, request_id = _error_fields(response)
        status = response.status_code
        facts = {"provider": self.name, "http_status": status, "provider_code": code, "request_id": request_id}
        context = {"provider": self.name, "key_setting": self.key_setting,
                   "detail": f"{code or f'HTTP {status}'}: {message or 'no message'}"}
        return map_error(ERRORS, response, code=code, phase=SUBMIT if creating else OTHER, context=context,
                         facts=facts)


def _check_prompts(provider, params):
    # The table already refuses these; DashScope would cut the text silently, so never send it.
    for field, limit in (("prompt", MAX_PROMPT), ("negative_prompt", MAX_NEGATIVE_PROMPT)):
        if len(params.get(field) or "") > limit:
            raise ProviderRejected(f"{field} is longer than {limit} characters, which Wan would cut short.",
                                   provider=provider, code="prompt_too_long")


def _fit_for_wan(img, transparent):
    """Re-encode a picture: long side at most MAX_SIDE, transparency flattened onto white."""
    was_jpeg = img.format == "JPEG"
    img = ImageOps.exif_transpose(img)      # the re-encoded file carries no EXIF orientation
    scale = min(1.0, MAX_SIDE / max(img.size))
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    if transparent:
        img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA"))
    out = io.BytesIO()
    img.convert("RGB").save(out, "JPEG" if was_jpeg else "PNG", **({"quality": 95} if was_jpeg else {}))
    return out.getvalue()


def _prompts_of(entry):
    return {key: entry[key] for key in ("orig_prompt", "actual_prompt") if entry.get(key)}


def _expiry(url):
    """When a result URL stops working: its signed OSS `Expires` (Unix seconds), at most 24 h away."""
    latest = (datetime.now(UTC) + RESULT_LIFETIME).isoformat()
    return downloads.link_expiry(url, latest).strftime("%Y-%m-%dT%H:%M:%SZ")


def _beijing(moment):
    """A moment as the batch task query's `YYYYMMDDhhmmss` (Beijing time)."""
    return moment.astimezone(BEIJING).strftime("%Y%m%d%H%M%S")


def _error_fields(response):
    """(code, message, request_id) of a DashScope error envelope; Nones when the body is not one."""
    try:
        body = response.json()
    except ValueError:
        return None, None, None
    if not isinstance(body, dict):
        return None, None, None
    return body.get("code"), body.get("message"), body.get("request_id")
