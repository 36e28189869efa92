"""A local 302.ai (PROVIDERS.md §2) for tests and for trying the studio by hand.

302's gateway checks `Authorization: Bearer <302 key>` and answers its own refusals as
`{"error": {"err_code", "message", "message_cn"}}`; past it, the Kling protocol lives under
`/klingai` and the DashScope protocol under `/aliyun/api/v1`, unchanged — so this server mounts
the local Kling and DashScope servers there. Upstream auth is 302's business (the Kling JWT is not
checked behind the gateway), and the gateway adds `X-DashScope-Async` itself, as 302 does.

Faults (`inject("gateway", name)`): "rate_limit" (429), "balance" (402), "error_502" (502).
`nested_task_id = True` answers Kling creates with `data.task.id` instead of `data.task_id`, the
other shape 302's Kling passthrough is reported to use.
"""

import json

from flask import request
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.wrappers import Response

from tests.fakes import FakeServer, dashscope, kling

API_KEY = "sk-302-fake-0123456789abcdef"
GATEWAY_FAULTS = {"rate_limit": (429, 4290, "rate limit exceeded"),
                  "balance": (402, 4020, "insufficient balance"),
                  "error_502": (502, 5020, "upstream gateway error")}


class _KlingBehind302(kling.Server):
    nested_task_id = False

    def _check_auth(self):
        pass        # the gateway checked the 302 key; 302 signs upstream with its own Kling keys

    def _answer(self, data, http_status=200, code=0, message="SUCCEED"):
        if self.nested_task_id and request.method == "POST" and isinstance(data, dict) and "task_id" in data:
            data = {"task": {"id": data["task_id"]}, **{k: v for k, v in data.items() if k != "task_id"}}
        return super()._answer(data, http_status, code, message)


class Server(FakeServer):
    name = "ai302"

    def __init__(self, *, api_key=API_KEY, polls_to_finish=2, **kwargs):
        self.api_key = api_key
        self.client_async_headers = []      # what the client itself sent on Wan creates
        self.kling = _KlingBehind302(polls_to_finish=polls_to_finish, **kwargs)
        self.wan = dashscope.Server(polls_to_finish=polls_to_finish, api_key=api_key)
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
