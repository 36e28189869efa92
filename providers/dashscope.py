"""Aliyun DashScope (Model Studio) Wan models: video from a first frame, from a first and a last
frame, or from text, and text-to-image (PROVIDERS.md §3 and §9.2).

Every kind is an asynchronous task: a create call (`X-DashScope-Async: enable`) answers with
`output.task_id`, `GET /tasks/{id}` reports PENDING/RUNNING/SUCCEEDED/FAILED/CANCELED/UNKNOWN and
the result URLs, which (like the task id) live 24 h. First-and-last-frame models (`*kf2v*`) have
their own endpoint (`/services/aigc/image2video/video-synthesis`, `first_frame_url` /
`last_frame_url`); text-to-video takes an exact `size` per resolution tier. Decisions worth knowing:

- `DASHSCOPE_REGION` picks the base URL *and* the region's model list (keys, URLs and models belong
  to one region, §9.2(e)); `DASHSCOPE_API_BASE` still overrides the URL.
- Tasks in flight are capped per model as documented (2 or 5, `model_cap`, §9.2(f)), and
  submissions are spaced to each model's documented rate.
- `prompt_extend` is sent as false unless the user asks for it: DashScope's default (true) has an
  LLM rewrite the prompt, so the video would follow text the user never wrote and the task takes
  longer. The rewritten text (`actual_prompt`) is kept in each output's meta. `seed` is sent when
  the user gives one.
- `n` is always sent: DashScope's default is 4 images, billed per image.
- The service silently truncates prompts past 800 (1500 for 2.5/2.6 video; negative 500) characters,
  so the capability table refuses longer text instead.
- Frames go as `data:{mime};base64,` URIs, the mime from the file's real format. Every source accepts
  sides of 360-2000 px: a frame down to 240 px on its short side is scaled up to 360 px, a larger one
  down to 2000 px, a PNG with transparency (which Wan does not take) is flattened onto white, and a
  file over 10 MB is re-encoded (JPEG quality steps, then smaller).
- Audio: wan2.6-i2v-flash has a documented switch (`parameters.audio`); wan2.5 and wan2.6-i2v add
  audio themselves (no switch is offered); the older models are silent.
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
import threading
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
from providers.base import N_, Provider, ProviderStatus, RemoteOutput, Throttle
from providers.base import ReportState as State
from providers.capabilities import ImageModel, ProviderTable, VideoModel, combos
from providers.errors_map import OTHER, SERVER_ERRORS, SUBMIT, map_error, rule
from providers.http import json_body

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://dashscope.aliyuncs.com/api/v1"
VIDEO_PATH = "/services/aigc/video-generation/video-synthesis"   # image-to-video and text-to-video
KF2V_PATH = "/services/aigc/image2video/video-synthesis"         # first-and-last-frame video (§9.2(a))
IMAGE_PATH = "/services/aigc/text2image/image-synthesis"
RESULT_LIFETIME = timedelta(hours=24)
MAX_PROMPT, MAX_NEGATIVE_PROMPT = 800, 500
LONG_PROMPT = 1500      # wan2.5 / wan2.6 video (older pages said 2000; the lower figure is safe) [D-i2v]
# Picture sides every source accepts (§9.2(g)): 360-2000 px. A first or last frame down to 240 px on
# its short side (the newest page's minimum) is scaled up to 360 px before it is sent.
MIN_SIDE, SEND_MIN_SIDE, MAX_SIDE = 240, 360, 2000
MAX_PICTURE_BYTES = 10 * 1024 * 1024    # 10 MB: the lower figure where mirrors disagree (2.5/2.6: 20 MB [?])

# Text-to-video `size` per resolution tier and aspect ratio (§9.2(c); [D-t2v]). The three ratios
# every tier has are offered.
T2V_SIZES = {
    "480P": {"16:9": "832*480", "9:16": "480*832", "1:1": "624*624"},
    "720P": {"16:9": "1280*720", "9:16": "720*1280", "1:1": "960*960"},
    "1080P": {"16:9": "1920*1080", "9:16": "1080*1920", "1:1": "1440*1440"},
}
T2V_RATIOS = ["16:9", "9:16", "1:1"]


def _seconds(low, high):
    return [str(n) for n in range(low, high + 1)]


# Wan video models, by the id each region's model list uses. `kind`: i2v (first frame, `img_url`),
# kf2v (first and last frame, its own endpoint), t2v (text, `size`). Resolutions and durations are
# cheapest first: the first value is what the studio uses when a request leaves it out. `audio`:
# None = silent; "auto" = the model adds audio itself, no documented switch; "switch" =
# `parameters.audio` (default on). `cap` = tasks in flight at once per account, `rps` = submissions
# a second (§9.2(f) [D-rl]). Sources: §3.3 and §9.2(a)-(c) [D-i2v][D-i2v-3p][D-kf2v][D-t2v].
def _i2v(label, resolutions, durations, cap=2, rps=2, audio=None, long_prompt=False, note=None):
    return {"kind": "i2v", "label": label, "resolutions": resolutions, "durations": durations, "cap": cap,
            "rps": rps, "audio": audio, "max_prompt": LONG_PROMPT if long_prompt else MAX_PROMPT, "note": note}


def _kf2v(label, resolutions, rps=2):
    return {**_i2v(label, resolutions, ["5"], rps=rps), "kind": "kf2v"}


def _t2v(label, resolutions, durations, cap=2, audio=None, long_prompt=False, note=None):
    return {**_i2v(label, resolutions, durations, cap=cap, rps=cap, audio=audio, long_prompt=long_prompt,
                   note=note), "kind": "t2v"}


WAN26_DURATIONS_NOTE = ("Duration: the current reference says 2-15 s, older copies 5/10/15 s; the studio offers "
                        "5, 10 and 15 s, which both allow.")
WAN26_I2V = _i2v("Wan 2.6 (image to video, with audio)", ["720P", "1080P"], ["5", "10", "15"], cap=5, rps=5,
                 audio="auto", long_prompt=True,
                 note=WAN26_DURATIONS_NOTE + " Whether parameters.audio applies to this model is told both "
                      "ways, so no audio switch is offered; the model adds audio itself.")
WAN26_T2V = _t2v("Wan 2.6 (text to video)", ["720P", "1080P"], ["5", "10", "15"], cap=5, long_prompt=True,
                 note=WAN26_DURATIONS_NOTE + " The sources read document no audio setting for it.")
VIDEO_MODELS = {
    "wan2.2-i2v-flash": _i2v("Wan 2.2 Flash (image to video)", ["480P", "720P", "1080P"], ["5"]),
    "wan2.2-i2v-plus": _i2v("Wan 2.2 Plus (image to video)", ["480P", "1080P"], ["5"]),
    "wanx2.1-i2v-turbo": _i2v("Wanx 2.1 Turbo (image to video)", ["480P", "720P"], ["3", "4", "5"]),
    "wanx2.1-i2v-plus": _i2v("Wanx 2.1 Plus (image to video)", ["720P"], ["5"]),
    "wan2.1-i2v-turbo": _i2v("Wan 2.1 Turbo (image to video)", ["480P", "720P"], ["3", "4", "5"]),
    "wan2.1-i2v-plus": _i2v("Wan 2.1 Plus (image to video)", ["720P"], ["5"]),
    "wan2.5-i2v-preview": _i2v("Wan 2.5 Preview (image to video, with audio)", ["480P", "720P", "1080P"],
                               ["5", "10"], cap=5, rps=5, audio="auto", long_prompt=True),
    "wan2.6-i2v": WAN26_I2V,
    "wan2.6-i2v-us": {**WAN26_I2V, "label": "Wan 2.6 US (image to video, with audio)"},
    "wan2.6-i2v-flash": _i2v("Wan 2.6 Flash (image to video, audio on/off)", ["720P", "1080P"], _seconds(2, 15),
                             cap=5, rps=5, audio="switch", long_prompt=True),
    "wan2.2-kf2v-flash": _kf2v("Wan 2.2 Flash (first and last frame)", ["480P", "720P", "1080P"]),
    "wanx2.1-kf2v-plus": _kf2v("Wanx 2.1 Plus (first and last frame)", ["720P"]),
    "wan2.1-kf2v-plus": _kf2v("Wan 2.1 Plus (first and last frame)", ["720P"], rps=1),
    "wanx2.1-t2v-turbo": _t2v("Wanx 2.1 Turbo (text to video)", ["480P", "720P"], ["5"]),
    "wanx2.1-t2v-plus": _t2v("Wanx 2.1 Plus (text to video)", ["720P"], ["5"]),
    "wan2.1-t2v-turbo": _t2v("Wan 2.1 Turbo (text to video)", ["480P", "720P"], ["5"]),
    "wan2.1-t2v-plus": _t2v("Wan 2.1 Plus (text to video)", ["720P"], ["5"]),
    "wan2.2-t2v-plus": _t2v("Wan 2.2 Plus (text to video)", ["480P", "1080P"], ["5"]),
    "wan2.5-t2v-preview": _t2v("Wan 2.5 Preview (text to video, with audio)", ["480P", "720P", "1080P"],
                               ["5", "10"], cap=5, audio="auto", long_prompt=True),
    "wan2.6-t2v": WAN26_T2V,
    "wan2.6-t2v-us": {**WAN26_T2V, "label": "Wan 2.6 US (text to video)"},
}
# Text-to-image models (§3.4, §9.2(d)), all on the same endpoint with the same parameters.
IMAGE_MODELS = {
    "wanx2.1-t2i-turbo": {"label": "Wanx 2.1 Turbo (text to image)", "cap": 2},
    "wanx2.1-t2i-plus": {"label": "Wanx 2.1 Plus (text to image)", "cap": 2},
    "wanx2.0-t2i-turbo": {"label": "Wanx 2.0 Turbo (text to image)", "cap": 2},
    "wan2.1-t2i-turbo": {"label": "Wan 2.1 Turbo (text to image)", "cap": 2},
    "wan2.1-t2i-plus": {"label": "Wan 2.1 Plus (text to image)", "cap": 2},
    "wan2.2-t2i-flash": {"label": "Wan 2.2 Flash (text to image)", "cap": 2},
    "wan2.2-t2i-plus": {"label": "Wan 2.2 Plus (text to image)", "cap": 2},
    "wan2.5-t2i-preview": {"label": "Wan 2.5 Preview (text to image)", "cap": 5, "sizes": "large",
                           "note": "Total pixels: [768x768, 1440x1440] in the reference, at least 1280x1280 in "
                                   "one mirror; the studio's sizes satisfy both."},
}
# Our aspect ratios as DashScope `size` "W*H": every side within 512..1440, at most about 2 MP.
IMAGE_SIZES = {
    "1:1": (1024, 1024), "16:9": (1280, 720), "9:16": (720, 1280), "4:3": (1152, 864),
    "3:4": (864, 1152), "3:2": (1248, 832), "2:3": (832, 1248), "21:9": (1440, 616),
}
# wan2.5-t2i-preview: total pixels within [1280², 1440²] (the stricter of the two lower bounds), ratio 1:4..4:1.
LARGE_IMAGE_SIZES = {
    "1:1": (1280, 1280), "16:9": (1728, 960), "9:16": (960, 1728), "4:3": (1504, 1128),
    "3:4": (1128, 1504), "3:2": (1584, 1056), "2:3": (1056, 1584), "21:9": (2016, 864),
}
IMAGE_N_MAX = 4

# Which models each region's keys can use, and its base URL (§9.2(e) [D-rl][D-kf2v]); the order is
# the table's (the first video and image model are the defaults). Singapore names 2.1 models
# `wan2.1-*`; `wan2.2-kf2v-flash` appears in a Singapore sample but not in its model list [?], so it
# is not offered there. Frankfurt has only workspace URLs: DASHSCOPE_API_BASE is required there.
REGIONS = {
    "beijing": {"base": DEFAULT_API_BASE, "models": [
        "wan2.2-i2v-flash", "wan2.2-i2v-plus", "wanx2.1-i2v-turbo", "wanx2.1-i2v-plus", "wan2.5-i2v-preview",
        "wan2.6-i2v", "wan2.6-i2v-flash", "wan2.2-kf2v-flash", "wanx2.1-kf2v-plus", "wanx2.1-t2v-turbo",
        "wanx2.1-t2v-plus", "wan2.2-t2v-plus", "wan2.5-t2v-preview", "wan2.6-t2v",
        "wanx2.1-t2i-turbo", "wanx2.1-t2i-plus", "wanx2.0-t2i-turbo", "wan2.2-t2i-flash", "wan2.2-t2i-plus",
        "wan2.5-t2i-preview"]},
    "singapore": {"base": "https://dashscope-intl.aliyuncs.com/api/v1", "models": [
        "wan2.2-i2v-plus", "wan2.1-i2v-turbo", "wan2.1-i2v-plus", "wan2.5-i2v-preview", "wan2.6-i2v",
        "wan2.6-i2v-flash", "wan2.1-kf2v-plus", "wan2.1-t2v-turbo", "wan2.1-t2v-plus", "wan2.2-t2v-plus",
        "wan2.5-t2v-preview", "wan2.6-t2v",
        "wan2.1-t2i-turbo", "wan2.1-t2i-plus", "wan2.2-t2i-flash", "wan2.2-t2i-plus", "wan2.5-t2i-preview"]},
    "virginia": {"base": "https://dashscope-us.aliyuncs.com/api/v1", "models": [
        "wan2.6-i2v", "wan2.6-i2v-us", "wan2.6-t2v", "wan2.6-t2v-us"]},
    "frankfurt": {"base": None, "models": ["wan2.6-i2v", "wan2.6-t2v"]},
}
# 302.ai's /aliyun pass-through: Beijing names [302-sdk], on the two documented paths (§2.5); the
# first-and-last-frame endpoint is not among them, so the kf2v models are not offered through 302.
PROXY_MODELS = [m for m in REGIONS["beijing"]["models"] if VIDEO_MODELS.get(m, {}).get("kind") != "kf2v"]

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
    rule(SubmitOutcomeUnknown, N_("%(provider)s failed while taking the submit (%(detail)s); the task may or may not "
                                  "exist there, so it is not sent again."), statuses=SERVER_ERRORS, phase=SUBMIT),
    rule(ProviderQuotaError, N_("%(provider)s refused for a billing reason (%(detail)s). Settle or top up the "
                                "Alibaba Cloud account (or turn off 'free tier only' for the model) and retry the "
                                "task."), codes=BILLING_CODES),
    rule(ProviderAuthError, N_("%(provider)s refused the key (%(detail)s). Check %(key_setting)s, and that the key, "
                               "the endpoint's region and the "
                               "model belong together and the model is activated."), codes=AUTH_CODES,
         statuses=(401, 403)),
    rule(ProviderRateLimited, N_("%(provider)s's quota allocated for this period is used up (%(detail)s); trying again "
                                 "later."), codes=("Throttling.AllocationQuota",), retry_after=True,
         retry_default=ALLOCATION_QUOTA_BACKOFF),
    rule(ProviderRateLimited, N_("%(provider)s is rate limiting (%(detail)s); trying again later."),
         codes=("Throttling*",), statuses=(429,), retry_after=True),
    rule(ProviderUnavailable, N_("%(provider)s is having trouble (%(detail)s)."), statuses=SERVER_ERRORS),
    rule(ProviderRejected, N_("%(provider)s does not know this model here (%(detail)s). Model names differ by region "
                              "(wan2.1-* on the "
                              "international endpoint, wanx2.1-* in Beijing)."), codes=("ModelNotFound",)),
    rule(ProviderRejected, N_("%(provider)s's content moderation refused the prompt or picture (%(detail)s). Change "
                              "them and try again."), codes=("DataInspectionFailed",)),
    rule(ProviderRejected, N_("%(provider)s rejected the request (%(detail)s).")),
]


def model_table(models=None):
    """The capability-table entries of the given Wan models (a region's, or a proxy's; Beijing's by default)."""
    table = []
    for model_id in models or REGIONS["beijing"]["models"]:
        if model_id in VIDEO_MODELS:
            table.append(_video_entry(model_id, VIDEO_MODELS[model_id]))
        else:
            spec = IMAGE_MODELS[model_id]
            table.append(ImageModel(
                id=model_id, label=spec["label"], text_to_image=True, image_to_image=False,
                aspect_ratios=list(IMAGE_SIZES), n_min=1, n_max=IMAGE_N_MAX, image_fidelity=False,
                human_fidelity=False, image_reference=[], negative_prompt_with_image=False,
                max_prompt=MAX_PROMPT, max_negative_prompt=MAX_NEGATIVE_PROMPT, seed=True, prompt_extend=True,
                note=spec.get("note")))
    return table


def _video_entry(model_id, spec):
    cells = combos((r, d) for r in spec["resolutions"] for d in spec["durations"])
    t2v = spec["kind"] == "t2v"
    return VideoModel(
        id=model_id, label=spec["label"], image_to_video=not t2v, text_to_video=t2v,
        modes=list(spec["resolutions"]), mode_label=RESOLUTION_LABEL, durations=list(spec["durations"]),
        combos=cells, tail_combos=cells if spec["kind"] == "kf2v" else [], cfg_scale=False, cameras=[],
        aspect_ratios=list(T2V_RATIOS) if t2v else [], max_prompt=spec["max_prompt"],
        max_negative_prompt=MAX_NEGATIVE_PROMPT, tail_required=True if spec["kind"] == "kf2v" else None,
        sound_combos=cells if spec["audio"] else None, sound_default=True if spec["audio"] else None,
        sound_switch=False if spec["audio"] == "auto" else None, seed=True, prompt_extend=True, note=spec["note"],
        # Frames down to 240 px are taken (and scaled up to 360 before sending, see _fit_for_wan).
        min_side=None if t2v else MIN_SIDE)


class DashScopeProvider(Provider):
    """Wan video and text-to-image through DashScope's asynchronous HTTP API, in one region."""

    name = "dashscope"
    key_setting = "DASHSCOPE_API_KEY"   # named in error messages
    # DashScope limits tasks in flight per model (2 or 5, §9.2(f)), which `model_cap` gives the
    # dispatcher; this is only the studio's own ceiling for all Wan models together.
    max_concurrency = 10
    query_rate = 20         # documented: about 20 status queries a second per account

    def __init__(self, config):
        super().__init__(config)
        self.region = config.get("DASHSCOPE_REGION") or "beijing"
        self.models = REGIONS[self.region]["models"]
        self.http = self.make_http(self.api_base())
        self.client = WanClient(self.name, self.http, api_key=self.api_key(), key_setting=self.key_setting,
                                input_path=self.input_path, data_dir=self.data_dir,
                                read_timeout=float(config.get("HTTP_TIMEOUT_SECONDS") or 30))
        self._submit_throttles = {}     # model -> Throttle at its documented submissions a second
        self._throttles_lock = threading.Lock()

    # ---- where a proxy of the same protocol differs

    def api_key(self):
        return self.config.get("DASHSCOPE_API_KEY")

    def api_base(self):
        """DASHSCOPE_API_BASE (a proxy, a workspace URL, a local server), else the region's URL."""
        base = self.config.get("DASHSCOPE_API_BASE") or REGIONS[self.region]["base"] or DEFAULT_API_BASE
        return base.rstrip("/")

    # ---- the provider interface: the protocol is the client's

    def configured(self):
        return bool(self.api_key())

    def capabilities(self):
        return ProviderTable(self.name, LABEL, DESCRIPTION, self.configured(), model_table(self.models)).as_dict()

    def model_cap(self, task):
        spec = VIDEO_MODELS.get(task["model"]) or IMAGE_MODELS.get(task["model"])
        return (task["model"], spec["cap"]) if spec else None

    def submit(self, task):
        spec = VIDEO_MODELS.get(task["model"])
        rps = spec["rps"] if spec else IMAGE_MODELS.get(task["model"], {}).get("cap", 2)
        with self._throttles_lock:
            throttle = self._submit_throttles.setdefault(task["model"], Throttle(rps))
        throttle.wait()         # DashScope counts submissions a second per model (§9.2(f))
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
                 async_header=True, lists_tasks=True, prompt_extend=False, gateway=None, states=None):
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
        self.states = states or STATES

    def auth_headers(self):
        return {"Authorization": f"Bearer {self.api_key}"}

    def async_headers(self):
        """Sent on create calls only: DashScope's HTTP API runs these models asynchronously only."""
        return {"X-DashScope-Async": "enable"} if self.async_header else {}

    def submit(self, task):
        """Create the task at DashScope and return its task id."""
        if task["kind"] == "video":
            kf2v = VIDEO_MODELS.get(task["model"], {}).get("kind") == "kf2v"
            path, body = (KF2V_PATH if kf2v else VIDEO_PATH), self.video_body(task)
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
                N_("%(name)s accepted the submit but its answer carried no task id; the task may exist "
                   "there, so it is not sent again."), provider=self.name, http_status=response.status_code,
                params={"name": self.name})
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
            raise ProviderBadResponse(N_("%(name)s answered a task query without output.task_status."),
                                      provider=self.name, http_status=200,
                                      params={"name": self.name})
        raw = output["task_status"]
        cost = body.get("usage") if isinstance(body.get("usage"), dict) else None
        if raw == "UNKNOWN":
            return ProviderStatus(State.FAILED, raw, error_code="task_unknown", message=(
                f"{self.name} no longer knows this task: task ids expire after 24 h, or the key or "
                "region changed since it was submitted."))
        state = self.states.get(raw, State.RUNNING)   # a status we do not know yet: still running
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
                N_("The submit to %(name)s got no usable answer, and DashScope tasks carry no id of ours to look it "
                   "up by. It was not sent again to avoid a double charge: check the task list in the Model Studio "
                   "console, then retry this task if nothing was created."), provider=self.name,
                params={"name": self.name})
        started = datetime.fromisoformat(task["submit_started_at"].replace("Z", "+00:00"))
        # From a little before the attempt was recorded until the read timeout has surely passed.
        window = (started - RECONCILE_SLACK, started + timedelta(seconds=self.read_timeout) + RECONCILE_SLACK)
        claimed = submit_journal.for_dir(self.data_dir).claimed()
        candidates = [t for t in self._listed(task, *window) if t not in claimed]
        if len(candidates) == 1:
            log.info("task %s: the batch task query found %s task %s", task["id"], self.name, candidates[0])
            return candidates[0]
        raise SubmitOutcomeUnknown(
            N_("The submit to %(name)s got no usable answer, and DashScope tasks carry no id of ours "
               "to look it up by; its task list shows %(count)d %(model)s tasks from that moment. It was not "
               "sent again to avoid a double charge: check the task list in the Model Studio console, then "
               "retry this task if nothing was created."), provider=self.name,
            params={"name": self.name, "count": len(candidates), "model": task["model"]})

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
                raise ProviderBadResponse(N_("%(name)s answered the task list without data."),
                                          provider=self.name, http_status=200,
                                          params={"name": self.name})
            found += [e["task_id"] for e in entries if isinstance(e, dict) and isinstance(e.get("task_id"), str)
                      and e.get("model_name") in (None, task["model"])]
            total = body.get("total")
            if not entries or not isinstance(total, int) or page_no * LIST_PAGE_SIZE >= total:
                return found
        # More candidates than we page through cannot be told apart anyway.
        raise SubmitOutcomeUnknown(N_("%(name)s's task list has too many tasks in the submit's window to tell which "
                                      "one is this task's; check the Model Studio console."), provider=self.name,
                                   params={"name": self.name})

    # ---- request bodies

    def video_body(self, task):
        """The create body: image-to-video (§3.3), first-and-last-frame (§9.2(a)) or text-to-video (§9.2(c))."""
        params = task["params"]
        spec = VIDEO_MODELS.get(task["model"]) or _i2v(task["model"], [], [])
        _check_prompts(self.name, params, spec["max_prompt"])
        body_input = {}
        parameters = {"duration": int(params["duration"])}
        if spec["kind"] == "t2v":
            parameters["size"] = T2V_SIZES[params["mode"]][params.get("aspect_ratio") or T2V_RATIOS[0]]
        else:
            parameters["resolution"] = params["mode"]
            if spec["kind"] == "kf2v":
                body_input["first_frame_url"] = self._data_uri(self.input_path(task, "first"), N_("first frame"))
                body_input["last_frame_url"] = self._data_uri(self.input_path(task, "tail"), N_("last frame"))
            else:
                body_input["img_url"] = self._data_uri(self.input_path(task, "first"), N_("first frame"))
        if params.get("prompt"):
            body_input["prompt"] = params["prompt"]
        if params.get("negative_prompt"):
            body_input["negative_prompt"] = params["negative_prompt"]
        if spec["audio"] == "switch" and params.get("sound") is not None:
            parameters["audio"] = bool(params["sound"])
        return {"model": task["model"], "input": body_input, "parameters": {**parameters, **self._options(params)}}

    def image_body(self, task):
        """The text-to-image create body (§3.4); `n` always explicit (the default is 4, billed each)."""
        params = task["params"]
        _check_prompts(self.name, params, MAX_PROMPT)
        sizes = LARGE_IMAGE_SIZES if IMAGE_MODELS.get(task["model"], {}).get("sizes") == "large" else IMAGE_SIZES
        width, height = sizes[params["aspect_ratio"]]
        body_input = {"prompt": params["prompt"]}
        if params.get("negative_prompt"):
            body_input["negative_prompt"] = params["negative_prompt"]
        return {"model": task["model"], "input": body_input,
                "parameters": {"size": f"{width}*{height}", "n": int(params["n"]), **self._options(params)}}

    def _options(self, params):
        """`prompt_extend` (the user's choice, else the client's), `watermark` off, and the user's `seed`."""
        prompt_extend = params.get("prompt_extend")
        options = {"prompt_extend": self.prompt_extend if prompt_extend is None else bool(prompt_extend),
                   "watermark": False}
        if params.get("seed") is not None:
            options["seed"] = int(params["seed"])
        return options

    def _data_uri(self, path, what):
        """A frame as a data: URI Wan accepts (see the module docstring for the rules)."""
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if min(width, height) < MIN_SIDE:
                raise ProviderRejected(
                    N_("Wan needs a %(what)s with both sides of at least %(min)s px; this one is "
                       "%(width)s×%(height)s. Use a larger picture."), provider=self.name, code="image_too_small",
                    params={"what": what, "min": MIN_SIDE, "width": width, "height": height})
            short, long = sorted((width, height))
            if short < SEND_MIN_SIDE and long * SEND_MIN_SIDE / short > MAX_SIDE:
                raise ProviderRejected(
                    N_("The %(what)s (%(width)s×%(height)s) is too narrow for Wan: scaled to %(send_min)s px on "
                       "its short side it would pass %(max)s px on the long one."), provider=self.name,
                    code="image_too_small",
                    params={"what": what, "width": width, "height": height, "send_min": SEND_MIN_SIDE,
                            "max": MAX_SIDE})
            transparent = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
            if (max(width, height) > MAX_SIDE or min(width, height) < SEND_MIN_SIDE or transparent
                    or len(data) > MAX_PICTURE_BYTES):
                data = _fit_for_wan(img, transparent)
        mime = {"jpeg": "image/jpeg", "png": "image/png"}[media.sniff_format(data[:64])]
        return f"data:{mime};base64,{base64.b64encode(data).decode()}"

    # ---- answers

    def _succeeded(self, task, raw, output, cost):
        if task["kind"] == "video":
            url = output.get("video_url")
            if not url:
                raise ProviderBadResponse(N_("%(name)s reported success without a video_url."),
                                          provider=self.name, http_status=200,
                                          params={"name": self.name})
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


def _check_prompts(provider, params, max_prompt):
    # The table already refuses these; DashScope would cut the text silently, so never send it.
    for field, limit in (("prompt", max_prompt), ("negative_prompt", MAX_NEGATIVE_PROMPT)):
        if len(params.get(field) or "") > limit:
            raise ProviderRejected(N_("%(field)s is longer than %(limit)s characters, which Wan would cut short."),
                                   provider=provider, code="prompt_too_long",
                                   params={"field": field, "limit": limit})


def _fit_for_wan(img, transparent):
    """Re-encode a picture: sides within SEND_MIN_SIDE..MAX_SIDE (ratio kept), transparency flattened
    onto white, and at most MAX_PICTURE_BYTES (JPEG quality steps, then smaller)."""
    was_jpeg = img.format == "JPEG"
    img = ImageOps.exif_transpose(img)      # the re-encoded file carries no EXIF orientation
    scale = min(MAX_SIDE / max(img.size), max(1.0, SEND_MIN_SIDE / min(img.size)))
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    if transparent:
        img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA"))
    img = img.convert("RGB")
    out = io.BytesIO()
    img.save(out, "JPEG" if was_jpeg else "PNG", **({"quality": 95} if was_jpeg else {}))
    for quality in (90, 80, 70, 60):
        if out.tell() <= MAX_PICTURE_BYTES:
            break
        out = io.BytesIO()
        img.save(out, "JPEG", quality=quality)
    while out.tell() > MAX_PICTURE_BYTES and min(img.size) * 0.8 >= SEND_MIN_SIDE:
        img = img.resize((round(img.width * 0.8), round(img.height * 0.8)), Image.LANCZOS)
        out = io.BytesIO()
        img.save(out, "JPEG", quality=60)
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
