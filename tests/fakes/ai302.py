"""A local 302.ai (PROVIDERS.md §2) for tests and for trying the studio by hand.

302's gateway checks `Authorization: Bearer <302 key>` and answers its own refusals as
`{"error": {"err_code", "message", "message_cn"}}`; past it, the Kling protocol lives under
`/klingai` and the DashScope protocol under `/aliyun/api/v1`, unchanged — so this server mounts
the local Kling and DashScope servers there. Upstream auth is 302's business (the Kling JWT is not
checked behind the gateway), and the gateway adds `X-DashScope-Async` itself, as 302 does.

Faults (`inject("gateway", name)`): "rate_limit" (429), "balance" (402), "error_502" (502).
Options (PROVIDERS.md §9.3): `kling.create_shape` answers Kling creates in one of CREATE_SHAPES —
the official envelope with `data.task_id` (default) or `data.task.id`, 302's code-less envelope
(`{"status": 200, "result": 1, ...}`) with `data.task.id` or `data.task_id`, or code-less with no
id at all; `kling.forwards_external_lookup = False` answers a lookup by our external id "not
found" (302 documents no such lookup); `wan.success_spelling = "SUCCESS"` finishes Wan tasks with
that spelling instead of `SUCCEEDED`.
"""

import json
import secrets

from flask import request
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.wrappers import Response

from tests.fakes import FakeServer, dashscope, kling

API_KEY = "sk-302-fake-0123456789abcdef"
GATEWAY_FAULTS = {"rate_limit": (429, 4290, "rate limit exceeded"),
                  "balance": (402, 4020, "insufficient balance"),
                  "error_502": (502, 5020, "upstream gateway error")}


# Every create-answer shape 302's Kling pass-through is reported to use (PROVIDERS.md §9.3).
CREATE_SHAPES = ("official", "official_nested", "codeless_nested", "codeless_flat", "codeless_no_id")


class _KlingBehind302(kling.Server):
    create_shape = "official"
    forwards_external_lookup = True     # False: a lookup by our external id answers "not found" (1203)

    def _check_auth(self):
        pass        # the gateway checked the 302 key; 302 signs upstream with its own Kling keys

    def _get_checked(self, kind, ident):
        if not self.forwards_external_lookup and ident not in self.tasks:
            raise kling.KlingError(404, 1203, "task not found")
        return super()._get_checked(kind, ident)

    def _answer(self, data, http_status=200, code=0, message="SUCCEED"):
        shape = self.create_shape
        created = request.method == "POST" and code == 0 and isinstance(data, dict) and "task_id" in data
        if not created or shape == "official":
            return super()._answer(data, http_status, code, message)
        with self.lock:
            self.answered[code] += 1
        nested = {"task": {"id": data["task_id"], "status": data["task_status"]}}
        if shape == "official_nested":
            body = {"code": 0, "message": "SUCCEED", "request_id": secrets.token_hex(8), "data": nested}
        elif shape == "codeless_nested":
            body = {"status": 200, "result": 1, "message": "成功", "data": nested}
        elif shape == "codeless_flat":
            body = {"status": 200, "result": 1, "data": {"task_id": data["task_id"],
                                                          "task_status": data["task_status"]}}
        else:       # created and billed, but no id anywhere in the answer
            body = {"status": 200, "result": 1, "message": "成功", "data": {}}
        return Response(json.dumps(body, ensure_ascii=False), http_status, mimetype="application/json")


class _WanBehind302(dashscope.Server):
    success_spelling = "SUCCEEDED"      # "SUCCESS": the spelling one guide shows for 302 (§9.3)

    def _finish(self, task):
        super()._finish(task)
        if task["status"] == "SUCCEEDED":
            task["status"] = self.success_spelling


class Server(FakeServer):
    name = "ai302"

    def __init__(self, *, api_key=API_KEY, polls_to_finish=2, **kwargs):
        self.api_key = api_key
        self.client_async_headers = []      # what the client itself sent on Wan creates
        self.kling = _KlingBehind302(polls_to_finish=polls_to_finish, **kwargs)
        self.wan = _WanBehind302(polls_to_finish=polls_to_finish, api_key=api_key)
        super().__init__(polls_to_finish=polls_to_finish)
        self.app.wsgi_app = DispatcherMiddleware(self.app.wsgi_app, {
            "/klingai": self._gateway(self.kling.app, "kling"),
            "/aliyun/api/v1": self._gateway(self.wan.app, "wan")})

    def add_routes(self, app):
        pass        # everything lives behind the gateway

    def start(self, host="127.0.0.1", port=0):
        url = super().start(host, port)
        # Result links of the mounted servers must point through this server.
        self.kling.base_url, self.wan.base_url = url + "/klingai", url + "/aliyun/api/v1"
        return url

    @property
    def submissions(self):
        return self.kling.submissions + self.wan.submissions

    @submissions.setter
    def submissions(self, value):
        pass        # FakeServer.__init__ sets it; the mounted servers keep the real counts

    def _gateway(self, upstream, family):
        def app(environ, start_response):
            fault = self.take_fault("gateway")
            authorised = environ.get("HTTP_AUTHORIZATION") == f"Bearer {self.api_key}"
            is_file = environ.get("PATH_INFO", "").startswith("/files/")
            if not is_file and (fault in GATEWAY_FAULTS or not authorised):
                status, err_code, message = GATEWAY_FAULTS.get(fault, (401, 4010, "invalid api key"))
                body = json.dumps({"error": {"err_code": err_code, "message": message, "message_cn": message}})
                return Response(body, status, mimetype="application/json")(environ, start_response)
            if family == "wan" and environ["REQUEST_METHOD"] == "POST":
                with self.lock:
                    self.client_async_headers.append(environ.get("HTTP_X_DASHSCOPE_ASYNC"))
                environ["HTTP_X_DASHSCOPE_ASYNC"] = "enable"     # 302 adds it on the way upstream
            return upstream(environ, start_response)
        return app


def usage(url):
    return [f"AI302_API_BASE={url} AI302_API_KEY={API_KEY} python app.py",
            "Kling models go through /klingai, Wan models through /aliyun/api/v1."]
