"""LiblibAI's open API: Star-3 Alpha and custom checkpoints ("liblib-custom") (PROVIDERS.md §4, §9.4).

Every call is a JSON POST signed in the query string: `AccessKey`, `Timestamp` (ms),
`SignatureNonce` (uuid4) and `Signature` = unpadded URL-safe Base64 of
HMAC-SHA1(SecretKey, "<path>&<Timestamp>&<SignatureNonce>"). The signature is a `requests` auth
hook, so each attempt the shared HTTP helper makes (query retries included) is signed afresh:
Liblib refuses a reused nonce.

Three models. `star-3-alpha-t2i` draws from text in one of eight aspect ratios (three of Liblib's
presets, five explicit sizes); `star-3-alpha-i2i` has no size field at all, so its result keeps
the reference picture's shape ("source"). The ids before the brief's (`star-3-alpha`,
`star-3-alpha-img2img`) stay aliases, so stored tasks and old scripts still work. `liblib-custom`
runs any Liblib checkpoint through the WebUI templates of its family (1.5 / XL share one, F.1 has
its own), with up to 5 LoRAs, sampler, steps, CFG, size, seed, negative prompt and hi-res fix; its
settings and their ranges are the table's `advanced` entry. A reference picture is uploaded first
(signature call, then an OSS PostObject with `file` last and no Liblib credentials) and sent as a
URL: Liblib takes no Base64.

Liblib allows one submit a second per key, counted over every process using it, so submits pass
through `submit_slot`, a file lock and a timestamp in DATA_DIR. Errors are decided from the
published codes of §9.4 (in an HTTP 200 as often as in an error status); a rate or concurrency
refusal keeps the task queued for another try. Liblib keeps no client id, so a submit whose
outcome is unknown cannot be reconciled; there is no cancel API.
"""

import base64
import hashlib
import hmac
import logging
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import requests

import fileio
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
from providers.capabilities import ImageModel, ProviderTable
from providers.errors_map import OTHER, SERVER_ERRORS, SUBMIT, map_error, rule
from providers.http import json_body

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://openapi.liblibai.cloud"
TEXT2IMG_PATH = "/api/generate/webui/text2img/ultra"
IMG2IMG_PATH = "/api/generate/webui/img2img/ultra"
STATUS_PATH = "/api/generate/webui/status"
UPLOAD_SIGNATURE_PATH = "/api/generate/upload/signature"
TEXT2IMG_TEMPLATE = "5d7e67009b344550bc1aa6ccbfa1d7f4"
IMG2IMG_TEMPLATE = "07e00af4fc464c7ab55ff906f8acf1b7"
TEXT2IMG_MODEL, IMG2IMG_MODEL, CUSTOM_MODEL = "star-3-alpha-t2i", "star-3-alpha-i2i", "liblib-custom"
# The ids the studio used before the brief's: stored tasks carry them, scripts may still send them.
MODEL_ALIASES = {"star-3-alpha": TEXT2IMG_MODEL, "star-3-alpha-img2img": IMG2IMG_MODEL}

# liblib-custom: the WebUI endpoints and the template of each base family [LB-doc2 4.4.1, LB-cli].
# 1.5 and XL share a template; "v3" has none named in the sources, so it is not offered.
WEBUI_TEXT2IMG_PATH, WEBUI_IMG2IMG_PATH = "/api/generate/webui/text2img", "/api/generate/webui/img2img"
CUSTOM_TEMPLATES = {("1.5", "text2img"): "e10adc3949ba59abbe56e057f20f883e",
                    ("xl", "text2img"): "e10adc3949ba59abbe56e057f20f883e",
                    ("f.1", "text2img"): "6f7c4652458d4802969f8d089cf5b91f",
                    ("1.5", "img2img"): "9c7d531dc75f476aa833b3d452b8f7ad",
                    ("xl", "img2img"): "9c7d531dc75f476aa833b3d452b8f7ad",
                    ("f.1", "img2img"): "63b72710c9574457ba303d9d9b8df8bd"}
# Liblib's sampler enum follows the WebUI's sampler order; the examples send 15 (DPM++ 2M Karras) [LB-doc].
# The list itself is not in the sources read [?]: these are the WebUI's first 20, in its order.
SAMPLERS = ["Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ SDE",
            "DPM fast", "DPM adaptive", "LMS Karras", "DPM2 Karras", "DPM2 a Karras", "DPM++ 2S a Karras",
            "DPM++ 2M Karras", "DPM++ SDE Karras", "DDIM", "PLMS", "UniPC"]
# Ranges of the official parameter tables [LB-doc2 4.2]; the defaults are the examples' [LB-doc].
CUSTOM = {
    "base_models": ["xl", "1.5", "f.1"],
    "checkpoint_required": ["xl", "1.5"],      # the F.1 template has a default checkpoint
    "samplers": SAMPLERS, "sampler_default": 15,
    "steps": {"min": 1, "max": 60, "default": 30},
    "cfg_scale": {"min": 1.0, "max": 15.0, "default": 7.0},
    "width": {"min": 128, "max": 1536, "default": 1024},
    "height": {"min": 128, "max": 1536, "default": 1024},
    "seed": {"min": 0, "max": 2147483647},     # none = random (Liblib's -1)
    "loras": {"max": 5, "weight_min": -4.0, "weight_max": 4.0, "weight_default": 0.8},
    "hires_fix": {"steps": {"min": 1, "max": 30, "default": 20},
                  "denoising_strength": {"min": 0.0, "max": 1.0, "default": 0.5},
                  "width": {"min": 128, "max": 2048}, "height": {"min": 128, "max": 2048},
                  "upscaler_default": 10},
    "resized_side": {"min": 128, "max": 2048},  # img2img: the result's sides
}
DENOISING_STRENGTH = 0.75       # img2img's documented default
CLIP_SKIP = 2                   # the tables' default; sent to the 1.5/XL template, which requires it

# Liblib's presets for three of our ratios; explicit sizes (each side 512-2048, about one
# megapixel like the presets, exact ratios) for the others.
PRESETS = {"1:1": "square", "3:4": "portrait", "16:9": "landscape"}
SIZES = {"9:16": (720, 1280), "4:3": (1024, 768), "3:2": (1152, 768), "2:3": (768, 1152),
         "21:9": (1344, 576)}
ASPECT_RATIOS = ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9"]
MAX_PROMPT = 2000
MAX_IMAGES = 4
URL_LIFETIME = timedelta(days=7)     # Liblib's result links work for 7 days
SUBMIT_INTERVAL = 1.0                # the submit endpoints allow 1 request a second per key, all processes
QUEUED_STATUSES, RUNNING_STATUSES = {1}, {2, 3, 4}   # 3 = drawn, not yet audited; 4 = under audit
DONE, FAILED_STATUSES = 5, {6: "failed", 7: "timed out"}
BLOCKED_AUDIT = {4, 5}               # auditStatus: blocked, audit failed

LABEL = "LiblibAI 星流 Star-3 Alpha"   # a name, the same in every language
DESCRIPTION = N_("Liblib's own Star-3 Alpha image model and any Liblib checkpoint with LoRAs, billed in Liblib "
                 "points. Prompts should be in English. Results pass Liblib's content audit, which may hold "
                 "back some of the pictures.")

# Liblib's published codes (§9.4), which come in an HTTP 200 as often as with an error status: a
# rule matches the code or the status. Only 429, 100054, 200000 and 210000 (and 5xx) are worth
# another try; the message is Liblib's meaning of the code, with its own `msg` shown as is (`{said}`).
ERRORS = [
    rule(ProviderAuthError, N_("Liblib refused the signed request (HTTP %(status)s, code %(code)s%(said)s). Check "
                               "LIBLIB_ACCESS_KEY/LIBLIB_SECRET_KEY and the machine clock (signatures are valid for 5 "
                               "minutes)."),
         codes=(401, 403, 100010, 100020), statuses=(401, 403)),
    rule(ProviderQuotaError, N_("Liblib: not enough points on the account for this task%(said)s. Top up, then retry."),
         codes=(100021,)),
    rule(ProviderRateLimited, N_("Liblib runs 5 tasks at once per account and all are busy%(said)s; the %(what)s is "
                                 "tried again later."), codes=(100054,), retry_after=True, retry_default=30),
    rule(ProviderRateLimited, N_("Liblib is rate-limiting the %(what)s (1 submit a second%(said)s); it is tried "
                                 "again."),
         codes=(429,), statuses=(429,), retry_after=True, retry_default=SUBMIT_INTERVAL),
    # Before the retryable codes: a 5xx to a submit may have created the task, whatever its code.
    rule(SubmitOutcomeUnknown, N_("Liblib failed the submit (HTTP %(status)s); the task may have been created, so it "
                                  "is not sent again."), statuses=SERVER_ERRORS, phase=SUBMIT),
    rule(ProviderUnavailable, N_("Liblib failed the %(what)s on its side (code %(code)s%(said)s); it is tried again "
                                 "later."),
         codes=(200000, 210000)),
    rule(ProviderUnavailable, N_("Liblib is unavailable for the %(what)s (HTTP %(status)s)."), statuses=SERVER_ERRORS),
    rule(ProviderRejected, N_("Liblib could not use the reference picture (code %(code)s: unreachable, over 10 MB, "
                              "refused by its policy or not downloadable%(said)s)."), codes=(100030, 100031, 100032),
         extra={"code": "image_refused"}),
    rule(ProviderRejected, N_("Liblib's content check refused the prompt or the result (code %(code)s%(said)s)."),
         codes=(100052, 100055), extra={"code": "moderated"}),
    rule(ProviderRejected, N_("Liblib refused the model settings (code %(code)s%(said)s): the checkpoint, every LoRA "
                              "and the base model must be of one family, and each must be a commercially usable or "
                              "your own model."),
         codes=(100050, 100053, 100120, 200001), extra={"code": "model_refused"}),
    rule(ProviderRejected, N_("Liblib refused the %(what)s (HTTP %(status)s, code %(code)s%(said)s).")),
]


def submit_sleep(seconds):
    """The only place a submit waits for its slot; tests may replace it."""
    time.sleep(seconds)


@contextmanager
def submit_slot(data_dir, access_key, interval=None, clock=time.monotonic):
    """Hold the key's submit slot: at least `interval` seconds after the previous submit's answer,
    in whichever process it was sent (an flock on `DATA_DIR/liblib-submit-<key hash>.lock`, the
    time in a file beside it). The time is taken when the block ends, so the next submit leaves
    ≥ 1 s after this one was answered and so reaches Liblib ≥ 1 s after it. CLOCK_MONOTONIC is
    one clock for every process of the machine; a time from before a reboot waits at most once."""
    interval = SUBMIT_INTERVAL if interval is None else interval
    name = "liblib-submit-" + hashlib.sha256(access_key.encode()).hexdigest()[:16]
    stamp = data_dir / f"{name}.last"
    with fileio.locked(data_dir / f"{name}.lock"):
        try:
            last = float(stamp.read_text())
        except (OSError, ValueError):
            last = None
        if last is not None:
            wait = min(interval, last + interval - clock())
            if wait > 0:
                submit_sleep(wait)
        try:
            yield
        finally:
            stamp.write_text(repr(clock()))


def timestamp_ms():
    """The signing clock; tests move it to play a machine with a wrong clock."""
    return str(int(time.time() * 1000))


def signature(secret_key, path, timestamp, nonce):
    """Unpadded URL-safe Base64 of HMAC-SHA1(secret, "<path>&<timestamp>&<nonce>")."""
    digest = hmac.new(secret_key.encode(), f"{path}&{timestamp}&{nonce}".encode(), hashlib.sha1).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class LiblibSignature(requests.auth.AuthBase):
    """Adds Liblib's signed query string to every request as it is sent."""

    def __init__(self, access_key, secret_key):
        self.access_key = access_key
        self.secret_key = secret_key

    def __call__(self, request):
        timestamp, nonce = timestamp_ms(), str(uuid.uuid4())
        request.prepare_url(request.url, {
            "AccessKey": self.access_key,
            "Signature": signature(self.secret_key, urlsplit(request.url).path, timestamp, nonce),
            "Timestamp": timestamp, "SignatureNonce": nonce})
        return request


class LiblibProvider(Provider):
    """Star-3 Alpha pictures through Liblib's signed open API."""

    name = "liblib"
    max_concurrency = 5      # Liblib runs 5 generation tasks at once by default
    max_image_bytes = 10_000_000    # reference pictures: at most 10 MB (§4.5)
    model_aliases = MODEL_ALIASES

    def __init__(self, config):
        super().__init__(config)
        self.http = self.make_http(config.get("LIBLIB_API_BASE") or DEFAULT_API_BASE)

    def configured(self):
        return bool(self.config.get("LIBLIB_ACCESS_KEY") and self.config.get("LIBLIB_SECRET_KEY"))

    def capabilities(self):
        common = {"n_min": 1, "n_max": MAX_IMAGES, "image_fidelity": False, "human_fidelity": False,
                  "image_reference": [], "prompt_required": True, "max_prompt": MAX_PROMPT}
        star = {**common, "negative_prompt": False, "negative_prompt_with_image": False}
        models = [
            ImageModel(**star, id=TEXT2IMG_MODEL, label="Star-3 Alpha — text to image", text_to_image=True,
                       image_to_image=False, aspect_ratios=list(ASPECT_RATIOS)),
            ImageModel(**star, id=IMG2IMG_MODEL,
                       label="Star-3 Alpha — image to image (keeps the reference picture's shape)",
                       text_to_image=False, image_to_image=True, aspect_ratios=["source"]),
            # Width and height (or the reference picture) decide the size: no ratio to choose.
            ImageModel(**common, id=CUSTOM_MODEL, label=N_("Liblib checkpoint of your choice, with LoRAs"),
                       text_to_image=True, image_to_image=True, aspect_ratios=["custom"], negative_prompt=True,
                       negative_prompt_with_image=True, advanced=CUSTOM),
        ]
        return ProviderTable(self.name, LABEL, DESCRIPTION, self.configured(), models).as_dict()

    # ---- calls ----

    def submit(self, task):
        params = task["params"]
        model = MODEL_ALIASES.get(task["model"], task["model"])
        if model == CUSTOM_MODEL:
            path, body = self._custom_body(task)
        elif model == IMG2IMG_MODEL:
            if not params["prompt"]:
                raise ProviderRejected(N_("Star-3 Alpha image-to-image needs a prompt describing the result."),
                                       provider=self.name, code="prompt_required")
            generate = {"prompt": params["prompt"], "sourceImage": self._upload_reference(task),
                        "imgCount": params["n"]}
            path, body = IMG2IMG_PATH, {"templateUuid": IMG2IMG_TEMPLATE, "generateParams": generate}
        else:
            generate = {"prompt": params["prompt"]}
            ratio = params["aspect_ratio"]
            if ratio in PRESETS:
                generate["aspectRatio"] = PRESETS[ratio]
            else:
                width, height = SIZES[ratio]
                generate["imageSize"] = {"width": width, "height": height}
            generate["imgCount"] = params["n"]
            path, body = TEXT2IMG_PATH, {"templateUuid": TEXT2IMG_TEMPLATE, "generateParams": generate}
        # `templateUuid` for every template: the official T2I table, the official upload guide's
        # img2img example and working clients spell it so; only one table writes `templateUUID`.
        with submit_slot(self.data_dir, self.config["LIBLIB_ACCESS_KEY"]):
            response = self.http.submit(path, json=body, auth=self._signer(), task_id=task["id"])
        data = self._data(response, N_("submit"), submitted=True)
        generate_uuid = data.get("generateUuid") if isinstance(data, dict) else None
        if not generate_uuid:
            raise SubmitOutcomeUnknown(N_("Liblib accepted the submit but returned no task id; it is not sent again "
                                          "to avoid a double charge."), provider=self.name)
        return generate_uuid

    def _custom_body(self, task):
        """(path, body) of a liblib-custom task: the WebUI template of the checkpoint's family (§9.4)."""
        params = task["params"]
        family = params["base_model"]
        generate = {"prompt": params["prompt"], "negativePrompt": params["negative_prompt"],
                    "sampler": params["sampler"], "steps": params["steps"], "cfgScale": params["cfg_scale"],
                    "imgCount": params["n"], "randnSource": 0,
                    "seed": -1 if params["seed"] is None else params["seed"], "restoreFaces": 0}
        if params["checkpoint_id"]:
            generate["checkPointId"] = params["checkpoint_id"]
        if family != "f.1":
            generate["clipSkip"] = CLIP_SKIP
        if params["loras"]:
            generate["additionalNetwork"] = [{"modelId": lora["id"], "weight": lora["weight"]}
                                             for lora in params["loras"]]
        if params["hires_fix"]:
            hires = params["hires_fix"]
            generate["hiResFixInfo"] = {"hiresSteps": hires["steps"],
                                        "hiresDenoisingStrength": hires["denoising_strength"],
                                        "upscaler": hires["upscaler"], "resizedWidth": hires["width"],
                                        "resizedHeight": hires["height"]}
        if self.input_path(task, "reference") is None:
            generate.update(width=params["width"], height=params["height"])
            kind, path = "text2img", WEBUI_TEXT2IMG_PATH
        else:
            generate.update(sourceImage=self._upload_reference(task), resizeMode=0, mode=0,
                            denoisingStrength=DENOISING_STRENGTH, resizedWidth=params["width"],
                            resizedHeight=params["height"])
            kind, path = "img2img", WEBUI_IMG2IMG_PATH
        return path, {"templateUuid": CUSTOM_TEMPLATES[(family, kind)], "generateParams": generate}

    def query(self, task):
        response = self.http.request("POST", STATUS_PATH, idempotent=True, auth=self._signer(),
                                     json={"generateUuid": task["provider_task_id"]}, task_id=task["id"])
        data = self._data(response, N_("status query"), submitted=False)
        if not isinstance(data, dict):
            raise ProviderBadResponse(N_("Liblib's status answer has no data."), provider=self.name)
        status = data.get("generateStatus")
        cost = {key: data[field] for key, field in (("points", "pointsCost"), ("account_balance", "accountBalance"))
                if data.get(field) is not None} or None
        report = ProviderStatus(state=State.RUNNING, raw_status=None if status is None else str(status), cost=cost)
        if status in QUEUED_STATUSES:
            report.state = State.QUEUED
        elif status in FAILED_STATUSES:
            report.state, report.error_code = State.FAILED, "generation_" + FAILED_STATUSES[status].replace(" ", "_")
            report.message = f"Liblib: generation {FAILED_STATUSES[status]}" + (
                f": {data['generateMsg']}" if data.get("generateMsg") else ".")
        elif status == DONE:
            self._finish(report, data, task["params"]["n"])
        return report     # 2/3/4 and any value Liblib may add later: still running

    def reconcile(self, task):
        raise SubmitOutcomeUnknown(
            N_("Liblib did not confirm the submit, and it has no way to look a task up by our id, so "
               "the outcome is unknown and it was not sent again (that could charge twice). Check "
               "the task list in your Liblib account, then retry here if it is not there."), provider=self.name)

    # ---- helpers ----

    def _finish(self, report, data, requested):
        """Status 5: the pictures that passed Liblib's audit, or a moderation failure if none did."""
        images = [image for image in data.get("images") or [] if isinstance(image, dict)
                  and image.get("imageUrl") and image.get("auditStatus") not in BLOCKED_AUDIT]
        if not images:
            report.state, report.error_code = State.FAILED, "moderated"
            report.message = ("Liblib's content audit blocked every picture of this task. Change the prompt "
                              "(or the reference picture) and try again.")
            return
        note = {"images_requested": requested, "images_passed_audit": len(images)}
        if len(images) < requested:
            report.message = (f"Liblib's content audit blocked {requested - len(images)} of {requested} pictures; "
                              f"the {len(images)} that passed are kept.")
            note["audit_note"] = report.message
        expires_at = (datetime.now(UTC) + URL_LIFETIME).strftime("%Y-%m-%dT%H:%M:%SZ")
        report.state = State.SUCCEEDED
        report.outputs = [RemoteOutput("image", url=image["imageUrl"], expires_at=expires_at,
                                       meta={"seed": image.get("seed"), **note}) for image in images]

    def _upload_reference(self, task):
        """Upload the task's reference picture to Liblib's storage; return its public URL."""
        path = self.input_path(task, "reference")
        if path is None:
            raise ProviderRejected(N_("Image-to-image needs a reference picture."), provider=self.name,
                                   code="image_required")
        extension = "png" if path.suffix.lower() == ".png" else "jpg"
        response = self.http.request("POST", UPLOAD_SIGNATURE_PATH, idempotent=True, auth=self._signer(),
                                json={"name": task["id"], "extension": extension}, task_id=task["id"])
        data = self._data(response, N_("upload signature"), submitted=False)
        try:
            # OSS PostObject: the policy fields in this order, `file` last, no Liblib credentials.
            fields = [("key", data["key"]), ("policy", data["policy"]), ("x-oss-date", data["xOssDate"]),
                      ("x-oss-expires", str(data["xOssExpires"])), ("x-oss-signature", data["xOssSignature"]),
                      ("x-oss-credential", data["xOssCredential"]),
                      ("x-oss-signature-version", data["xOssSignatureVersion"])]
            post_url = data["postUrl"].rstrip("/")
        except (KeyError, TypeError, AttributeError):
            raise ProviderBadResponse(N_("Liblib's upload signature is missing fields."), provider=self.name) from None
        mime = "image/png" if extension == "png" else "image/jpeg"
        # Bytes, not a file object, so a retried upload sends the whole picture again.
        upload = self.http.request("POST", post_url, idempotent=True, data=fields,
                              files={"file": (f"{task['id']}.{extension}", path.read_bytes(), mime)},
                              task_id=task["id"])
        upload.close()
        if upload.status_code >= 500:
            raise ProviderUnavailable(N_("Liblib's storage failed the reference upload (HTTP %(status_code)s)."),
                                      provider=self.name, http_status=upload.status_code,
                                      params={"status_code": upload.status_code})
        if not 200 <= upload.status_code < 300:
            raise ProviderRejected(N_("Liblib's storage refused the reference picture (HTTP %(status_code)s)."),
                                   provider=self.name, http_status=upload.status_code,
                                   params={"status_code": upload.status_code})
        log.info("task %s: reference picture uploaded to liblib storage", task["id"])
        return f"{post_url}/{data['key']}"

    def _data(self, response, what, *, submitted):
        """`data` of Liblib's envelope, or the error its HTTP status (then `code`) stands for.

        `submitted` is True for a generate POST: an answer that leaves it unclear whether the task
        was created (5xx, an unreadable 200) is then SubmitOutcomeUnknown, never a retryable error.
        """
        status = response.status_code
        try:
            body = json_body(response, self.name)
        except ProviderBadResponse:
            if status >= 400:
                body = {}       # the HTTP status alone decides below
            elif submitted:
                raise SubmitOutcomeUnknown(N_("Liblib answered the submit with an unreadable body (HTTP %(status)s); "
                                              "it is not sent again."), provider=self.name, http_status=status,
                                           params={"status": status}) from None
            else:
                raise
        code, msg = body.get("code"), str(body.get("msg") or "").strip()
        if status < 400 and code == 0:
            return body.get("data")
        raise map_error(ERRORS, response, code=code, phase=SUBMIT if submitted else OTHER,
                        context={"what": what, "said": f": {msg}" if msg else ""},
                        facts={"provider": self.name, "http_status": status, "provider_code": code})

    def _signer(self):
        return LiblibSignature(self.config["LIBLIB_ACCESS_KEY"], self.config["LIBLIB_SECRET_KEY"])
