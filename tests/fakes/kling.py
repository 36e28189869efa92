"""A local Kling official API (PROVIDERS.md §1) for tests and for trying the studio by hand.

It checks the JWT exactly (HS256 signature with the secret key, `iss` = access key, `nbf`, `exp`),
insists on `Content-Type: application/json`, and refuses what Kling refuses with Kling's envelope and
codes: `data:` URIs instead of raw Base64, a non-string `duration`, `cfg_scale` on v2.x/v3 models,
mode/duration/tail/camera/sound combinations the §1.9 / §9.1 matrix does not list, a reused `external_task_id`,
and more tasks in flight than the account's pack allows (429 1303; an image task holds n slots).
Its model matrix is written from PROVIDERS.md independently of the client's table, so a drift between
them shows up as a refused request. Tasks go submitted → processing → succeed over status queries;
results are a real MP4 / PNGs behind expiring signed URLs.

Faults (`inject(where, name)`): submit: "rate_limit" (429 1302), "concurrency" (429 1303), "billing"
(429 1102), "error_500" (500 5000, nothing created), "error_500_after_create", "hang" (task created,
answer after `hang_seconds`); query: "malformed" (broken JSON), "error_500"; result: "expired"
(URLs already expired), "failed" (moderation failure); download: "truncate", "error", "not_found" (base class).
"""

import base64
import binascii
import io
import json
import secrets
import time
from collections import Counter
from functools import partial

import jwt
from flask import Response, request
from PIL import Image

from tests.fakes import FakeServer, sample_mp4, sample_png

ENDPOINTS = {"image2video": "/v1/videos/image2video", "text2video": "/v1/videos/text2video",
             "images": "/v1/images/generations"}

ALL = {("std", "5"), ("std", "10"), ("pro", "5"), ("pro", "10")}
PRO = {("pro", "5"), ("pro", "10")}
STD = {("std", "5"), ("std", "10")}
V3 = {(mode, str(seconds)) for mode in ("std", "pro") for seconds in range(3, 16)}
# §1.9 / §9.1: combos per endpoint, tail combos, cfg_scale, camera_control (endpoint -> combos, simple
# only?), and where `sound: "on"` is taken (never with image_tail). kling-v2-5-turbo: pro only, the
# cautious reading of §9.1 (the relays that require pro refuse std).
VIDEO_MODELS = {
    "kling-v1": {"text2video": ALL, "image2video": ALL, "tail": {("std", "5"), ("pro", "5")}, "cfg": True,
                 "camera": {"text2video": {("std", "5")}}, "simple_only": False},
    "kling-v1-5": {"text2video": set(), "image2video": ALL, "tail": PRO, "cfg": True,
                   "camera": {"image2video": {("pro", "5")}}, "simple_only": True},
    "kling-v1-6": {"text2video": ALL, "image2video": ALL, "tail": PRO, "cfg": True},
    "kling-v2-master": {"text2video": STD, "image2video": STD, "tail": set(), "cfg": False},
    "kling-v2-1": {"text2video": set(), "image2video": ALL, "tail": PRO, "cfg": False},
    "kling-v2-1-master": {"text2video": STD, "image2video": STD, "tail": set(), "cfg": False},
    "kling-v2-5-turbo": {"text2video": PRO, "image2video": PRO, "tail": PRO, "cfg": False},
    "kling-v2-6": {"text2video": ALL, "image2video": ALL, "tail": PRO, "cfg": False, "sound": PRO},
    "kling-v3": {"text2video": V3, "image2video": V3, "tail": V3, "cfg": False, "sound": V3},
}
NO_MODE_CHOICE = {"kling-v2-master", "kling-v2-1-master"}
CAMERA_TYPES = {"simple", "down_back", "forward_up", "right_turn_forward", "left_turn_forward"}
CAMERA_AXES = {"horizontal", "vertical", "pan", "tilt", "roll", "zoom"}
IMAGE_RATIOS = {"16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9"}
# §1.7 / §1.9 image models: text-to-image?, picture allowed?, reference types.
IMAGE_MODELS = {
    "kling-v1": {"t2i": True, "image": True, "references": set()},
    "kling-v1-5": {"t2i": True, "image": True, "references": {"subject", "face"}},
    "kling-v2": {"t2i": True, "image": True, "references": set()},      # restyle keeps the input size
    "kling-v2-new": {"t2i": False, "image": True, "references": set()},
    "kling-v2-1": {"t2i": True, "image": False, "references": set()},
}
SUBMIT_REFUSALS = {"rate_limit": (429, 1302, "request rate too high"),
                   "concurrency": (429, 1303, "parallel task over resource pack limit"),
                   "billing": (429, 1102, "resource pack exhausted or expired"),
                   "error_500": (500, 5000, "internal server error")}


class KlingError(Exception):
    def __init__(self, http_status, code, message):
        super().__init__(message)
        self.http_status, self.code, self.message = http_status, code, message


# 32 characters like real Kling keys (PyJWT warns about shorter HMAC keys).
FAKE_AK, FAKE_SK = "fake-ak-0123456789abcdefghijklmn", "fake-sk-0123456789abcdefghijklmn"


def usage(url):
    return [f"KLING_API_BASE={url} KLING_ACCESS_KEY={FAKE_AK} KLING_SECRET_KEY={FAKE_SK} python app.py",
            "(any other key pair is refused with code 1000, like the real service)"]


def invalid(message):
    return KlingError(400, 1201, message)


class Server(FakeServer):
    name = "kling"

    def __init__(self, *, access_key=FAKE_AK, secret_key=FAKE_SK, concurrency_limit=5, hang_seconds=2.0,
                 **kwargs):
        self.access_key, self.secret_key = access_key, secret_key
        self.concurrency_limit = concurrency_limit
        self.hang_seconds = hang_seconds
        self.answered = Counter()        # business code of every answer (0 = success)
        super().__init__(**kwargs)

    def reset(self):
        """Forget every task, request, fault and counter, so a test module can share one server."""
        with self.lock:
            for table in (self.tasks, self.submissions, self.received, self.faults, self.file_hits,
                          self.answered, self._files):
                table.clear()

    def add_routes(self, app):
        for kind, path in ENDPOINTS.items():
            app.add_url_rule(path, f"create_{kind}", partial(self._create, kind), methods=["POST"])
            app.add_url_rule(path, f"list_{kind}", partial(self._list, kind), methods=["GET"])
            app.add_url_rule(f"{path}/<ident>", f"get_{kind}", partial(self._get, kind), methods=["GET"])

    # ---- envelope and auth

    def _answer(self, data, http_status=200, code=0, message="SUCCEED"):
        with self.lock:
            self.answered[code] += 1
        body = {"code": code, "message": message, "request_id": secrets.token_hex(8), "data": data}
        return Response(json.dumps(body), http_status, mimetype="application/json")

    def _check_auth(self):
        header = request.headers.get("Authorization")
        if not header:
            raise KlingError(401, 1001, "Authorization is empty")
        if not header.startswith("Bearer "):
            raise KlingError(401, 1002, "Authorization is invalid")
        token = header[len("Bearer "):]
        try:
            head = jwt.get_unverified_header(token)
            if head.get("alg") != "HS256" or head.get("typ") != "JWT":
                raise KlingError(401, 1002, "Authorization is invalid")
            claims = jwt.decode(token, self.secret_key, algorithms=["HS256"],
                                options={"require": ["iss", "exp", "nbf"]})
        except jwt.ExpiredSignatureError:
            raise KlingError(401, 1004, "Authorization is expired") from None
        except jwt.ImmatureSignatureError:
            raise KlingError(401, 1003, "Authorization is not yet valid") from None
        except jwt.InvalidSignatureError:
            raise KlingError(401, 1000, "Authentication failed") from None
        except jwt.InvalidTokenError:
            raise KlingError(401, 1002, "Authorization is invalid") from None
        if claims["iss"] != self.access_key:
            raise KlingError(401, 1000, "Authentication failed")

    def _guarded(self, handler):
        try:
            self._check_auth()
            return handler()
        except KlingError as exc:
            return self._answer(None, exc.http_status, exc.code, exc.message)

    # ---- create

    def _create(self, kind):
        self.record()
        return self._guarded(partial(self._create_checked, kind))

    def _create_checked(self, kind):
        if request.mimetype != "application/json":
            raise KlingError(400, 1200, "Content-Type must be application/json")
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise KlingError(400, 1200, "request body is not a JSON object")
        fault = self.take_fault("submit")
        if fault in SUBMIT_REFUSALS:
            raise KlingError(*SUBMIT_REFUSALS[fault])
        slots, meta = self._check_images(body) if kind == "images" else self._check_video(kind, body)
        external = body.get("external_task_id")
        if external is not None and not isinstance(external, str):
            raise invalid("external_task_id must be a string")
        pack = "image" if kind == "images" else "video"
        with self.lock:
            if external and any(t["external_task_id"] == external for t in self.tasks.values()):
                raise invalid("external_task_id already exists")
            if self._in_flight(pack) + slots > self.concurrency_limit:
                raise KlingError(429, 1303, "parallel task over resource pack limit")
            now = int(time.time() * 1000)
            task = {"task_id": self.new_id("kt"), "kind": kind, "pack": pack, "slots": slots,
                    "external_task_id": external, "status": "submitted", "status_msg": "", "polls": 0,
                    "created_at": now, "updated_at": now, "result": None, "units": None, **meta}
            self.tasks[task["task_id"]] = task
            self.submissions[external or task["task_id"]] += 1
            answer = self._public(task)
        if fault == "error_500_after_create":
            raise KlingError(500, 5000, "internal server error")
        if fault == "hang":
            time.sleep(self.hang_seconds)    # created, but the answer comes after the client gave up
        return self._answer(answer)

    def _in_flight(self, pack):
        return sum(t["slots"] for t in self.tasks.values()
                   if t["pack"] == pack and t["status"] in ("submitted", "processing"))

    def _check_video(self, kind, body):
        model = body.get("model_name") or "kling-v1"   # the old field `model` is ignored: kling-v1
        spec = VIDEO_MODELS.get(model)
        if spec is None:
            raise KlingError(404, 1203, f"model {model} not found")
        mode = body.get("mode", "std")
        if mode not in ("std", "pro") or (model in NO_MODE_CHOICE and mode != "std"):
            raise invalid(f"mode {mode!r} is invalid for {model}")
        duration = body.get("duration", "5")
        durations = {d for _, d in spec["image2video"] | spec["text2video"]}
        if not isinstance(duration, str) or duration not in durations:
            raise invalid(f"duration must be one of the strings {sorted(durations, key=int)} for {model}")
        combo = (mode, duration)
        if combo not in spec[kind]:
            raise invalid(f"{model} does not support {kind} in {mode} mode for {duration}s")
        self._check_text(body, required=kind == "text2video")
        if "cfg_scale" in body:
            value = body["cfg_scale"]
            if not spec["cfg"]:
                raise invalid(f"cfg_scale is not supported by {model}")
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise invalid("cfg_scale must be a number in [0, 1]")
        if kind == "image2video":
            self._picture(body.get("image"), "image", ratio_checked=True, required=True)
            if "aspect_ratio" in body:
                # Not in the official image2video doc (§1.4 [?]); refusing it keeps the client from relying on it.
                raise invalid("aspect_ratio is not a parameter of image2video")
            if body.get("image_tail") is not None:
                self._picture(body["image_tail"], "image_tail")
                if combo not in spec["tail"]:
                    raise invalid(f"{model} does not support image_tail in {mode} mode for {duration}s")
        elif body.get("aspect_ratio", "16:9") not in ("16:9", "9:16", "1:1"):
            raise invalid("aspect_ratio is invalid")
        if body.get("camera_control") is not None:
            self._check_camera(kind, model, spec, combo, body)
        self._check_sound(model, spec, combo, body)
        return 1, {"model": model, "duration": duration}

    @staticmethod
    def _check_sound(model, spec, combo, body):
        """`sound` "on"|"off" on v2.6 and later only; "on" only where rendered, never with a tail (§9.1)."""
        if "sound" not in body:
            return
        sound = body["sound"]
        if "sound" not in spec:
            raise invalid(f"sound is not supported by {model}")
        if sound not in ("on", "off"):
            raise invalid("sound must be \"on\" or \"off\"")
        if sound == "on" and (combo not in spec["sound"] or body.get("image_tail") is not None):
            raise invalid(f"{model} does not support sound in {combo[0]} mode for {combo[1]}s"
                          + (" with image_tail" if body.get("image_tail") is not None else ""))

    def _check_camera(self, kind, model, spec, combo, body):
        camera = body["camera_control"]
        if body.get("image_tail") is not None:
            raise invalid("camera_control cannot be used with image_tail")
        if combo not in spec.get("camera", {}).get(kind, set()):
            raise invalid(f"{model} does not support camera_control for {kind} in {combo[0]} mode {combo[1]}s")
        if not isinstance(camera, dict) or camera.get("type") not in CAMERA_TYPES:
            raise invalid("camera_control.type is invalid")
        if camera["type"] != "simple":
            if spec["simple_only"]:
                raise invalid(f"{model} supports only the simple camera_control type")
            if "config" in camera:
                raise invalid("camera_control.config is only for the simple type")
            return
        config = camera.get("config")
        if not isinstance(config, dict) or not set(config) <= CAMERA_AXES:
            raise invalid("camera_control.config is invalid")
        values = list(config.values())
        if any(isinstance(v, bool) or not isinstance(v, int | float) or not -10 <= v <= 10 for v in values):
            raise invalid("camera_control.config values must be numbers in [-10, 10]")
        if sum(1 for v in values if v != 0) != 1:
            raise invalid("camera_control.config needs exactly one non-zero value")

    def _check_images(self, body):
        model = body.get("model_name") or "kling-v1"
        spec = IMAGE_MODELS.get(model)
        if spec is None:
            raise KlingError(404, 1203, f"model {model} not found")
        self._check_text(body, required=True)
        has_image = body.get("image") is not None
        if has_image:
            if not spec["image"]:
                raise invalid(f"{model} does not support image")
            self._picture(body["image"], "image", ratio_checked=True)
            if body.get("negative_prompt"):
                raise invalid("negative_prompt is not supported with image")
        elif not spec["t2i"]:
            raise invalid(f"{model} requires image")
        reference = body.get("image_reference")
        if reference is not None:
            if reference not in spec["references"] or not has_image:
                raise invalid(f"image_reference {reference!r} is invalid for {model}")
        elif has_image and spec["references"]:
            raise invalid(f"image_reference is required for {model} with image")
        for name in ("image_fidelity", "human_fidelity"):
            value = body.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not 0 <= value <= 1):
                raise invalid(f"{name} must be a number in [0, 1]")
        n = body.get("n", 1)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 9:
            raise invalid("n must be an integer in [1, 9]")
        ratio = body.get("aspect_ratio", "16:9")
        if ratio not in IMAGE_RATIOS or (model == "kling-v1" and ratio == "21:9"):
            raise invalid(f"aspect_ratio {ratio!r} is invalid for {model}")
        if body.get("resolution", "1k") not in ("1k", "2k") or (
                body.get("resolution") == "2k" and (model != "kling-v2" or has_image)):
            raise invalid("resolution is invalid")
        return n, {"model": model, "n": n}

    @staticmethod
    def _check_text(body, *, required):
        for name in ("prompt", "negative_prompt"):
            value = body.get(name)
            if value is not None and (not isinstance(value, str) or len(value) > 2500):
                raise invalid(f"{name} must be a string of at most 2500 characters")
        if required and not body.get("prompt"):
            raise invalid("prompt is required")

    @staticmethod
    def _picture(value, name, *, ratio_checked=False, required=False):
        """A raw-Base64 JPG/PNG within §1.10's limits."""
        if value is None:
            if required:
                raise invalid(f"{name} is required")
            return
        if not isinstance(value, str) or value.startswith("data:"):
            raise invalid(f"{name} must be a URL or raw Base64 without a data: prefix")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise invalid(f"{name} is not valid Base64") from None
        if len(data) > 10 * 1024 * 1024:
            raise invalid(f"{name} is larger than 10MB")
        try:
            with Image.open(io.BytesIO(data)) as img:
                fmt, (width, height) = img.format, img.size
        except OSError:
            raise invalid(f"{name} is not an image") from None
        if fmt not in ("JPEG", "PNG") or min(width, height) < 300:
            raise invalid(f"{name} must be a jpg/png with each side at least 300px")
        if ratio_checked and not 1 / 2.5 <= width / height <= 2.5:
            raise invalid(f"{name} aspect ratio must be between 1:2.5 and 2.5:1")

    # ---- query and list

    def _get(self, kind, ident):
        self.record()
        return self._guarded(partial(self._get_checked, kind, ident))

    def _get_checked(self, kind, ident):
        fault = self.take_fault("query")
        if fault == "malformed":
            return Response('{"code": 0, "message": "SUCCEED", "data": {"task_id": ', 200, mimetype="application/json")
        if fault == "error_500":
            raise KlingError(500, 5000, "internal server error")
        with self.lock:
            # The path value may be Kling's task_id or the caller's external_task_id (§1.6).
            task = self.tasks.get(ident)
            if task is None:
                task = next((t for t in self.tasks.values() if t["external_task_id"] == ident), None)
            if task is None or task["kind"] != kind:
                raise KlingError(404, 1203, "task not found")
            self._advance(task)
            return self._answer(self._public(task))

    def _list(self, kind):
        self.record()
        return self._guarded(partial(self._list_checked, kind))

    def _list_checked(self, kind):
        try:
            page, size = int(request.args.get("pageNum", 1)), int(request.args.get("pageSize", 30))
        except ValueError:
            raise invalid("pageNum and pageSize must be integers") from None
        if not (1 <= page <= 1000 and 1 <= size <= 500):
            raise invalid("pageNum must be in [1, 1000] and pageSize in [1, 500]")
        external = request.args.get("external_task_id")
        with self.lock:
            found = [t for t in reversed(self.tasks.values())
                     if t["kind"] == kind and (external is None or t["external_task_id"] == external)]
            return self._answer([self._public(t) for t in found[(page - 1) * size: page * size]])

    def _advance(self, task):
        """One status query moves a task along: submitted → processing → succeed."""
        if task["status"] in ("succeed", "failed"):
            return
        task["polls"] += 1
        if task["polls"] >= self.polls_to_finish:
            self._finish(task)
        elif task["polls"] >= self.polls_to_finish - 1:
            task["status"] = "processing"
        task["updated_at"] = int(time.time() * 1000)

    def _finish(self, task):
        fault = self.take_fault("result")
        if fault == "failed":
            task.update(status="failed", status_msg="Failure to pass the risk control system")
            return
        ttl = -60 if fault == "expired" else None
        if task["kind"] == "images":
            urls = [self.publish(sample_png(seed=i), "image/png", ".png", ttl)[0] for i in range(task["n"])]
            task["result"] = {"images": [{"index": i, "url": url} for i, url in enumerate(urls)]}
            task["units"] = str(task["n"])
        else:
            url = self.publish(sample_mp4(), "video/mp4", ".mp4", ttl)[0]
            task["result"] = {"videos": [{"id": self.new_id("v"), "url": url, "duration": task["duration"]}]}
            task["units"] = "1" if task["duration"] == "5" else "2"
        task["status"] = "succeed"

    @staticmethod
    def _public(task):
        """The task object as Kling shows it (§1.3)."""
        shown = {"task_id": task["task_id"], "task_status": task["status"], "task_status_msg": task["status_msg"],
                 "task_info": {"external_task_id": task["external_task_id"]} if task["external_task_id"] else {},
                 "created_at": task["created_at"], "updated_at": task["updated_at"]}
        if task["status"] == "succeed":
            shown.update(task_result=task["result"], final_unit_deduction=task["units"])
        return shown
