"""A local DashScope (Model Studio) server for the Wan models, speaking PROVIDERS.md §3 and §9.2.

Routes, under `prefix` ("" here; 302.ai mounts the same protocol under "/aliyun/api/v1"):
`POST /services/aigc/video-generation/video-synthesis` (image-to-video, text-to-video),
`POST /services/aigc/image2video/video-synthesis` (first-and-last-frame, `*kf2v*` models only),
`POST /services/aigc/text2image/image-synthesis`, `GET /tasks/<id>`, `POST /tasks/<id>/cancel`, and the
batch task query `GET /tasks/`. Like the real service it wants `Authorization: Bearer <key>` everywhere
and `X-DashScope-Async: enable` on creates, answers errors as `{code, message, request_id}`, knows
only its `region`'s model list (another region's model is `404 ModelNotFound`, "Model can not be
found."), checks each model's resolutions and durations, text-to-video `size` against the model's
tiers, `parameters.audio` only where documented, `img_url` / `first_frame_url` / `last_frame_url`
formats (http(s), `oss://`, or a `data:image/...;base64,` URI; raw Base64 is refused) and picture
sides (360-2000 px, no transparency), text-to-image `size` as "W*H" with sides 512-1440 (wan2.5:
total pixels 768²-1440², ratio 1:4-4:1), `n` 1-4 (4 when left out), `seed` 0-2147483647, silently
cuts prompts to 800 (1500 for 2.5/2.6 video) and negative prompts to 500 characters (keeping what
it used in the task), tolerates the SDK's deprecated `input.extend_prompt`, moves tasks PENDING ->
RUNNING -> SUCCEEDED over polls, cancels only PENDING tasks, answers UNKNOWN for unknown or day-old
ids, and refuses a task beyond the model's documented in-flight cap (2 or 5; `concurrency_limit`
sets one cap for every model) with 429 Throttling.RateQuota. The task list checks its window
(Beijing-time `YYYYMMDDhhmmss`, at most 24 h), `status`, `page_no` and `page_size` (1-100), and
pages newest first.

Faults, queued with `inject(where, *names)`:
  "submit":   "rate_limit" (429 Throttling.RateQuota), "rate_limit_retry_after" (the same 429 with
              `Retry-After: 2`), "allocation_quota" (429 Throttling.AllocationQuota),
              "overdue" (429 PrepaidBillOverdue), "arrearage" (400 Arrearage),
              "server_error" (500 InternalError, nothing created),
              "hang" (the task IS created; the answer comes `hang_seconds` later)
              "created_then_error" (the task IS created, then the answer is 500 InternalError)
  "query":    "malformed" (200 with a cut JSON body), "server_error" (500 InternalError)
  "list":     "server_error" (500 InternalError)
  "result":   "partial" (the second of n images fails), "moderation" (FAILED DataInspectionFailed),
              "expired_url" (result links that have already expired)
  "download": "truncate", "error", "not_found" (FakeServer)
"""

import base64
import binascii
import hashlib
import io
import json
import re
import time
import uuid
from datetime import datetime, timedelta, timezone

from flask import Response, request
from PIL import Image

from tests.fakes import FakeServer, sample_mp4, sample_png

API_KEY = "fake-dashscope-key"
TASK_TTL = 24 * 3600
BEIJING = timezone(timedelta(hours=8))

# The models this server knows, written from the documentation (§3.3, §9.2), not from the client's tables.
# kind: i2v (video-generation, img_url), kf2v (image2video, first/last frame), t2v (video-generation,
# size). audio: "switch" takes parameters.audio (bool); "auto" adds audio itself (no switch); None silent.
# cap: tasks in flight per model (§9.2(f)); long: 1500-character prompts (2.5/2.6).
def _m(kind, resolutions, default, durations, cap=2, audio=None, long=False):
    return {"kind": kind, "resolutions": resolutions, "default": default, "durations": durations, "cap": cap,
            "audio": audio, "long": long}


_W26_I2V = _m("i2v", ("720P", "1080P"), "1080P", tuple(range(2, 16)), cap=5, audio="auto", long=True)
_W26_T2V = _m("t2v", ("720P", "1080P"), "1080P", tuple(range(2, 16)), cap=5, long=True)
VIDEO_MODELS = {
    "wan2.2-i2v-flash": _m("i2v", ("480P", "720P", "1080P"), "720P", (5,)),
    "wan2.2-i2v-plus": _m("i2v", ("480P", "1080P"), "1080P", (5,)),
    "wanx2.1-i2v-turbo": _m("i2v", ("480P", "720P"), "720P", (3, 4, 5)),
    "wanx2.1-i2v-plus": _m("i2v", ("720P",), "720P", (5,)),
    "wan2.1-i2v-turbo": _m("i2v", ("480P", "720P"), "720P", (3, 4, 5)),
    "wan2.1-i2v-plus": _m("i2v", ("720P",), "720P", (5,)),
    "wan2.5-i2v-preview": _m("i2v", ("480P", "720P", "1080P"), "1080P", (5, 10), cap=5, audio="auto", long=True),
    "wan2.6-i2v": _W26_I2V, "wan2.6-i2v-us": _W26_I2V,
    "wan2.6-i2v-flash": _m("i2v", ("720P", "1080P"), "1080P", tuple(range(2, 16)), cap=5, audio="switch",
                           long=True),
    "wan2.2-kf2v-flash": _m("kf2v", ("480P", "720P", "1080P"), "720P", (5,)),
    "wanx2.1-kf2v-plus": _m("kf2v", ("720P",), "720P", (5,)),
    "wan2.1-kf2v-plus": _m("kf2v", ("720P",), "720P", (5,)),
    "wanx2.1-t2v-turbo": _m("t2v", ("480P", "720P"), "720P", (5,)),
    "wanx2.1-t2v-plus": _m("t2v", ("720P",), "720P", (5,)),
    "wan2.1-t2v-turbo": _m("t2v", ("480P", "720P"), "720P", (5,)),
    "wan2.1-t2v-plus": _m("t2v", ("720P",), "720P", (5,)),
    "wan2.2-t2v-plus": _m("t2v", ("480P", "1080P"), "1080P", (5,)),
    "wan2.5-t2v-preview": _m("t2v", ("480P", "720P", "1080P"), "1080P", (5, 10), cap=5, audio="auto", long=True),
    "wan2.6-t2v": _W26_T2V, "wan2.6-t2v-us": _W26_T2V,
}
T2V_SIZES = {"480P": {"832*480", "480*832", "624*624"},
             "720P": {"1280*720", "720*1280", "960*960", "1088*832", "832*1088"},
             "1080P": {"1920*1080", "1080*1920", "1440*1440", "1632*1248", "1248*1632"}}
# Text-to-image: "sides" = each side in [512, 1440]; "pixels" = total pixels in [768², 1440²], ratio 1:4..4:1.
IMAGE_MODELS = {"wanx2.1-t2i-turbo": "sides", "wanx2.1-t2i-plus": "sides", "wanx2.0-t2i-turbo": "sides",
                "wan2.1-t2i-turbo": "sides", "wan2.1-t2i-plus": "sides", "wan2.2-t2i-flash": "sides",
                "wan2.2-t2i-plus": "sides", "wan2.5-t2i-preview": "pixels"}
IMAGE_CAPS = {"wan2.5-t2i-preview": 5}
# Each region's model list (§9.2(e)); a model of another region is "not found", as with a real key.
REGION_MODELS = {
    "beijing": {"wan2.6-i2v-flash", "wan2.6-i2v", "wan2.5-i2v-preview", "wan2.2-i2v-flash", "wan2.2-i2v-plus",
                "wanx2.1-i2v-turbo", "wanx2.1-i2v-plus", "wan2.2-kf2v-flash", "wanx2.1-kf2v-plus", "wan2.6-t2v",
                "wan2.5-t2v-preview", "wan2.2-t2v-plus", "wanx2.1-t2v-turbo", "wanx2.1-t2v-plus",
                "wan2.5-t2i-preview", "wan2.2-t2i-plus", "wan2.2-t2i-flash", "wanx2.1-t2i-plus", "wanx2.1-t2i-turbo",
                "wanx2.0-t2i-turbo"},
    "singapore": {"wan2.6-i2v-flash", "wan2.6-i2v", "wan2.5-i2v-preview", "wan2.2-i2v-plus", "wan2.1-i2v-turbo",
                  "wan2.1-i2v-plus", "wan2.1-kf2v-plus", "wan2.6-t2v", "wan2.5-t2v-preview", "wan2.2-t2v-plus",
                  "wan2.1-t2v-turbo", "wan2.1-t2v-plus", "wan2.5-t2i-preview", "wan2.2-t2i-flash",
                  "wan2.2-t2i-plus", "wan2.1-t2i-turbo", "wan2.1-t2i-plus"},
    "virginia": {"wan2.6-i2v", "wan2.6-t2v", "wan2.6-i2v-us", "wan2.6-t2v-us"},
}

SUBMIT_FAULTS = {
    "rate_limit": (429, "Throttling.RateQuota", "Requests rate limit exceeded, please try again later."),
    "allocation_quota": (429, "Throttling.AllocationQuota",
                         "Allocated quota exceeded, please increase your quota limit."),
    "overdue": (429, "PrepaidBillOverdue", "The prepaid bill is overdue."),
    "arrearage": (400, "Arrearage", "Access denied, please make sure your account is in good standing."),
    "server_error": (500, "InternalError", "An internal error has occured, please try again later."),
}
PARTIAL_FAILURE = ("InternalError.Timeout",
                   "An internal timeout error has occured during execution, please try again later.")


class Invalid(Exception):
    """A request the service refuses with 400 and this code."""

    def __init__(self, message, code="InvalidParameter"):
        super().__init__(message)
        self.code = code


def _now_text():
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


class Server(FakeServer):
    name = "dashscope"

    def __init__(self, *, polls_to_finish=3, url_ttl=3600, api_key=API_KEY, prefix="", hang_seconds=2.0,
                 concurrency_limit=None, region="beijing"):
        self.api_key = api_key
        self.prefix = prefix
        self.hang_seconds = hang_seconds
        self.concurrency_limit = concurrency_limit  # None: each model's documented cap; a number: for every model
        self.region = region
        self.calls = []     # (method, path, X-DashScope-Async header or None) of every protocol request
        self.list_queries = []  # query parameters of every task-list request
        super().__init__(polls_to_finish=polls_to_finish, url_ttl=url_ttl)

    def add_routes(self, app):
        p = self.prefix
        app.add_url_rule(f"{p}/services/aigc/video-generation/video-synthesis", "video",
                         lambda: self._create("video"), methods=["POST"])
        app.add_url_rule(f"{p}/services/aigc/image2video/video-synthesis", "kf2v",
                         lambda: self._create("kf2v"), methods=["POST"])
        app.add_url_rule(f"{p}/services/aigc/text2image/image-synthesis", "image",
                         lambda: self._create("image"), methods=["POST"])
        app.add_url_rule(f"{p}/tasks/", "list", self._list, methods=["GET"], strict_slashes=False)
        app.add_url_rule(f"{p}/tasks/<task_id>", "query", self._query, methods=["GET"])
        app.add_url_rule(f"{p}/tasks/<task_id>/cancel", "cancel", self._cancel, methods=["POST"])

    def record(self):
        super().record()
        with self.lock:
            self.calls.append((request.method, request.path, request.headers.get("X-DashScope-Async")))

    # ---- envelope and auth

    @staticmethod
    def error(status, code, message):
        return Response(json.dumps({"code": code, "message": message, "request_id": str(uuid.uuid4())}),
                        status, mimetype="application/json")

    def _auth_error(self):
        header = request.headers.get("Authorization", "")
        if not header:
            return self.error(401, "InvalidApiKey", "No API-key provided.")
        if header != f"Bearer {self.api_key}":
            return self.error(401, "InvalidApiKey", "Invalid API-key provided.")
        return None

    # ---- create

    def _create(self, kind):
        self.record()
        if (denied := self._auth_error()) is not None:
            return denied
        if request.headers.get("X-DashScope-Async") != "enable":
            return self.error(403, "AccessDenied", "current user api does not support synchronous calls")
        fault = self.take_fault("submit")
        if fault == "rate_limit_retry_after":
            answer = self.error(*SUBMIT_FAULTS["rate_limit"])
            answer.headers["Retry-After"] = "2"
            return answer
        if fault in SUBMIT_FAULTS:
            return self.error(*SUBMIT_FAULTS[fault])
        body = request.get_json(silent=True)
        try:
            if not isinstance(body, dict):
                raise Invalid("The request body is not valid JSON.")
            if not body.get("model"):
                raise Invalid("Required parameter(s) missing or invalid: model.", "BadRequest.EmptyModel")
            if not isinstance(body.get("input"), dict):
                raise Invalid("Required parameter(s) missing or invalid: input.", "BadRequest.EmptyInput")
            parameters = body.get("parameters", {})
            if not isinstance(parameters, dict):
                raise Invalid("parameters must be an object.")
            model = body["model"]
            models = IMAGE_MODELS if kind == "image" else VIDEO_MODELS
            if model not in models or model not in REGION_MODELS.get(self.region, set()):
                return self.error(404, "ModelNotFound", "Model can not be found.")
            if kind != "image" and (VIDEO_MODELS[model]["kind"] == "kf2v") != (kind == "kf2v"):
                # The SDK sends every *kf2v* model to image2video and nothing else (§9.2(a)).
                raise Invalid(f"Model {model} is not supported on this endpoint.")
            check = self._image_task if kind == "image" else self._video_task
            fields = check(model, body["input"], parameters)
        except Invalid as exc:
            return self.error(400, exc.code, str(exc))
        cap = self.concurrency_limit or (
            IMAGE_CAPS.get(model, 2) if kind == "image" else VIDEO_MODELS[model]["cap"])
        with self.lock:
            in_flight = sum(1 for t in self.tasks.values()
                            if t["status"] in ("PENDING", "RUNNING") and t["model"] == model)
            if in_flight >= cap:
                return self.error(429, "Throttling.RateQuota", "Requests rate limit exceeded, please try again later.")
            task_id = str(uuid.uuid4())
            self.tasks[task_id] = {"id": task_id, "kind": "image" if kind == "image" else "video", "model": model,
                                   "endpoint": kind, "status": "PENDING",
                                   "polls": 0, "created": time.time(), "submit_time": _now_text(),
                                   "output": {}, "usage": None, **fields}
            self.submissions[hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]] += 1
        if fault == "hang":
            time.sleep(self.hang_seconds)   # created, but the answer comes after the client gave up
        if fault == "created_then_error":
            return self.error(500, "InternalError", "An internal error has occured, please try again later.")
        return {"output": {"task_status": "PENDING", "task_id": task_id}, "request_id": str(uuid.uuid4())}

    def _prompts(self, body_input, required, limit=800):
        prompt, negative = body_input.get("prompt"), body_input.get("negative_prompt")
        for field, value in (("prompt", prompt), ("negative_prompt", negative)):
            if value is not None and not isinstance(value, str):
                raise Invalid(f"input.{field} must be a string.")
        if required and not prompt:
            raise Invalid("Required parameter(s) missing or invalid: input.prompt.")
        # The real service cuts longer text without a word; keep what it would use.
        return {"prompt": (prompt or "")[:limit], "prompt_truncated": len(prompt or "") > limit,
                "negative_prompt": (negative or "")[:500], "negative_truncated": len(negative or "") > 500}

    @staticmethod
    def _flags(parameters):
        for name in ("prompt_extend", "watermark"):
            if name in parameters and not isinstance(parameters[name], bool):
                raise Invalid(f"parameters.{name} must be a boolean.")
        seed = parameters.get("seed")
        if seed is not None and (type(seed) is not int or not 0 <= seed <= 2147483647):
            raise Invalid("parameters.seed must be an integer in [0, 2147483647].")
        return {"prompt_extend": parameters.get("prompt_extend", True),
                "watermark": parameters.get("watermark", False), "seed": seed}

    def _video_task(self, model, body_input, parameters):
        spec = VIDEO_MODELS[model]
        duration = parameters.get("duration", 5)
        if type(duration) is not int or duration not in spec["durations"]:
            raise Invalid(f"The duration {duration!r} is not supported by {model}.")
        if "audio" in parameters and (spec["audio"] != "switch" or not isinstance(parameters["audio"], bool)):
            raise Invalid(f"parameters.audio is not supported by {model}." if spec["audio"] != "switch"
                          else "parameters.audio must be a boolean.")
        oss = request.headers.get("X-DashScope-OssResourceResolve")
        if spec["kind"] == "t2v":
            size = parameters.get("size", "1920*1080" if "1080P" in spec["resolutions"] else "1280*720")
            resolution = next((tier for tier in spec["resolutions"] if size in T2V_SIZES[tier]), None)
            if resolution is None:
                raise Invalid(f"The size {size!r} is not supported by {model}.")
            for field in ("img_url", "first_frame_url", "last_frame_url"):
                if field in body_input:
                    raise Invalid(f"input.{field} is not a parameter of {model}.")
            image = {"size": size}
        else:
            resolution = parameters.get("resolution", spec["default"])
            if resolution not in spec["resolutions"]:
                raise Invalid(f"The resolution {resolution!r} is not supported by {model}; "
                              f"choose one of {', '.join(spec['resolutions'])}.")
            if spec["kind"] == "kf2v":
                if "img_url" in body_input:
                    raise Invalid("input.img_url is not a parameter here: use first_frame_url and last_frame_url.")
                image = self._picture(body_input.get("first_frame_url"), oss, "first_frame_url")
                if not body_input.get("template") or body_input.get("last_frame_url") is not None:
                    last = self._picture(body_input.get("last_frame_url"), oss, "last_frame_url")
                    image.update({f"last_{key}": value for key, value in last.items()})
            else:
                image = self._picture(body_input.get("img_url"), oss, "img_url")
        return {**self._prompts(body_input, required=spec["kind"] == "t2v", limit=1500 if spec["long"] else 800),
                **self._flags(parameters), **image, "resolution": resolution, "duration": duration,
                "audio": parameters.get("audio", True) if spec["audio"] else False}

    @staticmethod
    def _picture(img_url, oss_resolve, field="img_url"):
        if not isinstance(img_url, str) or not img_url:
            raise Invalid(f"Required parameter(s) missing or invalid: input.{field}.")
        if img_url.startswith(("http://", "https://")):
            return {"img_source": "url"}            # the real service fetches it; nothing to fetch here
        if img_url.startswith("oss://"):
            if oss_resolve != "enable":
                raise Invalid("oss:// URLs need the X-DashScope-OssResourceResolve: enable header.")
            return {"img_source": "oss"}
        match = re.fullmatch(r"data:(image/[\w.+-]+);base64,(.+)", img_url, re.DOTALL)
        if not match:
            raise Invalid("The provided URL does not appear to be valid. Ensure it is correctly formatted.")
        try:
            data = base64.b64decode(match.group(2), validate=True)
            with Image.open(io.BytesIO(data)) as img:
                fmt, (width, height), mode, info = img.format, img.size, img.mode, img.info
        except (binascii.Error, ValueError, OSError):
            raise Invalid(f"The image in {field} cannot be decoded.") from None
        if fmt not in ("JPEG", "PNG", "BMP", "WEBP"):
            raise Invalid(f"The image format {fmt} is not supported.")
        if len(data) > 10 * 1024 * 1024:
            raise Invalid("The image is larger than 10 MB.")
        if not (360 <= width <= 2000 and 360 <= height <= 2000):
            raise Invalid(f"The image is {width}x{height}; width and height must be within [360, 2000].")
        if fmt == "PNG" and (mode in ("RGBA", "LA", "PA") or "transparency" in info):
            raise Invalid("PNG images with an alpha channel are not supported.")
        return {"img_source": "data", "img_mime": match.group(1), "img_format": fmt, "img_size": (width, height)}

    def _image_task(self, model, body_input, parameters):
        size = parameters.get("size", "1024*1024")
        match = re.fullmatch(r"(\d+)\*(\d+)", size) if isinstance(size, str) else None
        if not match:
            raise Invalid(f"The size {size!r} is not valid: use width*height, e.g. 1024*1024.")
        width, height = int(match.group(1)), int(match.group(2))
        if IMAGE_MODELS[model] == "pixels":
            if not (768 * 768 <= width * height <= 1440 * 1440 and 1 / 4 <= width / height <= 4):
                raise Invalid(f"The size {size} is out of range: total pixels within [768*768, 1440*1440], "
                              "aspect ratio within 1:4 and 4:1.")
        elif not (512 <= width <= 1440 and 512 <= height <= 1440):
            raise Invalid(f"The size {size} is out of range: each side must be within [512, 1440].")
        n = parameters.get("n", 4)                  # the documented (and billed) default
        if type(n) is not int or not 1 <= n <= 4:
            raise Invalid("parameters.n must be an integer in [1, 4].")
        return {**self._prompts(body_input, required=True), **self._flags(parameters),
                "size": (width, height), "n": n}

    # ---- query and cancel

    def _query(self, task_id):
        self.record()
        if (denied := self._auth_error()) is not None:
            return denied
        fault = self.take_fault("query")
        if fault == "malformed":
            return Response('{"request_id": "x", "output": {"task_status": "RUNN', 200, mimetype="application/json")
        if fault == "server_error":
            return self.error(500, "InternalError", "An internal error has occured, please try again later.")
        with self.lock:
            task = self._live(task_id)
            if task is None:
                return {"request_id": str(uuid.uuid4()), "output": {"task_id": task_id, "task_status": "UNKNOWN"}}
            if task["status"] in ("PENDING", "RUNNING"):
                task["polls"] += 1
                if task["polls"] >= self.polls_to_finish:
                    self._finish(task)
                elif task["polls"] >= 2:
                    task["status"] = "RUNNING"
                    task.setdefault("scheduled_time", _now_text())
            output = {"task_id": task_id, "task_status": task["status"], "submit_time": task["submit_time"]}
            for key in ("scheduled_time", "end_time"):
                if key in task:
                    output[key] = task[key]
            output.update(task["output"])
            answer = {"request_id": str(uuid.uuid4()), "output": output}
            if task["usage"] is not None:
                answer["usage"] = task["usage"]
            return answer

    def _list(self):
        """The batch task query (PROVIDERS.md §3.6): a window of at most 24 h, given as Beijing-time
        `YYYYMMDDhhmmss` (the last 24 h when left out), `model_name` and `status` filters, pages of
        `page_size` (1-100) numbered from 1, newest first."""
        self.record()
        if (denied := self._auth_error()) is not None:
            return denied
        if self.take_fault("list") == "server_error":
            return self.error(500, "InternalError", "An internal error has occured, please try again later.")
        args = request.args
        with self.lock:
            self.list_queries.append(dict(args))
        try:
            now = time.time()
            end = _beijing_seconds(args["end_time"], "end_time") if args.get("end_time") else now
            start = _beijing_seconds(args["start_time"], "start_time") if args.get("start_time") else end - TASK_TTL
            if end < start or end - start > TASK_TTL:
                raise Invalid("The time window must not be longer than 24 hours, and end_time not before start_time.")
            page_no, page_size = _int_arg(args, "page_no", 1, 1, 10**6), _int_arg(args, "page_size", 10, 1, 100)
            status = args.get("status")
            if status is not None and status not in ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED"):
                raise Invalid(f"The status {status!r} is not valid.")
        except Invalid as exc:
            return self.error(400, exc.code, str(exc))
        with self.lock:
            found = [t for t in self.tasks.values()
                     if start <= int(t["created"]) <= end and self._live(t["id"])
                     and args.get("model_name") in (None, t["model"]) and status in (None, t["status"])]
            found.sort(key=lambda t: t["created"], reverse=True)
            page = found[(page_no - 1) * page_size: page_no * page_size]
            data = [{"task_id": t["id"], "status": t["status"], "model_name": t["model"], "region": "cn-beijing",
                     "api_key_id": "fake-key-id", "gmt_create": int(t["created"] * 1000),
                     "start_time": int(t["created"] * 1000), "end_time": None} for t in page]
        return {"request_id": str(uuid.uuid4()), "data": data, "total": len(found),
                "total_page": (len(found) + page_size - 1) // page_size, "page_no": page_no, "page_size": page_size}

    def _live(self, task_id):
        task = self.tasks.get(task_id)
        return task if task and time.time() - task["created"] < TASK_TTL else None

    def _finish(self, task):
        fault = self.take_fault("result")
        task.setdefault("scheduled_time", _now_text())
        task["end_time"] = _now_text()
        if fault == "moderation":
            task.update(status="FAILED", output={"code": "DataInspectionFailed",
                                                 "message": "Output data may contain inappropriate content."})
            return
        ttl = -60 if fault == "expired_url" else None
        prompts = {"orig_prompt": task["prompt"]}
        if task["prompt_extend"]:
            prompts["actual_prompt"] = task["prompt"] + " (rewritten by prompt_extend)"
        task["status"] = "SUCCEEDED"
        if task["kind"] == "video":
            url, _ = self.publish(sample_mp4(), "video/mp4", ".mp4", ttl=ttl)
            task["output"] = {"video_url": url, **prompts}
            if task["model"].startswith("wanx2.1"):
                task["usage"] = {"video_duration": task["duration"], "video_ratio": "standard", "video_count": 1}
            else:
                task["usage"] = {"duration": task["duration"], "SR": int(task["resolution"][:-1]), "video_count": 1}
            return
        results = []
        for index in range(task["n"]):
            if fault == "partial" and index == 1:
                results.append(dict(zip(("code", "message"), PARTIAL_FAILURE, strict=True)))
            else:
                url, _ = self.publish(sample_png(*task["size"], seed=index), "image/png", ".png", ttl=ttl)
                results.append({"url": url, **prompts})
        made = sum(1 for r in results if "url" in r)
        task["output"] = {"results": results,
                          "task_metrics": {"TOTAL": task["n"], "SUCCEEDED": made, "FAILED": task["n"] - made}}
        task["usage"] = {"image_count": made}

    def _cancel(self, task_id):
        self.record()
        if (denied := self._auth_error()) is not None:
            return denied
        with self.lock:
            task = self._live(task_id)
            if task is None or task["status"] != "PENDING":
                return self.error(400, "UnsupportedOperation",
                                  "Failed to cancel the task, please confirm if the task is in PENDING status.")
            task.update(status="CANCELED", end_time=_now_text())
        return {"request_id": str(uuid.uuid4())}


def _beijing_seconds(text, name):
    """Unix seconds of a `YYYYMMDDhhmmss` time in Beijing time (UTC+8), as DashScope reads its filters."""
    try:
        moment = datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=BEIJING)
    except ValueError:
        raise Invalid(f"{name} must be YYYYMMDDhhmmss.") from None
    return moment.timestamp()


def _int_arg(args, name, default, low, high):
    raw = args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise Invalid(f"{name} must be a whole number in [{low}, {high}].")
    return int(raw)


def usage(url):
    """How to point the studio at this server."""
    return [f"DASHSCOPE_API_BASE={url} DASHSCOPE_API_KEY={API_KEY}"]
