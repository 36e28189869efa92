"""How much server time `POST /generate` spends on a 9.5 MB PNG, against the least it could spend.

Run: `.venv/bin/python bench/upload_bench.py`. It builds a noisy 9.5 MB PNG (noise does not
compress, so the file is as big as a phone's largest), then times, in one process:

- the floor: what any server must do with such an upload — parse the JSON body, decode the Base64,
  check the header, decode every pixel to prove the picture is whole, write the file with fsync;
- `POST /generate` with the picture in a JSON body as Base64 (what scripts send);
- `POST /generate` with the picture as a `multipart/form-data` file part (what the pages send),
  when the server takes multipart.

Server time is measured inside the WSGI call (the test client's own work is not counted). Each
figure is the median of several runs; the ratios to the floor are the result (target ≤ 1.5×).
Nothing is asserted. It finishes within a minute or two on a 2-core machine.
"""

import base64
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from the repository or from anywhere else

import media  # noqa: E402
from app import create_app  # noqa: E402

RUNS = 7
TARGET_BYTES = 9_500_000
API_KEY = "sk-bench-upload-0123456789abcdef"
BOUNDARY = "----studio-bench-boundary-7d3f"


def big_png(target=TARGET_BYTES):
    """A PNG of about `target` bytes: noise over a gradient, with a text chunk as phones write."""
    side = int((target / 3) ** 0.5)
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "upload bench")
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", pnginfo=info, compress_level=1)
    return out.getvalue()


def multipart(fields, files):
    """A multipart/form-data body as a browser's FormData makes it."""
    parts = []
    for name, value in fields.items():
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, mime, data) in files.items():
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: {mime}\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(parts)


def floor_once(body, directory):
    """The least work: JSON parse, Base64 decode, header check, full decode, fsync'd write."""
    started = time.perf_counter()
    payload = json.loads(body)["image"].partition(",")[2]
    raw = base64.b64decode(payload, validate=True)
    fmt = media.sniff_format(raw[:64])
    with media._UPLOAD_PLUGINS[fmt](io.BytesIO(raw)) as img:
        assert img.width * img.height <= media.MAX_PIXELS
        img.load()
    media.save_bytes_atomic(raw, Path(directory) / "floor.png")
    return time.perf_counter() - started


class Timed:
    """WSGI middleware that keeps how long the app took for the last request."""

    def __init__(self, app):
        self.app = app
        self.last = None

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        try:
            return list(self.app(environ, start_response))
        finally:
            self.last = time.perf_counter() - started


def studio(directory):
    os.environ["API_KEYS"] = API_KEY
    os.environ["ADMIN_PASSWORD"] = "bench-admin-password-1"
    os.environ["DOTENV_PATH"] = str(Path(directory) / "no.env")
    os.environ.pop("DATA_DIR", None)
    app = create_app({"TESTING": True, "DATA_DIR": str(Path(directory) / "data"), "SECRET_KEY": "bench"})
    timer = Timed(app.wsgi_app)
    app.wsgi_app = timer
    return app, timer


def post_once(client, timer, body, content_type):
    resp = client.post("/generate", data=body, content_type=content_type,
                       headers={"Authorization": f"Bearer {API_KEY}"})
    if resp.status_code != 202:
        return None, f"{resp.status_code} {resp.get_data(as_text=True)[:200]}"
    return timer.last, None


def median_ms(samples):
    return statistics.median(samples) * 1000


def main():
    png = big_png()
    fields = {"provider": "local", "prompt": "slow zoom in", "duration": "5"}
    json_body = json.dumps({**fields, "image": "data:image/png;base64," + base64.b64encode(png).decode()}).encode()
    form_body = multipart(fields, {"image": ("big.png", "image/png", png)})
    with tempfile.TemporaryDirectory() as directory:
        app, timer = studio(directory)
        client = app.test_client()
        results = {"floor": [], "json": [], "multipart": []}
        notes = {}
        for _ in range(RUNS):
            results["floor"].append(floor_once(json_body, directory))
            for name, body, content_type in (("json", json_body, "application/json"),
                                             ("multipart", form_body, f"multipart/form-data; boundary={BOUNDARY}")):
                if name in notes:
                    continue
                elapsed, problem = post_once(client, timer, body, content_type)
                if problem:
                    notes[name] = problem
                else:
                    results[name].append(elapsed)
    floor = median_ms(results["floor"])
    print(f"POST /generate with a {len(png) / 1e6:.1f} MB PNG ({RUNS} runs each, medians)")
    print(f"  floor (JSON parse + Base64 + header + full decode + fsync'd write): {floor:7.0f} ms")
    for name in ("json", "multipart"):
        if results[name]:
            ms = median_ms(results[name])
            print(f"  {name:<10} server time: {ms:7.0f} ms   {ms / floor:4.2f}× the floor (target ≤ 1.5×)")
        else:
            print(f"  {name:<10} not measured: {notes.get(name)}")


if __name__ == "__main__":
    main()
