"""The generate pages' pictures in headless Chromium: choosing, dropping and pasting give the same
immediate error or the same picture; a form is uploaded as multipart/form-data with a progress
bar, over a throttled connection (DevTools network emulation through Playwright's CDP session),
and can be cancelled; a failed connection is named as such. Every page must end its test without
console errors, uncaught exceptions or dialogs.
"""

import base64
import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.browser import PageProblems, run_chromium, serve_studio
from tests.conftest import picture

expect.set_options(timeout=10_000)
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
ZONE = '[data-field="{}"] .dropzone'
ALERT = '[data-field="{}"] .field-alert .alert'


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    yield from serve_studio(tmp_path_factory, strict_csp=False)


@pytest.fixture(scope="module")
def browser():
    yield from run_chromium()


@pytest.fixture
def open_page(browser, studio):
    """open_page(path) -> (page, problems), signed in; no console error may be left at the end."""
    opened = []

    def open_(path):
        context = studio.sign_in(browser.new_context(viewport={"width": 1280, "height": 800}))
        context.set_default_timeout(30_000)
        page = context.new_page()
        problems = PageProblems(page)
        opened.append((context, problems))
        page.goto(studio.url(path))
        expect(page.locator("form[aria-busy]").first).to_have_attribute("aria-busy", "false")
        return page, problems

    yield open_
    for context, _ in opened:
        context.close()
    for _, problems in opened:
        assert problems.unexpected() == []


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    paths = {"gif": folder / "moving.gif", "huge": folder / "huge.png", "big": folder / "big.png",
             "small": folder / "small.png"}
    out = io.BytesIO()
    Image.open(io.BytesIO(picture(640, 400))).save(out, "GIF")
    paths["gif"].write_bytes(out.getvalue())
    paths["huge"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(12 * 1024 * 1024))     # refused by its size alone
    noise = np.random.default_rng(5).integers(0, 256, (1730, 1730, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise).save(out, "PNG", compress_level=1)                  # about 9 MB: noise does not shrink
    paths["big"].write_bytes(out.getvalue())
    paths["small"].write_bytes(picture(640, 400, seed=8))
    return paths


def drop(page, selector, path, mime):
    """Drop a file on an element as a person dragging it from the desktop would."""
    transfer = page.evaluate_handle("""([bytes, name, mime]) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([new Uint8Array(bytes)], name, { type: mime }));
        return transfer;
    }""", [list(path.read_bytes()[:4096]) if mime == "image/gif" else list(path.read_bytes()), path.name, mime])
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def paste(page, selector, path):
    """Ctrl/Cmd+V of a copied picture: a paste event with the picture in its clipboardData, sent
    where the browser sends it, to the focused element (the body when nothing has the focus)."""
    page.evaluate("(selector) => document.activeElement && document.activeElement.blur()", selector)
    if selector != "body":
        page.focus(selector)
    # Base64 rather than a list of numbers: a picture's bytes as a JSON array take seconds to pass.
    page.evaluate("""([selector, encoded]) => {
        const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "image.png", { type: "image/png" }));
        const target = document.activeElement || document.body;
        target.dispatchEvent(new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true }));
    }""", [selector, base64.b64encode(path.read_bytes()).decode()])


def throttle(page, bytes_per_second):
    session = page.context.new_cdp_session(page)
    session.send("Network.enable")
    session.send("Network.emulateNetworkConditions", {"offline": False, "latency": 20,
                                                      "downloadThroughput": -1, "uploadThroughput": bytes_per_second})
    return session


def test_a_gif_and_a_12_mb_png_chosen_with_the_picker_show_their_errors_at_once(open_page, files):
    page, _ = open_page("/")
    page.set_input_files("#image-file", files["gif"])
    expect(page.locator(ALERT.format("image"))).to_contain_text("choose a JPG, PNG, WebP or BMP picture")
    expect(page.locator(ZONE.format("image"))).not_to_have_class(re.compile("has-picture"))
    picked = page.locator(ALERT.format("image")).inner_text()

    page.set_input_files("#image-tail-file", files["huge"])
    expect(page.locator(ALERT.format("image_tail"))).to_contain_text("larger than 10 MB")

    # Dropping the same GIF gives the very same error.
    page.click(f'{ALERT.format("image")} .btn-close')
    expect(page.locator(ALERT.format("image"))).to_have_count(0)
    drop(page, ZONE.format("image"), files["gif"], "image/gif")
    expect(page.locator(ALERT.format("image"))).to_have_text(picked)


def test_paste_works_in_every_drop_zone(open_page, files):
    page, _ = open_page("/")
    for field in ("image", "image_tail"):
        paste(page, ZONE.format(field), files["small"])
        expect(page.locator(ZONE.format(field))).to_have_class(re.compile("has-picture"))
        expect(page.locator(f'[data-field="{field}"] .dz-name')).to_have_text("image.png")
    # With the focus on no field, a paste fills the first empty zone.
    page.locator('[data-field="image"] .dz-remove').click()
    paste(page, "body", files["small"])
    expect(page.locator(ZONE.format("image"))).to_have_class(re.compile("has-picture"))
    page, _ = open_page("/images")
    paste(page, ZONE.format("image"), files["small"])
    expect(page.locator(ZONE.format("image"))).to_have_class(re.compile("has-picture"))
    expect(page.locator('[data-field="image"] .dz-size')).to_contain_text("640×400")


def test_a_9_mb_upload_over_a_slow_line_shows_progress_and_arrives_as_sent(open_page, studio, files):
    page, _ = open_page("/")
    page.set_input_files("#image-file", files["big"])
    expect(page.locator(ZONE.format("image"))).to_have_class(re.compile("has-picture"))
    throttle(page, 3_000_000)                        # 3 MB/s: about three seconds of upload
    progress = page.locator("#video-form .upload-progress")
    with studio.paused(), page.expect_response("**/generate", timeout=60_000) as answered:
        page.click("#video-form .submit-button")
        expect(progress).to_be_visible()
        expect(progress.locator(".progress")).to_have_attribute("aria-valuenow", re.compile(r"^[1-9]\d?$"))
        expect(progress.locator(".upload-progress-text")).to_contain_text("Uploading")
        if os.environ.get("STUDIO_SCREENSHOTS"):
            ARTIFACTS.mkdir(exist_ok=True)
            page.locator("#video-form").screenshot(path=str(ARTIFACTS / "upload-progress-1280.png"))
    assert answered.value.status == 202
    sent = answered.value.request
    assert sent.headers["content-type"].startswith("multipart/form-data; boundary=")
    expect(progress).to_be_hidden()
    task = studio.store.get(answered.value.json()["task_id"])
    assert task["inputs"][0]["sha256"] == hashlib.sha256(files["big"].read_bytes()).hexdigest()
    expect(page.locator(f'#video-results [data-task-id="{task["id"]}"]')).to_be_visible()


def test_cancel_stops_an_upload_and_makes_no_task(open_page, studio, files):
    page, problems = open_page("/images")
    page.set_input_files("#image-file", files["big"])
    expect(page.locator(ZONE.format("image"))).to_have_class(re.compile("has-picture"))
    page.fill("#prompt", "variations")
    throttle(page, 200_000)                          # 200 KB/s: the upload would take 45 s
    before = studio.store.ids_with_status(("queued", "submitted", "running", "downloading", "succeeded", "failed"))
    page.click("#image-form .submit-button")
    progress = page.locator("#image-form .upload-progress")
    expect(progress.locator(".progress")).to_have_attribute("aria-valuenow", re.compile(r"^[1-9]\d?$"))
    progress.locator(".upload-cancel").click()
    expect(page.locator("#toasts")).to_contain_text("Upload cancelled")
    expect(progress).to_be_hidden()
    expect(page.locator("#image-form .submit-button")).to_be_enabled()
    expect(page.locator("#image-form .form-alerts .alert")).to_have_count(0)
    assert studio.store.ids_with_status(("queued", "submitted", "running", "downloading", "succeeded",
                                         "failed")) == before


def test_a_failed_connection_is_named_as_such(open_page, files):
    page, problems = open_page("/")
    page.set_input_files("#image-file", files["small"])
    expect(page.locator(ZONE.format("image"))).to_have_class(re.compile("has-picture"))
    problems.allow("net::ERR_FAILED")
    page.route("**/generate", lambda route: route.abort())
    page.click("#video-form .submit-button")
    alert = page.locator("#video-form .form-alerts .alert")
    expect(alert).to_contain_text("The connection failed")
    expect(alert).to_contain_text("Check your network")
    expect(page.locator("#video-form .submit-button")).to_be_enabled()

    # A proxy's own 413 page (HTML, not the studio's JSON) still gets a message that says what to do.
    problems.allow("status of 413")
    page.unroute("**/generate")
    page.route("**/generate", lambda route: route.fulfill(status=413, content_type="text/html",
                                                          body="<html>413 Request Entity Too Large</html>"))
    page.click("#video-form .submit-button")
    expect(alert).to_contain_text("send smaller pictures")
