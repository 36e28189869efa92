"""The Kling official API (klingai.com): image-to-video, text-to-video and image generation.

Translates a studio task into Kling's JSON (PROVIDERS.md §1): `model_name`, raw Base64 pictures
(never a `data:` URI), `duration` as a string, no `cfg_scale` for the v2.x models, and our task id as
`external_task_id`, which makes an ambiguous submit reconcilable (`GET <create path>/<our id>`).
Every call carries a short-lived HS256 JWT minted from KLING_ACCESS_KEY / KLING_SECRET_KEY and
reused until five minutes before it expires. Errors are mapped from Kling's structured `code`, never
from HTTP status alone: a 429 can be a rate limit (retry later) or an empty wallet (do not).
The query path is derived from the task itself (image task, or video with/without a first frame),
so it always matches the create path.
"""

import base64
import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import jwt

from errors import (
    ProviderAuthError,
    ProviderBadResponse,
    ProviderError,
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

DEFAULT_API_BASE = "https://api-beijing.klingai.com"
IMAGE2VIDEO, TEXT2VIDEO, IMAGES = "/v1/videos/image2video", "/v1/videos/text2video", "/v1/images/generations"
TOKEN_LIFETIME = 1800          # seconds; the documented example
TOKEN_REFRESH_MARGIN = 300     # mint a new token this long before the old one expires
RESULT_LIFETIME = timedelta(days=30)
MAX_PROMPT = 2500
VIDEO_RATIOS = ["16:9", "9:16", "1:1"]
IMAGE_RATIOS = ["16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9"]
STATES = {"submitted": State.QUEUED, "processing": State.RUNNING, "succeed": State.SUCCEEDED,
          "failed": State.FAILED}
NOT_FOUND = 1203               # Kling's "task not found"

# Our camera moves as Kling `simple` camera_control (exactly one axis non-zero). Kling's signs:
# zoom < 0 = longer focal length, narrower view (zoom in); pan < 0 turns left; tilt > 0 turns up.
# 5 is the middle of Kling's [-10, 10] strength range.
SIMPLE_MOVES = {"zoom_in": ("zoom", -5), "zoom_out": ("zoom", 5), "pan_left": ("pan", -5),
                "pan_right": ("pan", 5), "tilt_up": ("tilt", 5), "tilt_down": ("tilt", -5)}
CAMERA_AXES = ("horizontal", "vertical", "pan", "tilt", "roll", "zoom")
PRESET_MOVES = ["down_back", "forward_up", "right_turn_forward", "left_turn_forward"]

# Models with no std/pro choice (§1.9): the table offers one level, "std", and no `mode` is sent.
SINGLE_QUALITY = {"kling-v2-master", "kling-v2-1-master"}

_ALL = (("std", "5"), ("std", "10"), ("pro", "5"), ("pro", "10"))
_PRO = (("pro", "5"), ("pro", "10"))
_STD = (("std", "5"), ("std", "10"))
V3_DURATIONS = tuple(str(seconds) for seconds in range(3, 16))     # "3" … "15" [K-v3]
_V3 = tuple((mode, d) for mode in ("std", "pro") for d in V3_DURATIONS)

LABEL = N_("Kling (official API)")
DESCRIPTION = N_("Kuaishou's Kling models through api-*.klingai.com with your AccessKey/SecretKey. "
                 "Kling keeps results 30 days; the studio saves them at once.")
SINGLE_QUALITY_LABEL = N_("Quality (one level)")


def _video(model_id, label, *, t2v, cells=_ALL, tail=(), cfg_scale=False, cameras=(), camera_cells=(),
           camera_for=(), durations=("5", "10"), sound=(), note=None):
    single = model_id in SINGLE_QUALITY
    return VideoModel(
        id=model_id, label=label, image_to_video=True, text_to_video=t2v,
        modes=["std"] if single else sorted({mode for mode, _ in cells}, key=["std", "pro"].index),
        durations=list(durations), combos=combos(cells),
        tail_combos=combos(tail), cfg_scale=cfg_scale, cameras=list(cameras),
        aspect_ratios=VIDEO_RATIOS if t2v else [], max_prompt=MAX_PROMPT,
        mode_label=SINGLE_QUALITY_LABEL if single else None,
        camera_combos=combos(camera_cells) if cameras else None, camera_for=list(camera_for) if cameras else None,
        camera_with_tail=False if cameras else None,
        # Sound never goes with a tail frame: v2.6 renders a tail frame silent only [K-cap]; v3 does not say.
        sound_combos=combos(sound) if sound else None, sound_with_tail=False if sound else None, note=note)


def _image(model_id, label, *, t2i=True, i2i=False, ratios=IMAGE_RATIOS, fidelity=False, references=()):
    return ImageModel(id=model_id, label=label, text_to_image=t2i, image_to_image=i2i,
                      aspect_ratios=list(ratios), n_min=1, n_max=9, image_fidelity=fidelity,
                      human_fidelity="subject" in references, image_reference=list(references),
                      negative_prompt_with_image=False, prompt_required=True, max_prompt=MAX_PROMPT)


# PROVIDERS.md §1.7, §1.9 and §9.1, cell by cell ([K-cap], [K-i2v]; v3 from [K-v3], [K-arc]).
# kling-video-o1 is not here: it runs on the Omni endpoint, not on image2video / text2video.
MODEL_TABLE = [
    _video("kling-v1", "Kling v1 (720p)", t2v=True, tail=(("std", "5"), ("pro", "5")), cfg_scale=True,
           cameras=[*SIMPLE_MOVES, *PRESET_MOVES], camera_cells=(("std", "5"),), camera_for=["text_to_video"]),
    _video("kling-v1-5", "Kling v1.5 (std 720p / pro 1080p)", t2v=False, tail=_PRO, cfg_scale=True,
           cameras=list(SIMPLE_MOVES), camera_cells=(("pro", "5"),), camera_for=["image_to_video"]),
    _video("kling-v1-6", "Kling v1.6 (std 720p / pro 1080p)", t2v=True, tail=_PRO, cfg_scale=True),
    _video("kling-v2-master", "Kling v2 Master (720p)", t2v=True, cells=_STD),
    _video("kling-v2-1", "Kling v2.1 (std 720p / pro 1080p; from a picture only)", t2v=False, tail=_PRO),
    _video("kling-v2-1-master", "Kling v2.1 Master (1080p)", t2v=True, cells=_STD),
    _video("kling-v2-5-turbo", "Kling v2.5 Turbo (pro 1080p)", t2v=True, cells=_PRO, tail=_PRO,
           note="Sources disagree on std: the capability map's feature table ticks std 5/10 s, its mode table, "
                "ComfyUI's node and Liblib's Kling relay say pro only; the studio offers pro only."),
    _video("kling-v2-6", "Kling v2.6 (sound in pro)", t2v=True, tail=_PRO, sound=_PRO,
           note="std renders silent video only; pro may have sound (sound on/off, off by default); a tail "
                "frame is silent only."),
    _video("kling-v3", "Kling v3 (std 720p / pro 1080p, 3-15 s)", t2v=True, cells=_V3, tail=_V3, sound=_V3,
           durations=V3_DURATIONS,
           note="From mirrors of the Series 3.0 specification: tail frame in std and pro comes from one client; "
                "cfg_scale is listed on some pages only and is not offered; sound is not offered with a tail "
                "frame (not stated either way)."),
    _image("kling-v1", "Kling v1 (text or whole-picture reference)", i2i=True, ratios=IMAGE_RATIOS[:-1],
           fidelity=True),
    _image("kling-v1-5", "Kling v1.5 (text, subject or face reference)", i2i=True, fidelity=True,
           references=("subject", "face")),
    _image("kling-v2", "Kling v2 (text to image)"),
    _image("kling-v2-new", "Kling v2 restyle (needs a picture)", t2i=False, i2i=True),
    _image("kling-v2-1", "Kling v2.1 (text to image)"),
]
MODELS = [model.as_dict() for model in MODEL_TABLE]     # the dict form, for readers of the module

# Kling's structured codes (PROVIDERS.md §1.10), then the HTTP status where the code is not one of
# them. Never the HTTP status alone first: a 429 can be a rate limit (retry later) or an empty
# wallet (do not). `{said}` is Kling's own message, shown, never matched.
ERRORS = [
    rule(ProviderAuthError, N_("Kling refused the credentials: check KLING_ACCESS_KEY and KLING_SECRET_KEY (keys only "
                               "work on their own region's API base)."), codes=(1000, 1001, 1002)),
    rule(ProviderAuthError, N_("Kling says the token is not valid at its time: check this server's clock (NTP)."),
         codes=(1003, 1004)),
    rule(ProviderQuotaError, N_("Kling reports a problem with the account: check it in the Kling console."),
         codes=(1100,)),
    rule(ProviderQuotaError, N_("The Kling account is out of credit (arrears or resource pack used up): top up in the "
                                "Kling console, then retry the task."), codes=(1101, 1102)),
    rule(ProviderAuthError, N_("This Kling key has no permission for this model or endpoint: enable it in the Kling "
                               "console or choose another model."), codes=(1103,)),
    rule(ProviderAuthError, N_("Kling refused this server's IP address: add it to the key's IP whitelist."),
         codes=(1304,)),
    rule(ProviderRejected, N_("Kling's content policy refused the request (%(said)s): change the prompt or the "
                              "pictures."), codes=(1300, 1301)),
    rule(ProviderRejected, N_("Kling refused the request: %(said)s"), codes=(1200, 1201, 1202, NOT_FOUND)),
    rule(ProviderRateLimited, N_("Kling is busy for this account (%(said)s); trying again later."),
         codes=(1302, 1303), retry_after=True),
    # The server may have created the task before failing: reconcile, never resend.
    rule(SubmitOutcomeUnknown, N_("Kling failed while taking the submit (HTTP %(status)s, code %(code)s); it may "
                                  "have been accepted, so it is not sent again."), codes=(5000, 5001, 5002),
         statuses=(429, *SERVER_ERRORS), phase=SUBMIT),
    rule(ProviderRateLimited, N_("Kling is rate-limiting queries."), statuses=(429,), phase=OTHER),
    rule(ProviderUnavailable, N_("Kling is unavailable (HTTP %(status)s, code %(code)s)."), codes=(5000, 5001, 5002),
         statuses=SERVER_ERRORS, phase=OTHER),
    rule(ProviderRejected, N_("Kling refused the request (HTTP %(status)s, code %(code)s): %(said)s")),
]


def official_task_id(data):
    """The created task's id where Kling's own API puts it."""
    return data.get("task_id") if isinstance(data, dict) else None


def official_accepted(response, envelope):
    """Kling's own success: HTTP 2xx with `code == 0`."""
    return response.ok and envelope.get("code") == 0


def slots(task):
    """Kling counts an image task as n concurrent tasks (§1.11)."""
    return int(task["params"].get("n") or 1) if task["kind"] == "image" else 1


def camera_control(camera):
    """Kling's camera_control object for one of our camera values."""
    if camera in SIMPLE_MOVES:
        axis, amount = SIMPLE_MOVES[camera]
        return {"type": "simple", "config": {name: amount if name == axis else 0 for name in CAMERA_AXES}}
    if camera in PRESET_MOVES:
        return {"type": camera}     # the preset types take no config
    raise ProviderRejected(N_("Kling has no camera move '%(camera)s'."), provider="kling",
                           params={"camera": camera})


class KlingProvider(Provider):
    """Kling's official HTTP API with AK/SK JWT auth."""

    name = "kling"
    # Kling publishes no number: the cap depends on the account's resource pack (set KLING_MAX_CONCURRENCY).
    max_concurrency = 5

    def __init__(self, config):
        super().__init__(config)
        self.clock = time.time          # tests move it to age the cached token
        self._token_lock = threading.Lock()
        self._token = None
        self._token_renew_at = 0
        self.http = self.make_http(config.get("KLING_API_BASE") or DEFAULT_API_BASE)
        self.client = KlingClient(self.name, self.http, self.authorization, self.input_path)

    def configured(self):
        return bool(self.config.get("KLING_ACCESS_KEY") and self.config.get("KLING_SECRET_KEY"))

    def capabilities(self):
        return ProviderTable(self.name, LABEL, DESCRIPTION, self.configured(), MODEL_TABLE).as_dict()

    def slots(self, task):
        return slots(task)

    # ---- auth

    def auth_token(self, fresh=False):
        """The cached JWT, minted again when `fresh` or within five minutes of expiry."""
        with self._token_lock:
            now = int(self.clock())
            if fresh or self._token is None or now >= self._token_renew_at:
                claims = {"iss": self.config["KLING_ACCESS_KEY"], "exp": now + TOKEN_LIFETIME, "nbf": now - 5}
                self._token = jwt.encode(claims, self.config["KLING_SECRET_KEY"], algorithm="HS256",
                                         headers={"alg": "HS256", "typ": "JWT"})
                self._token_renew_at = now + TOKEN_LIFETIME - TOKEN_REFRESH_MARGIN
            return self._token

    def authorization(self, fresh=False):
        return f"Bearer {self.auth_token(fresh=fresh)}"

    # ---- calls: the protocol is the client's

    def request_body(self, task):
        return self.client.request_body(task)

    def submit(self, task):
        return self.client.submit(task)

    def query(self, task):
        return self.client.query(task)

    def reconcile(self, task):
        return self.client.reconcile(task)


class KlingClient:
    """Kling's protocol over one HttpClient, for whoever serves it: Kling itself, or a proxy of the
    same protocol (302.ai) with its own base URL, authorization, created-id reader and gateway errors.

    `authorization(fresh)` gives the Authorization header value (`fresh` after a 1004, token
    expired); `gateway(response, envelope)` may claim an error answer before Kling's table does.
    """

    def __init__(self, name, http, authorization, input_path, *, created_task_id=official_task_id,
                 gateway=None, accepted=None, not_found_is_proof=True):
        self.name = name
        self.http = http
        self.authorization = authorization
        self.input_path = input_path
        self.created_task_id = created_task_id
        self.gateway = gateway
        self.accepted = accepted or official_accepted
        # Kling's own 1203 to a lookup by our external id proves nothing was created; a proxy's may not.
        self.not_found_is_proof = not_found_is_proof

    def submit(self, task):
        path, body = self.request_body(task)
        data = self._call("POST", path, task, body=body)
        task_id = self.created_task_id(data)
        if not task_id:
            raise SubmitOutcomeUnknown(N_("Kling accepted the submit but sent no task id; it is not re-sent."),
                                       provider=self.name)
        return str(task_id)

    def query(self, task):
        try:
            data = self._call("GET", f"{self._path(task)}/{task['provider_task_id']}", task)
        except ProviderRejected as exc:
            if exc.provider_code != NOT_FOUND:
                raise
            return ProviderStatus(State.FAILED, raw_status="not_found", error_code="provider_task_missing",
                                  message="Kling no longer knows this task (results are deleted after 30 days).")
        if not isinstance(data, dict):
            raise ProviderBadResponse(N_("Kling answered the query without a task object."), provider=self.name)
        raw = data.get("task_status")
        cost = data.get("final_unit_deduction")
        status = ProviderStatus(STATES.get(raw, State.RUNNING), raw_status=raw,
                                cost={"units": cost} if cost not in (None, "") else None)
        if status.state == State.SUCCEEDED:
            status.outputs = self._outputs(task, data)
        elif status.state == State.FAILED:
            status.message = data.get("task_status_msg") or "Kling reported the task as failed."
            status.error_code = "kling_task_failed"
        return status

    def reconcile(self, task):
        """Look the task up by our id (sent as external_task_id): Kling's task id, or None if absent."""
        try:
            data = self._call("GET", f"{self._path(task)}/{task['id']}", task)
        except ProviderError as exc:
            if exc.provider_code == NOT_FOUND and self.not_found_is_proof:
                return None          # Kling's "not found": certainly not created, safe to submit
            if exc.provider_code == NOT_FOUND:
                raise SubmitOutcomeUnknown(
                    N_("%(name)s answered 'not found' to the lookup by our task id, which does not prove "
                       "that nothing was created (the lookup may not reach the model provider); outcome "
                       "unknown, not re-sent to avoid a double charge."), provider=self.name,
                    params={"name": self.name}) from None
            # Anything else, even a bare 404 (1202 "invalid method", a proxy's page), proves nothing.
            if isinstance(exc, ProviderRateLimited | ProviderUnavailable):
                raise                # busy or down: the pipeline looks again later
            raise SubmitOutcomeUnknown(
                N_("Kling could not say whether the submit reached it (%(message)s); outcome unknown, "
                   "not re-sent to avoid a double charge."), provider=self.name,
                params={"message": exc.message}) from None
        found = data if isinstance(data, dict) else {}
        external = (found.get("task_info") or {}).get("external_task_id")
        if not found.get("task_id") or external not in (None, task["id"]):
            raise SubmitOutcomeUnknown(N_("Kling's answer to the lookup by our task id was not this task; outcome "
                                          "unknown, not re-sent."), provider=self.name)
        return str(found["task_id"])

    def _call(self, method, path, task, body=None):
        """One Kling call with a fresh-token retry on 1004; returns the envelope's `data`."""
        submitting = method == "POST"
        for attempt in (1, 2):
            headers = {"Authorization": self.authorization(fresh=attempt == 2), "Content-Type": "application/json"}
            if submitting:
                response = self.http.submit(path, json=body, headers=headers, task_id=task["id"])
            else:
                response = self.http.get(path, headers=headers, task_id=task["id"])
            with response:
                envelope = self._envelope(response, submitting)
            code = envelope.get("code")
            if self.accepted(response, envelope):
                return envelope.get("data")
            if code == 1004 and attempt == 1:
                # The server refused the expired token before doing anything: mint one and resend.
                log.info("kling task %s: token expired at the server; minting a new one", task["id"])
                continue
            raise self._error(response, envelope, submitting)
        raise AssertionError("unreachable")

    def _envelope(self, response, submitting):
        """The JSON envelope; a non-JSON answer is mapped by what it can mean."""
        try:
            return json_body(response, self.name)
        except ProviderBadResponse:
            status = response.status_code
            if submitting and (status < 400 or status == 429 or status >= 500):
                raise SubmitOutcomeUnknown(N_("Kling answered the submit with HTTP %(status)s and no readable body; "
                                              "it may have been accepted, so it is not sent again."),
                                           provider=self.name, http_status=status,
                                           params={"status": status}) from None
            if status >= 500:
                raise ProviderUnavailable(N_("Kling is unavailable (HTTP %(status)s)."), provider=self.name,
                                          http_status=status,
                                          params={"status": status}) from None
            raise

    def _error(self, response, envelope, submitting):
        """The ProviderError for a Kling error envelope, from the gateway (if any) or the ERRORS table."""
        claimed = self.gateway(response, envelope) if self.gateway else None
        if claimed:
            return claimed
        code = envelope.get("code")
        facts = {"provider": self.name, "http_status": response.status_code, "provider_code": code,
                 "request_id": envelope.get("request_id")}
        return map_error(ERRORS, response, code=code, phase=SUBMIT if submitting else OTHER,
                         context={"said": str(envelope.get("message") or "")[:200]}, facts=facts)

    # ---- translation

    def _path(self, task):
        if task["kind"] == "image":
            return IMAGES
        return IMAGE2VIDEO if self.input_path(task, "first") else TEXT2VIDEO

    def _base64(self, task, role):
        path = self.input_path(task, role)
        return base64.b64encode(path.read_bytes()).decode("ascii") if path else None

    def request_body(self, task):
        """(create path, JSON body) for a task."""
        params, model = task["params"], task["model"]
        body = {"model_name": model}
        if task["kind"] == "image":
            body.update(self._image_fields(task, params))
        else:
            body.update(self._video_fields(task, params))
        body["external_task_id"] = task["id"]
        return self._path(task), body

    def _video_fields(self, task, params):
        fields = {}
        first = self._base64(task, "first")
        if first:
            fields["image"] = first
            tail = self._base64(task, "tail")
            if tail:
                fields["image_tail"] = tail
        else:
            fields["aspect_ratio"] = params.get("aspect_ratio") or VIDEO_RATIOS[0]
        for name in ("prompt", "negative_prompt"):
            if params.get(name):
                fields[name] = params[name]
        if task["model"] not in SINGLE_QUALITY:
            fields["mode"] = params["mode"]
        fields["duration"] = str(params["duration"])
        # The table gives cfg_scale only to v1.x; the guard keeps it off v2.x and v3 even for an old record.
        if params.get("cfg_scale") is not None and task["model"].startswith("kling-v1"):
            fields["cfg_scale"] = params["cfg_scale"]
        if params.get("sound") is not None:
            fields["sound"] = "on" if params["sound"] else "off"
        if params.get("camera"):
            fields["camera_control"] = camera_control(params["camera"])
        return fields

    def _image_fields(self, task, params):
        if not params.get("prompt"):
            raise ProviderRejected(N_("Kling needs a prompt for every image task: create the task again with one."),
                                   provider=self.name)
        fields = {"prompt": params["prompt"]}
        reference = self._base64(task, "reference")
        if reference:
            fields["image"] = reference
            # Kling requires image_reference for kling-v1-5 with a picture; "subject" is the general one.
            kind = params.get("image_reference") or ("subject" if task["model"] == "kling-v1-5" else None)
            if kind:
                fields["image_reference"] = kind
            if params.get("image_fidelity") is not None:
                fields["image_fidelity"] = params["image_fidelity"]
            if kind == "subject" and params.get("human_fidelity") is not None:
                fields["human_fidelity"] = params["human_fidelity"]
        elif params.get("negative_prompt"):
            fields["negative_prompt"] = params["negative_prompt"]   # Kling refuses it with a picture
        fields.update(n=int(params.get("n") or 1), aspect_ratio=params["aspect_ratio"])
        return fields

    def _outputs(self, task, data):
        result = data.get("task_result") or {}
        # Kling deletes results 30 days after the task finished (updated_at, Unix ms); a signed
        # URL's own Expires, when it has one, is honoured by the downloader.
        finished = data.get("updated_at")
        finished = (datetime.fromtimestamp(finished / 1000, UTC) if isinstance(finished, int | float)
                    else datetime.now(UTC))
        expires_at = (finished + RESULT_LIFETIME).strftime("%Y-%m-%dT%H:%M:%SZ")
        if task["kind"] == "image":
            items = sorted(result.get("images") or [], key=lambda item: item.get("index") or 0)
            return [RemoteOutput("image", url=item["url"], expires_at=expires_at, meta={"index": item.get("index")})
                    for item in items if item.get("url")]
        return [RemoteOutput("video", url=item["url"], expires_at=expires_at,
                             meta={"id": item.get("id"), "duration": item.get("duration")})
                for item in result.get("videos") or [] if item.get("url")]
