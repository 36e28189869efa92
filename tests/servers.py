"""Real HTTP servers on loopback for tests: one way to serve a WSGI app on a free port and stop it.

A short poll interval makes the stop quick (werkzeug's default waits up to half a second), and
tests start and stop many servers.
"""

import threading
from contextlib import contextmanager

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response


@contextmanager
def serving(app, **options):
    """Serve `app` on 127.0.0.1 (threaded); yields the server (`server_port`, `base_url`)."""
    server = make_server("127.0.0.1", 0, app, threaded=True, **options)
    server.base_url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def picture_app(files, redirect_path="/to"):
    """A WSGI app serving `files` ({path: (bytes, content type)}); `redirect_path?url=X` redirects to X."""

    @Request.application
    def serve(request):
        if request.path == redirect_path and "url" in request.args:
            return Response(status=302, headers={"Location": request.args["url"]})
        if request.path in files:
            body, content_type = files[request.path]
            return Response(body, mimetype=content_type)
        return Response("gone", status=404)

    return serve
