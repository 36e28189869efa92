"""The browser tests' serving layer (tests/browser.py): every response is closed, also when the
browser drops the connection, so no open file is left to the garbage collector."""

import select
import socket
import struct
import threading

from tests.browser import serve

BODY = b"0123456789"


def test_a_response_is_closed_when_the_browser_resets_the_connection():
    reset = threading.Event()
    closed = threading.Event()

    class Body:
        """A file-like response: its last chunk is asked for after the client has reset."""

        def __init__(self, environ):
            self.connection = environ["werkzeug.socket"]

        def __iter__(self):
            yield BODY
            reset.wait(10)
            select.select([self.connection], [], [], 10)     # the reset has reached the server

        def close(self):
            closed.set()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "image/jpeg"), ("Content-Length", str(len(BODY)))])
        return Body(environ)

    server = serve(app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = socket.create_connection(("127.0.0.1", server.server_port))
        client.sendall(b"GET /outputs/x/thumb-1.jpg HTTP/1.1\r\nHost: studio\r\nRange: bytes=0-\r\n\r\n")
        received = b""
        while not received.endswith(BODY):
            received += client.recv(4096)
        # Close with SO_LINGER 0: a reset (RST), as a browser that navigates away mid-response.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        reset.set()
        assert closed.wait(10), "the response was not closed after the connection was reset"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
