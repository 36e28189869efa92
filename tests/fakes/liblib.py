"""Local stand-in for LiblibAI's open API (Star-3 Alpha, custom templates) and its OSS bucket (PROVIDERS.md §4, §9.4).

It checks the query-string signature exactly (HMAC-SHA1 over "<path>&<Timestamp>&<SignatureNonce>",
unpadded URL-safe Base64, 5-minute validity, no nonce twice), wants POST JSON everywhere, checks the
Star-3 Alpha fields (template ids, prompt, exactly one of aspectRatio/imageSize, imgCount, a
`sourceImage` URL of a file uploaded here) and the custom templates' fields (§9.4: the template of
the checkpoint's family, the fields that family requires, every range of the parameter tables,
at most 5 LoRAs of the checkpoint's family, hiResFixInfo), limits submits to 1 a second and 5 tasks
at once, and moves tasks through generateStatus 1 -> 2 -> 4 -> 5 over polls. The bucket under
`/oss` checks the PostObject fields it issued, their order with `file` last, and that no Liblib
credentials reach it. Refusals carry the published codes of §9.4: a QPS refusal is code 429 in an
HTTP 200 (the injected "429" fault is an HTTP 429), the concurrency refusal 100054, unknown
templates 100120, unknown models 100053, a family mismatch or a missing field 100050, a value out
of range 100000. Models for the custom templates are registered with `add_model`.

Liblib takes no client id, so creates are counted per prompt in `submissions`: give each test
task its own prompt. Faults (`inject(where, ...)`):
  submit:  "429" (rate limit, HTTP 429), "credits" (100021 in an HTTP 200), "busy" (200000 in an HTTP 200),
           "500" (task created, then a 500), "hang" (created, answer after 2 s)
  outcome: "audit_one" (one of n pictures blocked), "audit_all" (all blocked: status 5, no images),
           "fail" (status 6), "timeout" (status 7), "expired_url" (result links already expired)
  query:   "malformed" (an unreadable status answer), "503" (the query fails; safe to repeat)
  upload:  "500" (the bucket fails)
  download: "truncate", "error" (see FakeServer)
"""

import base64
import hashlib
import hmac
import io
import json
import secrets
import time
import uuid

from flask import Response, request
from PIL import Image
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from tests.fakes import FakeServer, sample_png

ACCESS_KEY, SECRET_KEY = "fake-ak", "fake-sk"
SIGNATURE_TTL_MS = 5 * 60 * 1000
TEXT2IMG_TEMPLATE = "5d7e67009b344550bc1aa6ccbfa1d7f4"
IMG2IMG_TEMPLATE = "07e00af4fc464c7ab55ff906f8acf1b7"
PRESETS = {"square": (1024, 1024), "portrait": (768, 1024), "landscape": (1280, 720)}
AUTH_PARAMS = ("AccessKey", "Signature", "Timestamp", "SignatureNonce")
OSS_FIELDS = ["key", "policy", "x-oss-date", "x-oss-expires", "x-oss-signature", "x-oss-credential",
              "x-oss-signature-version", "file"]
MAX_UPLOAD = 10 * 1024 * 1024
POINTS_PER_IMAGE = 10
HANG_SECONDS = 2.0
# Liblib's published codes (§9.4).
CODE_AUTH, CODE_PARAM, CODE_LIMIT, CODE_NOT_FOUND, CODE_INTERNAL = 401, 100000, 429, 100051, 200000
CODE_CREDITS, CODE_INCOMPLETE, CODE_NO_MODEL, CODE_BUSY, CODE_NO_TEMPLATE = 100021, 100050, 100053, 100054, 100120
# The custom templates: endpoint kind and template -> the base families it runs.
CUSTOM_TEMPLATES = {("text2img", "e10adc3949ba59abbe56e057f20f883e"): {"1.5", "xl"},
                    ("text2img", "6f7c4652458d4802969f8d089cf5b91f"): {"f.1"},
                    ("img2img", "9c7d531dc75f476aa833b3d452b8f7ad"): {"1.5", "xl"},
                    ("img2img", "63b72710c9574457ba303d9d9b8df8bd"): {"f.1"}}


def envelope(code=0, msg="", data=None, status=200):
    return Response(json.dumps({"code": code, "msg": msg, "data": data}), status, mimetype="application/json")


def oss_error(status, code, message):
    return Response(f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>"
                    f"<Message>{message}</Message></Error>", status, mimetype="application/xml")


def expected_signature(secret_key, path, timestamp, nonce):
    """Liblib's signature, written independently of the client's code."""
    digest = hmac.new(secret_key.encode(), f"{path}&{timestamp}&{nonce}".encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode().replace("+", "-").replace("/", "_").rstrip("=")


def _is_int(value, low, high):
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value, low, high):
    return isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high


class Server(FakeServer):
    name = "liblib"

    def __init__(self, *, access_key=ACCESS_KEY, secret_key=SECRET_KEY, submit_qps=1.0, concurrency=5,
                 url_ttl=7 * 24 * 3600, **kwargs):
        self.access_key, self.secret_key = access_key, secret_key
        self.submit_qps = submit_qps            # None: no QPS limit (tests that submit in bursts)
        self.concurrency = concurrency
        self.auth_log = []                      # {"path", "params", "verdict"} of every signed call
        self.oss_posts = []                     # what each upload to the bucket looked like
        self.max_running = 0                    # most tasks in flight at once
        self.account_balance = 100_000
        self._nonces = set()
        self._issued = {}                       # object key -> the PostObject fields we signed
        self.objects = {}                      # object key -> (bytes, extension)
        self._last_submit = 0.0
        self.submit_times = []                  # time.monotonic() of every accepted submit
        self.models = {}                        # version uuid -> {"family", "type"} (add_model)
        self._oss_secret = secrets.token_bytes(16)
        super().__init__(url_ttl=url_ttl, **kwargs)

    def add_routes(self, app):
        app.add_url_rule("/api/generate/upload/signature", "upload_signature", self._upload_signature,
                         methods=["POST"])
        app.add_url_rule("/api/generate/webui/text2img/ultra", "text2img", lambda: self._create("text2img"),
                         methods=["POST"])
        app.add_url_rule("/api/generate/webui/img2img/ultra", "img2img", lambda: self._create("img2img"),
                         methods=["POST"])
        app.add_url_rule("/api/generate/webui/text2img", "custom_text2img", lambda: self._create("custom-text2img"),
                         methods=["POST"])
        app.add_url_rule("/api/generate/webui/img2img", "custom_img2img", lambda: self._create("custom-img2img"),
                         methods=["POST"])
        app.add_url_rule("/api/generate/webui/status", "status", self._status, methods=["POST"])
        app.add_url_rule("/oss", "oss_post", self._oss_post, methods=["POST"])
        app.add_url_rule("/oss/<path:key>", "oss_get", self._oss_get, methods=["GET"])

    # ---- helpers for tests ----

    def add_model(self, version_uuid, family, kind="checkpoint"):
        """Make a model version known to the platform: `family` "1.5" | "xl" | "f.1", `kind` checkpoint | lora."""
        with self.lock:
            self.models[version_uuid] = {"family": family, "type": kind}

    def running(self):
        with self.lock:
            return sum(1 for task in self.tasks.values() if task["status"] not in (5, 6, 7))

    def object_url(self, key):
        return f"{self.base_url}/oss/{key}"

    # ---- the API ----

    def _signed_json(self):
        """(body, None) for a well-signed POST JSON call, else (None, the error response)."""
        self.record()
        params = request.args
        missing = [name for name in AUTH_PARAMS if not params.get(name)]
        timestamp, nonce = params.get("Timestamp", ""), params.get("SignatureNonce", "")
        with self.lock:
            if missing:
                verdict = f"missing {', '.join(missing)}"
            elif params["AccessKey"] != self.access_key:
                verdict = "unknown AccessKey"
            elif not timestamp.isdigit() or abs(time.time() * 1000 - int(timestamp)) > SIGNATURE_TTL_MS:
                verdict = "timestamp expired"
            elif not hmac.compare_digest(params["Signature"].encode(),
                                         expected_signature(self.secret_key, request.path, timestamp, nonce).encode()):
                verdict = "signature mismatch"
            elif nonce in self._nonces:
                verdict = "nonce already used"
            else:
                verdict = "ok"
                self._nonces.add(nonce)
            self.auth_log.append({"path": request.path, "params": dict(params), "verdict": verdict})
        if verdict != "ok":
            return None, envelope(CODE_AUTH, f"signature verification failed: {verdict}", status=403)
        body = request.get_json(silent=True) if request.mimetype == "application/json" else None
        if not isinstance(body, dict):
            return None, envelope(CODE_PARAM, "request body must be a JSON object (application/json)", status=400)
        return body, None

    def _upload_signature(self):
        body, error = self._signed_json()
        if error:
            return error
        name, extension = body.get("name"), body.get("extension")
        if not isinstance(name, str) or not name or len(name) > 100:
            return envelope(CODE_PARAM, "name must be 1-100 characters")
        if extension not in ("jpg", "jpeg", "png"):
            return envelope(CODE_PARAM, "extension must be jpg, jpeg or png")
        key = f"aliyun-cn-prod/{uuid.uuid4().hex}.{extension}"
        date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        policy = base64.b64encode(json.dumps({
            "expiration": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() + 3600)),
            "conditions": [["content-length-range", 1, MAX_UPLOAD], {"bucket": "fake-liblib-temp"},
                           {"x-oss-signature-version": "OSS4-HMAC-SHA256"}, {"x-oss-date": date}]}).encode()).decode()
        data = {"key": key, "policy": policy, "postUrl": f"{self.base_url}/oss", "xOssDate": date,
                "xOssExpires": 3600, "xOssCredential": f"LTAIFAKE/{date[:8]}/cn-beijing/oss/aliyun_v4_request",
                "xOssSignature": hmac.new(self._oss_secret, policy.encode(), hashlib.sha256).hexdigest(),
                "xOssSignatureVersion": "OSS4-HMAC-SHA256"}
        with self.lock:
            self._issued[key] = {**data, "extension": extension, "name": name, "issued_at": time.time()}
        return envelope(data=data)

    def _create(self, kind):
        body, error = self._signed_json()
        if error:
            return error
        fault = self.take_fault("submit")
        if fault == "429":
            return envelope(CODE_LIMIT, "request too frequent, QPS limit exceeded", status=429)
        if fault == "credits":
            return envelope(CODE_CREDITS, "积分不足")
        if fault == "busy":
            return envelope(CODE_INTERNAL, "内部错误")
        with self.lock:
            now = time.monotonic()
            # Every submit counts, refused ones too: Liblib counts requests, not tasks.
            too_soon = self.submit_qps and now - self._last_submit < 1 / self.submit_qps
            self._last_submit = now
            if too_soon:
                return envelope(CODE_LIMIT, "request too frequent, QPS limit exceeded")
        if kind.startswith("custom-"):
            code, problem, size = self._check_custom(kind[len("custom-"):], body)
        else:
            code, (problem, size) = CODE_PARAM, self._check_generate(kind, body)
        if problem:
            return envelope(code, problem)
        params = body["generateParams"]
        with self.lock:
            if self.running() >= self.concurrency:
                return envelope(CODE_BUSY, f"concurrent generation limit ({self.concurrency}) reached")
            self.submit_times.append(now)
            generate_uuid = uuid.uuid4().hex
            count = params["imgCount"]
            self.account_balance -= POINTS_PER_IMAGE * count
            self.tasks[generate_uuid] = {
                "kind": kind, "status": 1, "polls": 0, "count": count, "size": size,
                "outcome": self.take_fault("outcome"), "images": None, "points": POINTS_PER_IMAGE * count}
            self.submissions[params["prompt"]] += 1
            self.max_running = max(self.max_running, self.running())
        if fault == "500":
            return envelope(CODE_INTERNAL, "internal server error", status=500)
        if fault == "hang":
            time.sleep(HANG_SECONDS)
        return envelope(data={"generateUuid": generate_uuid})

    def _check_generate(self, kind, body):
        """(problem, (width, height) of the pictures to make) for a generate body."""
        if kind == "text2img":
            template_keys = [key for key in ("templateUuid",) if key in body]
            wanted = TEXT2IMG_TEMPLATE
        else:
            # The official table spells it templateUUID, everything else templateUuid: take either, once.
            template_keys = [key for key in ("templateUuid", "templateUUID") if key in body]
            wanted = IMG2IMG_TEMPLATE
        if len(template_keys) != 1:
            return "exactly one templateUuid is required", None
        if body[template_keys[0]] != wanted:
            return "template not found or not allowed for this endpoint", None
        params = body.get("generateParams")
        if not isinstance(params, dict):
            return "generateParams is required", None
        prompt = params.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return "prompt is required", None
        if len(prompt) > 2000:
            return "prompt must be at most 2000 characters", None
        if not _is_int(params.get("imgCount"), 1, 4):
            return "imgCount must be an integer from 1 to 4", None
        if kind == "img2img":
            return self._check_source(params.get("sourceImage"))
        if ("aspectRatio" in params) == ("imageSize" in params):
            return "configure exactly one of aspectRatio and imageSize", None
        if "aspectRatio" in params:
            if params["aspectRatio"] not in PRESETS:
                return "aspectRatio must be square, portrait or landscape", None
            return None, PRESETS[params["aspectRatio"]]
        size = params["imageSize"]
        if not (isinstance(size, dict) and set(size) == {"width", "height"}
                and _is_int(size["width"], 512, 2048) and _is_int(size["height"], 512, 2048)):
            return "imageSize needs width and height, each 512-2048", None
        return None, (size["width"], size["height"])

    def _check_custom(self, kind, body):
        """(code, problem, (width, height)) for a body sent to a custom WebUI template (§9.4)."""
        keys = [key for key in ("templateUuid", "templateUUID") if key in body]
        if len(keys) != 1:
            return CODE_INCOMPLETE, "exactly one templateUuid is required", None
        families = CUSTOM_TEMPLATES.get((kind, body[keys[0]]))
        if families is None:
            return CODE_NO_TEMPLATE, "模板不存在 (template not found)", None
        params = body.get("generateParams")
        if not isinstance(params, dict):
            return CODE_INCOMPLETE, "generateParams is required", None
        sd = families == {"1.5", "xl"}
        required = ["prompt", "steps", "imgCount", "randnSource", "seed", "restoreFaces"]
        required += ["checkPointId", "sampler", "cfgScale", "clipSkip"] if sd else []
        required += ["width", "height"] if kind == "text2img" else ["sourceImage"]
        missing = [name for name in required if name not in params]
        if missing:
            return CODE_INCOMPLETE, f"生图参数未通过参数完整度校验: {', '.join(missing)}", None
        allowed = set(required) | {"negativePrompt", "vaeId", "additionalNetwork", "hiResFixInfo", "controlNet",
                                   "checkPointId", "sampler", "cfgScale", "clipSkip"}
        if kind == "img2img":
            allowed |= {"resizeMode", "resizedWidth", "resizedHeight", "mode", "denoisingStrength", "inpaintParam"}
        unknown = sorted(set(params) - allowed)
        if unknown:
            return CODE_PARAM, f"unknown parameters: {', '.join(unknown)}", None
        checks = [("prompt", isinstance(params["prompt"], str) and len(params["prompt"].strip()) > 0
                   and len(params["prompt"]) <= 2000),
                  ("negativePrompt", isinstance(params.get("negativePrompt", ""), str)
                   and len(params.get("negativePrompt", "")) <= 2000),
                  ("steps", _is_int(params["steps"], 1, 60)), ("imgCount", _is_int(params["imgCount"], 1, 4)),
                  ("randnSource", params["randnSource"] in (0, 1)),
                  ("seed", _is_int(params["seed"], -1, 9_999_999_999)),
                  ("restoreFaces", params["restoreFaces"] in (0, 1)),
                  ("sampler", "sampler" not in params or _is_int(params["sampler"], 0, 40)),
                  ("cfgScale", "cfgScale" not in params or _is_number(params["cfgScale"], 1.0, 15.0)),
                  ("clipSkip", "clipSkip" not in params or _is_int(params["clipSkip"], 1, 12))]
        if kind == "text2img":
            checks += [("width", _is_int(params["width"], 128, 1536)), ("height", _is_int(params["height"], 128, 1536))]
        else:
            checks += [("resizeMode", params.get("resizeMode", 0) in (0, 1, 2)),
                       ("mode", params.get("mode", 0) in (0, 4)),
                       ("resizedWidth", _is_int(params.get("resizedWidth", 512), 128, 2048)),
                       ("resizedHeight", _is_int(params.get("resizedHeight", 512), 128, 2048)),
                       ("denoisingStrength", _is_number(params.get("denoisingStrength", 0.75), 0, 1))]
        bad = [name for name, ok in checks if not ok]
        if bad:
            return CODE_PARAM, f"invalid parameters: {', '.join(bad)}", None
        with self.lock:
            models = dict(self.models)
        checkpoint = params.get("checkPointId")
        family = None
        if checkpoint is not None:
            entry = models.get(checkpoint)
            if entry is None or entry["type"] != "checkpoint":
                return CODE_NO_MODEL, "模型不在平台列表 (checkpoint not found)", None
            if entry["family"] not in families:
                return CODE_INCOMPLETE, "生图参数未通过参数完整度校验 (checkpoint does not match the template)", None
            family = entry["family"]
        loras = params.get("additionalNetwork", [])
        if not isinstance(loras, list) or len(loras) > 5:
            return CODE_PARAM, "additionalNetwork takes at most 5 LoRAs", None
        for lora in loras:
            if not (isinstance(lora, dict) and set(lora) == {"modelId", "weight"}
                    and _is_number(lora["weight"], -4.0, 4.0)):
                return CODE_PARAM, "a LoRA is {modelId, weight -4..4}", None
            entry = models.get(lora["modelId"])
            if entry is None or entry["type"] != "lora":
                return CODE_NO_MODEL, "模型不在平台列表 (LoRA not found)", None
            if entry["family"] not in families or (family and entry["family"] != family):
                return CODE_INCOMPLETE, "生图参数未通过参数完整度校验 (LoRA of another base model)", None
        hires = params.get("hiResFixInfo")
        if hires is not None and not (
                isinstance(hires, dict) and set(hires) == {"hiresSteps", "hiresDenoisingStrength", "upscaler",
                                                           "resizedWidth", "resizedHeight"}
                and _is_int(hires["hiresSteps"], 1, 30) and _is_number(hires["hiresDenoisingStrength"], 0, 1)
                and _is_int(hires["upscaler"], 0, 100) and _is_int(hires["resizedWidth"], 128, 2048)
                and _is_int(hires["resizedHeight"], 128, 2048)):
            return CODE_PARAM, "hiResFixInfo needs hiresSteps 1-30, hiresDenoisingStrength 0-1, upscaler, " \
                               "resizedWidth/resizedHeight 128-2048", None
        if kind == "img2img":
            problem, size = self._check_source(params["sourceImage"])
            if problem:
                return CODE_PARAM, problem, None
            size = (params.get("resizedWidth", size[0]), params.get("resizedHeight", size[1]))
        else:
            size = (params["width"], params["height"])
        if hires is not None:
            size = (hires["resizedWidth"], hires["resizedHeight"])
        return 0, None, size

    def _check_source(self, source):
        if not isinstance(source, str) or not source.startswith(("http://", "https://")):
            return "sourceImage must be a full public image URL (Base64 is not accepted)", None
        prefix = f"{self.base_url}/oss/"
        with self.lock:
            entry = self.objects.get(source[len(prefix):]) if source.startswith(prefix) else None
        if entry is None:
            return "sourceImage could not be downloaded", None
        with Image.open(io.BytesIO(entry[0])) as picture:
            return None, picture.size

    def _status(self):
        body, error = self._signed_json()
        if error:
            return error
        fault = self.take_fault("query")
        if fault == "malformed":
            return Response('{"code": 0, "msg": "", "data": {"generateStatus": ', 200, mimetype="application/json")
        if fault == "503":
            return envelope(CODE_INTERNAL, "service busy", status=503)
        with self.lock:
            task = self.tasks.get(body.get("generateUuid"))
            if task is None:
                return envelope(CODE_NOT_FOUND, "generate task not found")
            if task["status"] not in (5, 6, 7):
                task["polls"] += 1
                self._advance(task)
            data = {"generateUuid": body["generateUuid"], "generateStatus": task["status"], "percentCompleted": 0,
                    "generateMsg": task.get("message", ""), "pointsCost": task["points"],
                    "accountBalance": self.account_balance, "images": task["images"] or []}
        return envelope(data=data)

    def _advance(self, task):
        """1 -> 2 -> 4 over `polls_to_finish` polls, then the task's outcome."""
        if task["polls"] <= self.polls_to_finish:
            task["status"] = (1, 2, 4)[min(2, (task["polls"] - 1) * 3 // self.polls_to_finish)]
            return
        outcome = task["outcome"]
        if outcome in ("fail", "timeout"):
            task["status"] = 6 if outcome == "fail" else 7
            task["message"] = "model inference error" if outcome == "fail" else "generation timed out"
            return
        passed = {"audit_one": task["count"] - 1, "audit_all": 0}.get(outcome, task["count"])
        ttl = -60 if outcome == "expired_url" else None
        scale = min(0.25, 400 / max(task["size"]))    # small stand-ins with the asked shape
        width, height = round(task["size"][0] * scale), round(task["size"][1] * scale)
        # Only the pictures that passed the audit are listed (auditStatus 3).
        task["images"] = [{"imageUrl": self.publish(sample_png(width, height, seed=i), "image/png", ".png", ttl)[0],
                           "seed": 1000 + i, "auditStatus": 3} for i in range(passed)]
        task["status"] = 5

    # ---- the OSS bucket ----

    def _oss_post(self):
        raw = request.get_data()
        names, fields, file_name, file_data = self._multipart(raw)
        with self.lock:
            self.oss_posts.append({"query": request.query_string.decode(), "fields": names,
                                   "headers": dict(request.headers), "file_name": file_name,
                                   "file_bytes": len(file_data or b"")})
        if self.take_fault("upload") == "500":
            return oss_error(503, "ServiceUnavailable", "Please reduce your request rate.")
        if set(request.args) & set(AUTH_PARAMS) or "Authorization" in request.headers:
            return oss_error(400, "InvalidArgument", "Unexpected credentials for a PostObject request.")
        if names != OSS_FIELDS:
            return oss_error(400, "InvalidArgument", f"Form fields must be {', '.join(OSS_FIELDS)} in this order.")
        with self.lock:
            issued = self._issued.get(fields["key"])
        if issued is None:
            return oss_error(403, "AccessDenied", "Invalid according to Policy: key was not signed.")
        for field, signed in (("policy", "policy"), ("x-oss-date", "xOssDate"), ("x-oss-expires", "xOssExpires"),
                              ("x-oss-signature", "xOssSignature"), ("x-oss-credential", "xOssCredential"),
                              ("x-oss-signature-version", "xOssSignatureVersion")):
            if fields[field] != str(issued[signed]):
                return oss_error(403, "SignatureDoesNotMatch", f"{field} does not match the signed policy.")
        if time.time() > issued["issued_at"] + issued["xOssExpires"]:
            return oss_error(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
        if not file_data or len(file_data) > MAX_UPLOAD:
            return oss_error(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size.")
        if not (file_name or "").lower().endswith("." + issued["extension"]):
            return oss_error(400, "InvalidArgument", "The file extension does not match the signed one.")
        with self.lock:
            self.objects[fields["key"]] = (file_data, issued["extension"])
        return Response(status=204)

    @staticmethod
    def _multipart(raw):
        """(field names in order, text fields, file name, file bytes) of a multipart body."""
        boundary = request.mimetype_params.get("boundary")
        names, fields, file_name, file_data, current = [], {}, None, None, None
        if request.mimetype != "multipart/form-data" or not boundary:
            return names, fields, file_name, file_data
        decoder = MultipartDecoder(boundary.encode())
        decoder.receive_data(raw)
        decoder.receive_data(None)
        chunks = []
        while not isinstance(event := decoder.next_event(), (NeedData, Epilogue)):
            if isinstance(event, (Field, File)):
                current = event.name
                names.append(event.name)
                chunks = []
                if isinstance(event, File):
                    file_name = event.filename
            elif isinstance(event, Data):
                chunks.append(event.data)
                if not event.more_data:
                    if current == "file":
                        file_data = b"".join(chunks)
                    else:
                        fields[current] = b"".join(chunks).decode()
        return names, fields, file_name, file_data

    def _oss_get(self, key):
        with self.lock:
            entry = self.objects.get(key)
        if entry is None:
            return oss_error(404, "NoSuchKey", "The specified key does not exist.")
        data, extension = entry
        return Response(data, 200, mimetype="image/png" if extension == "png" else "image/jpeg")


def usage(url):
    return [f"LIBLIB_API_BASE={url} LIBLIB_ACCESS_KEY={ACCESS_KEY} LIBLIB_SECRET_KEY={SECRET_KEY}",
            "Submits are limited to 1 a second and 5 tasks at once; tasks finish after --polls status queries."]
