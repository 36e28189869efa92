"""LiblibAI's open API (星流 Star-3 Alpha): text-to-image and image-to-image (PROVIDERS.md §4).

Every call is a JSON POST signed in the query string: `AccessKey`, `Timestamp` (ms),
`SignatureNonce` (uuid4) and `Signature` = unpadded URL-safe Base64 of
HMAC-SHA1(SecretKey, "<path>&<Timestamp>&<SignatureNonce>"). The signature is a `requests` auth
hook, so each attempt the shared HTTP helper makes (query retries included) is signed afresh:
Liblib refuses a reused nonce.

Two models, because the two templates differ in what they honour: `star-3-alpha` draws from text
in one of eight aspect ratios (three of Liblib's presets, five explicit sizes), while
`star-3-alpha-img2img` has no size field at all, so its result keeps the reference picture's
shape ("source"). The reference picture is uploaded first (signature call, then an OSS PostObject
with `file` last and no Liblib credentials) and sent as a URL: Liblib takes no Base64.

Liblib's numeric error codes are not published, so errors are decided from the HTTP status; an
HTTP 200 with `code != 0` on a submit is a refusal whose `msg` is shown as is. Liblib keeps no
client id, so a submit whose outcome is unknown cannot be reconciled; there is no cancel API.
"""

import base64
import hashlib
import hmac
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import requests

from errors import (
    ProviderAuthError,
    ProviderBadResponse,
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
TEXT2IMG_MODEL, IMG2IMG_MODEL = "star-3-alpha", "star-3-alpha-img2img"

# Liblib's presets for three of our ratios; explicit sizes (each side 512-2048, about one
# megapixel like the presets, exact ratios) for the others.
PRESETS = {"1:1": "square", "3:4": "portrait", "16:9": "landscape"}
SIZES = {"9:16": (720, 1280), "4:3": (1024, 768), "3:2": (1152, 768), "2:3": (768, 1152),
         "21:9": (1344, 576)}
ASPECT_RATIOS = ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9"]
MAX_PROMPT = 2000
MAX_IMAGES = 4
URL_LIFETIME = timedelta(days=7)     # Liblib's result links work for 7 days
SUBMIT_INTERVAL = 1.0                # the submit endpoints allow 1 request a second
QUEUED_STATUSES, RUNNING_STATUSES = {1}, {2, 3, 4}   # 3 = drawn, not yet audited; 4 = under audit
DONE, FAILED_STATUSES = 5, {6: "failed", 7: "timed out"}
BLOCKED_AUDIT = {4, 5}               # auditStatus: blocked, audit failed

LABEL = "LiblibAI 星流 Star-3 Alpha"   # a name, the same in every language
DESCRIPTION = N_("Liblib's own Star-3 Alpha image model, billed in Liblib points. Prompts should be in "
                 "English; there is no negative prompt. Results pass Liblib's content audit, which may hold "
                 "back some of the pictures.")

# Liblib publishes no code list, so only the HTTP status decides; a 2xx with `code != 0` is a
# refusal whose `msg` is shown as is (`{said}`), never interpreted.
ERRORS = [
    rule(ProviderAuthError, "Liblib refused the signed request (HTTP {status}{said}). Check LIBLIB_ACCESS_KEY/"
         "LIBLIB_SECRET_KEY and the machine clock (signatures are valid for 5 minutes).", statuses=(401, 403)),
    rule(ProviderRateLimited, "Liblib is rate-limiting the {what} (1 submit a second, 5 tasks at once{said}).",
         statuses=(429,), retry_after=True, retry_default=SUBMIT_INTERVAL),
    rule(SubmitOutcomeUnknown, "Liblib failed the submit (HTTP {status}); the task may have been created, so it "
         "is not sent again.", statuses=SERVER_ERRORS, phase=SUBMIT),
    rule(ProviderUnavailable, "Liblib is unavailable for the {what} (HTTP {status}).", statuses=SERVER_ERRORS),
    rule(ProviderRejected, "Liblib refused the {what} (HTTP {status}, code {code}{said})."),
]


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

    def __init__(self, config):
        super().__init__(config)
        self.http = self.make_http(config.get("LIBLIB_API_BASE") or DEFAULT_API_BASE)

    def configured(self):
        return bool(self.config.get("LIBLIB_ACCESS_KEY") and self.config.get("LIBLIB_SECRET_KEY"))

    def capabilities(self):
        common = {"n_min": 1, "n_max": MAX_IMAGES, "image_fidelity": False, "human_fidelity": False,
                  "image_reference": [], "negative_prompt": False, "prompt_required": True,
                  "negative_prompt_with_image": False, "max_prompt": MAX_PROMPT}
        models = [
            ImageModel(**common, id=TEXT2IMG_MODEL, label="Star-3 Alpha — text to image", text_to_image=True,
                       image_to_image=False, aspect_ratios=list(ASPECT_RATIOS)),
            ImageModel(**common, id=IMG2IMG_MODEL,
                       label="Star-3 Alpha — image to image (keeps the reference picture's shape)",
                       text_to_image=False, image_to_image=True, aspect_ratios=["source"]),
        ]
        return ProviderTable(self.name, LABEL, DESCRIPTION, self.configured(), models).as_dict()

    # ---- calls ----

    def submit(self, task):
        params = task["params"]
        generate = {"prompt": params["prompt"]}
        if task["model"] == IMG2IMG_MODEL:
            if not params["prompt"]:
                raise ProviderRejected("Star-3 Alpha image-to-image needs a prompt describing the result.",
                                       provider=self.name, code="prompt_required")
            generate["sourceImage"] = self._upload_reference(task)
            path, template = IMG2IMG_PATH, IMG2IMG_TEMPLATE
        else:
            ratio = params["aspect_ratio"]
            if ratio in PRESETS:
                generate["aspectRatio"] = PRESETS[ratio]
            else:
                width, height = SIZES[ratio]
                generate["imageSize"] = {"width": width, "height": height}
            path, template = TEXT2IMG_PATH, TEXT2IMG_TEMPLATE
        generate["imgCount"] = params["n"]
        # `templateUuid` for both templates: the official T2I table, the official upload guide's
        # img2img example and working clients spell it so; only one table writes `templateUUID`.
        response = self.http.submit(path, json={"templateUuid": template, "generateParams": generate},
                                    auth=self._signer(), task_id=task["id"])
        data = self._data(response, "submit", submitted=True)
        generate_uuid = data.get("generateUuid") if isinstance(data, dict) else None
        if not generate_uuid:
            raise SubmitOutcomeUnknown("Liblib accepted the submit but returned no task id; it is not sent "
                                       "again to avoid a double charge.", provider=self.name)
        return generate_uuid

    def query(self, task):
        response = self.http.request("POST", STATUS_PATH, idempotent=True, auth=self._signer(),
                                     json={"generateUuid": task["provider_task_id"]}, task_id=task["id"])
        data = self._data(response, "status query", submitted=False)
        if not isinstance(data, dict):
            raise ProviderBadResponse("Liblib's status answer has no data.", provider=self.name)
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
            "Liblib did not confirm the submit, and it has no way to look a task up by our id, so the "
            "outcome is unknown and it was not sent again (that could charge twice). Check the task list "
            "in your Liblib account, then retry here if it is not there.", provider=self.name)

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
            raise ProviderRejected("Image-to-image needs a reference picture.", provider=self.name,
                                   code="image_required")
        extension = "png" if path.suffix.lower() == ".png" else "jpg"
        response = self.http.request("POST", UPLOAD_SIGNATURE_PATH, idempotent=True, auth=self._signer(),
                                json={"name": task["id"], "extension": extension}, task_id=task["id"])
        data = self._data(response, "upload signature", submitted=False)
        try:
            # OSS PostObject: the policy fields in this order, `file` last, no Liblib credentials.
            fields = [("key", data["key"]), ("policy", data["policy"]), ("x-oss-date", data["xOssDate"]),
                      ("x-oss-expires", str(data["xOssExpires"])), ("x-oss-signature", data["xOssSignature"]),
                      ("x-oss-credential", data["xOssCredential"]),
                      ("x-oss-signature-version", data["xOssSignatureVersion"])]
            post_url = data["postUrl"].rstrip("/")
        except (KeyError, TypeError, AttributeError):
            raise ProviderBadResponse("Liblib's upload signature is missing fields.", provider=self.name) from None
        mime = "image/png" if extension == "png" else "image/jpeg"
        # Bytes, not a file object, so a retried upload sends the whole picture again.
        upload = self.http.request("POST", post_url, idempotent=True, data=fields,
                              files={"file": (f"{task['id']}.{extension}", path.read_bytes(), mime)},
                              task_id=task["id"])
        upload.close()
        if upload.status_code >= 500:
            raise ProviderUnavailable(f"Liblib's storage failed the reference upload (HTTP {upload.status_code}).",
                                      provider=self.name, http_status=upload.status_code)
        if not 200 <= upload.status_code < 300:
            raise ProviderRejected(f"Liblib's storage refused the reference picture (HTTP {upload.status_code}).",
                                   provider=self.name, http_status=upload.status_code)
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
                raise SubmitOutcomeUnknown(f"Liblib answered the submit with an unreadable body (HTTP {status}); "
                                           "it is not sent again.", provider=self.name, http_status=status) from None
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
