"""A self-hosted Wan2.1 image-to-video server (PROVIDERS.md §9.5): submit, status, cancel.

The protocol is the owner's brief: `POST /video/submit`, `/video/status` and `/video/cancel` on
`WAN_SERVER_BASE`, JSON bodies, `Authorization: Bearer WAN_SERVER_API_KEY`, a 202 with a
`requestId`, statuses `InQueue` / `InProgress` / `Succeed` / `Failed` / `Cancelled` (any other
value is still running), FastAPI-style `{"detail": ...}` errors, at most 2 tasks running at once.

The server fetches the first frame itself, from `image_url`: the studio hands it a signed,
expiring URL of the task's own input picture (signed_inputs.py, under PUBLIC_BASE_URL), which
opens that one file and nothing else. The server's settings (`image_size`, `num_frames`,
`guidance_scale`, `infer_steps`, `seed`) are the model's `advanced` table entry, which
video_extend.py checks requests against. Videos are deleted by the server after about an hour,
so the result link is recorded as expiring then. The server keeps no client id, so a submit whose
outcome is unknown cannot be reconciled; cancel is a real call.
"""

import logging
from datetime import UTC, datetime, timedelta

import signed_inputs
from errors import (
    ProviderAuthError,
    ProviderBadResponse,
    ProviderRejected,
    ProviderUnavailable,
    SubmitOutcomeUnknown,
)
from providers.base import N_, Provider, ProviderStatus, RemoteOutput
from providers.base import ReportState as State
from providers.capabilities import ProviderTable, VideoModel, combos
from providers.errors_map import OTHER, SERVER_ERRORS, SUBMIT, map_error, rule
from providers.http import json_body

log = logging.getLogger(__name__)

SUBMIT_PATH, STATUS_PATH, CANCEL_PATH = "/video/submit", "/video/status", "/video/cancel"
MODEL = "Wan2.1-I2V-14B-480P"
FPS = 16                        # Wan2.1 renders 16 frames a second: 81 frames are about 5 s
RESULT_LIFETIME = timedelta(hours=1)    # the server deletes its videos after about an hour
STATES = {"InQueue": State.QUEUED, "InProgress": State.RUNNING, "Succeed": State.SUCCEEDED,
          "Failed": State.FAILED, "Cancelled": State.CANCELLED}
# The brief's ranges; the defaults are Wan2.1's image-to-video sampling defaults (81 frames,
# guidance 5.0, 40 steps).
ADVANCED = {
    "prompt_min": 10,
    "image_size": ["auto", "480x832", "832x480"],
    "num_frames": {"min": 24, "max": 120, "default": 81},
    "guidance_scale": {"min": 1.0, "max": 20.0, "default": 5.0},
    "infer_steps": {"min": 20, "max": 100, "default": 40},
    "seed": {"min": 0, "max": 2147483647},      # none = the server picks one
    "fps": FPS,
}

LABEL = N_("Wan server (self-hosted)")
DESCRIPTION = N_("Your own Wan2.1 image-to-video server. It fetches the first frame from the studio through a "
                 "signed link that expires, so PUBLIC_BASE_URL must be an address the server can reach.")

ERRORS = [
    rule(ProviderAuthError, N_("The Wan server refused the API key (HTTP %(status)s). Check WAN_SERVER_API_KEY."),
         statuses=(401, 403)),
    rule(ProviderRejected, N_("The Wan server refused the %(what)s (HTTP 400%(said)s). If it could not download the "
                              "first frame, check that PUBLIC_BASE_URL is an address it can reach."), statuses=(400,)),
    rule(ProviderRejected, N_("The Wan server no longer knows this task (HTTP 404; restarted?)."), statuses=(404,),
         extra={"code": "provider_task_lost"}),
    rule(ProviderRejected, N_("The Wan server found "
                              "a setting it does not accept (HTTP 422%(said)s)."), statuses=(422,)),
    rule(SubmitOutcomeUnknown, N_("The Wan server failed the submit (HTTP %(status)s%(said)s); the task may have been "
                                  "created, so it is not sent again."), statuses=SERVER_ERRORS, phase=SUBMIT),
    rule(ProviderUnavailable, N_("The Wan server failed "
                                 "the %(what)s (HTTP %(status)s%(said)s)."), statuses=SERVER_ERRORS),
    rule(ProviderRejected, N_("The Wan server refused the %(what)s (HTTP %(status)s%(said)s).")),
]


def _detail(body):
    """FastAPI's `detail` as one line: a text, or a validation error list ("loc: msg; ...")."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        detail = "; ".join(f"{'.'.join(str(p) for p in item.get('loc', [])[1:])}: {item.get('msg')}"
                           if isinstance(item, dict) else str(item) for item in detail)
    return str(detail)[:300] if detail else ""


class WanServerProvider(Provider):
    """Wan2.1 image-to-video on a server of the studio's own."""

    name = "wan_server"
    max_concurrency = 2         # the server runs at most 2 tasks at once; a task holds its slot while queued there

    def __init__(self, config):
        super().__init__(config)
        self.http = self.make_http(config.get("WAN_SERVER_BASE") or "")

    def configured(self):
        return bool(self.config.get("WAN_SERVER_BASE") and self.config.get("WAN_SERVER_API_KEY")
                    and self.config.get("PUBLIC_BASE_URL"))

    def capabilities(self):
        model = VideoModel(
            id=MODEL, label=N_("Wan2.1 image-to-video 14B, 480P"), image_to_video=True, text_to_video=False,
            # `num_frames` sets the length; "5" is the default's (81 frames at 16 fps).
            modes=["480P"], durations=["5"], combos=combos([("480P", "5")]), tail_combos=[], cfg_scale=False,
            cameras=[], aspect_ratios=[], max_prompt=500, mode_label="Resolution", negative_prompt=False,
            advanced=ADVANCED)
        return ProviderTable(self.name, LABEL, DESCRIPTION, self.configured(), [model]).as_dict()

    # ---- calls ----

    def submit(self, task):
        params = task["params"]
        body = {"model": task["model"], "prompt": params["prompt"],
                "image_url": signed_inputs.signed_url(self.config, task["id"], "first"),
                "image_size": params["image_size"], "num_frames": params["num_frames"],
                "guidance_scale": params["guidance_scale"], "infer_steps": params["infer_steps"]}
        if params.get("seed") is not None:
            body["seed"] = params["seed"]
        response = self.http.submit(SUBMIT_PATH, json=body, headers=self._auth(), task_id=task["id"])
        answer = self._answer(response, N_("submit"), submitted=True)
        request_id = answer.get("requestId")
        if not isinstance(request_id, str) or not request_id:
            raise SubmitOutcomeUnknown(N_("The Wan server accepted the submit but gave no requestId; it is not sent "
                                          "again."), provider=self.name, http_status=response.status_code)
        return request_id

    def query(self, task):
        response = self.http.request("POST", STATUS_PATH, idempotent=True, headers=self._auth(),
                                     json={"requestId": task["provider_task_id"]}, task_id=task["id"])
        answer = self._answer(response, N_("status query"), submitted=False)
        status = answer.get("status")
        report = ProviderStatus(state=STATES.get(status, State.RUNNING), raw_status=None if status is None
                                else str(status))
        if report.state == State.FAILED:
            reason = answer.get("reason") or answer.get("detail") or answer.get("message")
            report.error_code = "generation_failed"
            report.message = "The Wan server could not make the video" + (f": {str(reason)[:300]}" if reason else ".")
        elif report.state == State.SUCCEEDED:
            results = answer.get("results") if isinstance(answer.get("results"), dict) else {}
            videos = [v for v in results.get("videos") or [] if isinstance(v, dict) and v.get("url")]
            expires_at = (datetime.now(UTC) + RESULT_LIFETIME).strftime("%Y-%m-%dT%H:%M:%SZ")
            timings = results.get("timings") if isinstance(results.get("timings"), dict) else {}
            meta = {"seed": results.get("seed"), "inference_seconds": timings.get("inference"),
                    "num_frames": task["params"].get("num_frames")}
            report.outputs = [RemoteOutput("video", url=v["url"], expires_at=expires_at, meta=meta) for v in videos]
        return report

    def cancel(self, task):
        """Cancel at the server; True when it says it did."""
        if not task.get("provider_task_id"):
            return False
        response = self.http.request("POST", CANCEL_PATH, idempotent=True, headers=self._auth(),
                                     json={"requestId": task["provider_task_id"]}, task_id=task["id"])
        answer = self._answer(response, N_("cancel"), submitted=False)
        return answer.get("status") == "Succeed"

    def reconcile(self, task):
        raise SubmitOutcomeUnknown(
            N_("The Wan server did not confirm the submit and cannot look a task up by the studio's "
               "id, so the outcome is unknown and it was not sent again. Check the server's queue, "
               "then retry here if it is not there."),
            provider=self.name)

    # ---- helpers ----

    def _auth(self):
        return {"Authorization": f"Bearer {self.config['WAN_SERVER_API_KEY']}"}

    def _answer(self, response, what, *, submitted):
        """The JSON answer of a 2xx, or the error its status stands for."""
        status = response.status_code
        try:
            body = json_body(response, self.name)
        except ProviderBadResponse:
            if status >= 400:
                body = {}
            elif submitted:
                raise SubmitOutcomeUnknown(N_("The Wan server answered the submit with an unreadable body (HTTP "
                                              "%(status)s); it is not sent again."), provider=self.name,
                                           http_status=status,
                                           params={"status": status}) from None
            else:
                raise
        if 200 <= status < 300:
            return body
        detail = _detail(body)
        raise map_error(ERRORS, response, code=None, phase=SUBMIT if submitted else OTHER,
                        context={"what": what, "said": f": {detail}" if detail else ""},
                        facts={"provider": self.name, "http_status": status, "provider_code": None})
