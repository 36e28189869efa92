"""Local stand-in for the self-hosted Wan2.1 image-to-video server (PROVIDERS.md §9.5).

It checks the Bearer key on every call (401 `{"detail": ...}`), validates the submit body as the
brief's table says (prompt 10-500 characters, an http(s) `image_url`, `image_size`
auto|480x832|832x480, `num_frames` 24-120, `guidance_scale` 1-20, `infer_steps` 20-100, optional
`seed` 0-2147483647; 422 with FastAPI's error list otherwise) and, like the real server, fetches
the first frame from `image_url` itself before answering: a link that does not give a readable
picture is a 400 "image download failed". Tasks wait `InQueue` while 2 others run, move to
`InProgress`, and after `polls_to_finish` status queries end `Succeed` with a real MP4; cancel
works on a queued or running task. Faults (`inject(where, ...)`):
  submit:  "500" (created, then a 500: out of GPU memory while answering)
  outcome: "fail" (the run fails with a reason)
  status:  "500" (the status query fails; safe to repeat)
"""

import io
import json
import time
import uuid

import requests
from flask import Response, request
from PIL import Image

from tests.fakes import FakeServer, sample_mp4

API_KEY = "fake-wan-key"
MAX_RUNNING = 2
IMAGE_SIZES = ("auto", "480x832", "832x480")


def answer(body, status=200):
    return Response(json.dumps(body), status, mimetype="application/json")


def _int(value, low, high):
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _number(value, low, high):
    return isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high


class Server(FakeServer):
    name = "wan_server"

    def __init__(self, *, api_key=API_KEY, **kwargs):
        self.api_key = api_key
        self.fetches = []           # (image_url, HTTP status, bytes) of every first-frame download
        self.max_running = 0
        super().__init__(**kwargs)

    def add_routes(self, app):
        app.add_url_rule("/video/submit", "submit", self._submit, methods=["POST"])
        app.add_url_rule("/video/status", "status", self._status, methods=["POST"])
        app.add_url_rule("/video/cancel", "cancel", self._cancel, methods=["POST"])

    def running(self):
        with self.lock:
            return sum(1 for task in self.tasks.values() if task["status"] == "InProgress")

    # ---- the API ----

    def _authorized_json(self):
        self.record()
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return None, answer({"detail": "Invalid or missing API key"}, 401)
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return None, answer({"detail": [{"loc": ["body"], "msg": "a JSON object is required",
                                              "type": "model_attributes_type"}]}, 422)
        return body, None

    def _submit(self):
        body, error = self._authorized_json()
        if error:
            return error
        rules = [("model", isinstance(body.get("model"), str) and body["model"]),
                 ("prompt", isinstance(body.get("prompt"), str) and 10 <= len(body["prompt"]) <= 500),
                 ("image_url", isinstance(body.get("image_url"), str)
                  and body["image_url"].startswith(("http://", "https://"))),
                 ("image_size", body.get("image_size") in IMAGE_SIZES),
                 ("num_frames", _int(body.get("num_frames"), 24, 120)),
                 ("guidance_scale", _number(body.get("guidance_scale"), 1.0, 20.0)),
                 ("infer_steps", _int(body.get("infer_steps"), 20, 100)),
                 ("seed", "seed" not in body or _int(body["seed"], 0, 2147483647))]
        bad = [{"loc": ["body", name], "msg": "field required or out of range", "type": "value_error"}
               for name, ok in rules if not ok]
        if bad:
            return answer({"detail": bad}, 422)
        picture = self._fetch(body["image_url"])
        if picture is None:
            return answer({"detail": "image download failed"}, 400)
        request_id = uuid.uuid4().hex
        with self.lock:
            self.tasks[request_id] = {"status": "InQueue", "polls": 0, "body": body, "picture": picture,
                                      "outcome": self.take_fault("outcome"), "seed": body.get("seed", 424242)}
            self.submissions[body["prompt"]] += 1
        if self.take_fault("submit") == "500":
            return answer({"detail": "CUDA out of memory"}, 500)
        return answer({"requestId": request_id}, 202)

    def _fetch(self, url):
        """Download the first frame the way the server does; the picture's size, or None."""
        try:
            with requests.get(url, timeout=5) as resp:
                data = resp.content if resp.status_code == 200 else b""
                status = resp.status_code
        except requests.RequestException:
            data, status = b"", None
        with self.lock:
            self.fetches.append((url, status, data))
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.convert("RGB")
                return img.size
        except Exception:   # noqa: BLE001 - anything unreadable is "download failed" to the server
            return None

    def _task(self, body):
        with self.lock:
            return self.tasks.get(body.get("requestId"))

    def _status(self):
        body, error = self._authorized_json()
        if error:
            return error
        if self.take_fault("status") == "500":
            return answer({"detail": "internal error"}, 500)
        task = self._task(body)
        if task is None:
            return answer({"detail": "task not found"}, 404)
        with self.lock:
            self._advance(task)
            reply = {"status": task["status"]}
            if task["status"] == "Succeed":
                reply["results"] = {"videos": [{"url": task["url"]}], "timings": {"inference": 90},
                                    "seed": task["seed"]}
            elif task["status"] == "Failed":
                reply["reason"] = "CUDA out of memory during sampling"
        return answer(reply)

    def _advance(self, task):
        """InQueue until one of the 2 slots is free, then InProgress for `polls_to_finish` polls."""
        if task["status"] == "InQueue" and self.running() < MAX_RUNNING:
            task["status"] = "InProgress"
            self.max_running = max(self.max_running, self.running())
        elif task["status"] == "InProgress":
            task["polls"] += 1
            if task["polls"] >= self.polls_to_finish:
                if task["outcome"] == "fail":
                    task["status"] = "Failed"
                else:
                    task["url"] = self.publish(sample_mp4(), "video/mp4", ".mp4")[0]
                    task["status"] = "Succeed"
                    task["finished"] = time.time()

    def _cancel(self):
        body, error = self._authorized_json()
        if error:
            return error
        task = self._task(body)
        if task is None:
            return answer({"detail": "task not found"}, 404)
        with self.lock:
            if task["status"] not in ("InQueue", "InProgress"):
                return answer({"detail": f"task already {task['status']}"}, 400)
            task["status"] = "Cancelled"
        return answer({"status": "Succeed"})


def usage(url):
    return [f"WAN_SERVER_BASE={url} WAN_SERVER_API_KEY={API_KEY} PUBLIC_BASE_URL=<the studio as this server "
            "reaches it>", "At most 2 tasks run at once; a task finishes after --polls status queries."]
