"""The generate forms in headless Chromium: what happens after a submit (the new card in view at
1280×800 and 390×844, the tab title and favicon counting, Ctrl+Enter, the opt-in alerts), the
fields each model's table decides (ignored ones hidden or marked; seed, prompt rewriting and sound
only where a model takes them, and their values in the task's params), the submit button within
reach on a phone, and results shown at their own aspect ratio.

Kling, DashScope and LiblibAI are configured with an address where nothing answers: their tasks are made
with the pipeline paused, checked in the store and cancelled before it runs again.
"""

import re
import time

import pytest
from playwright.sync_api import expect

import tasks
from tests.browser import PageProblems, run_chromium, serve_studio
from tests.conftest import picture

expect.set_options(timeout=10_000)
LONG = 60_000
DESKTOP, PHONE = (1280, 800), (390, 844)
NOWHERE = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    yield from serve_studio(
        tmp_path_factory, "forms", strict_csp=False,
        KLING_ACCESS_KEY="ak-test", KLING_SECRET_KEY="sk-test", KLING_API_BASE=NOWHERE,
        DASHSCOPE_API_KEY="sk-test", DASHSCOPE_API_BASE=NOWHERE,
        LIBLIB_ACCESS_KEY="ak-test", LIBLIB_SECRET_KEY="sk-test", LIBLIB_API_BASE=NOWHERE)


@pytest.fixture(scope="module")
def browser():
    yield from run_chromium()


@pytest.fixture
def open_page(browser, studio):
    """open_page(path, size) -> page; every page must end the test without console errors."""
    opened = []

    def open_(path, size=DESKTOP, init_script=None):
        context = studio.sign_in(browser.new_context(viewport={"width": size[0], "height": size[1]}))
        context.set_default_timeout(15_000)
        page = context.new_page()
        if init_script:
            page.add_init_script(init_script)
        problems = PageProblems(page)
        opened.append((context, problems))
        page.allow_console = problems.allow      # for a test that provokes an error on purpose
        page.goto(studio.url(path))
        expect(page.locator("form[aria-busy]")).to_have_attribute("aria-busy", "false")
        return page

    yield open_
    for context, _ in opened:
        context.close()
    for _, problems in opened:
        assert problems.unexpected() == []


@pytest.fixture
def files(tmp_path):
    paths = {}
    for name, (w, h) in {"first": (800, 500), "reference": (720, 540), "small": (240, 400)}.items():
        paths[name] = tmp_path / f"{name}.png"
        paths[name].write_bytes(picture(w, h, seed=len(name)))
    return paths


def newest(studio):
    ids = studio.store.ids_with_status(tasks.STATUSES)
    return studio.store.get(ids[-1]) if ids else None


def cancel_queued(studio):
    for task_id in studio.store.ids_with_status((tasks.QUEUED,)):
        studio.store.update(task_id, lambda record: tasks.cancel(record, tasks.utcnow()))


def wait_for_new_task(studio, before, timeout=10):
    """The task the page just made: the newest, once it is not `before` (polled as browser.py does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = newest(studio)
        if task and (before is None or task["id"] != before["id"]):
            return task
        time.sleep(0.1)
    raise AssertionError("the page made no task")


def choose(page, provider, model):
    page.select_option("#provider", provider)
    page.select_option("#model", model)


# ---- after a submit -------------------------------------------------------------------------

@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["1280x800", "390x844"])
def test_the_new_card_is_in_view_after_submitting_images(open_page, studio, files, size):
    with studio.paused():
        page = open_page("/images", size)
        before = newest(studio)
        page.set_input_files("#image-file", files["reference"])
        expect(page.locator('[data-field="image"] .dropzone')).to_have_class(re.compile("has-picture"))
        page.locator("#image-form .submit-button").scroll_into_view_if_needed()
        page.click("#image-form .submit-button")
        task = wait_for_new_task(studio, before)
        card = page.locator(f'#image-results .task-group[data-task-id="{task["id"]}"] .image-card').first
        expect(card).to_be_in_viewport()
        cancel_queued(studio)


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["1280x800", "390x844"])
def test_the_new_card_is_in_view_after_submitting_a_video(open_page, studio, files, size):
    with studio.paused():
        page = open_page("/", size)
        page.set_input_files("#image-file", files["first"])
        page.fill("#prompt", "a slow zoom")
        page.locator("#video-form .submit-button").scroll_into_view_if_needed()
        before = newest(studio)
        page.click("#video-form .submit-button")
        task = wait_for_new_task(studio, before)
        expect(page.locator(f'#video-results .task-card[data-task-id="{task["id"]}"]')).to_be_in_viewport()
        cancel_queued(studio)


def test_the_submit_button_is_within_reach_on_a_phone(open_page):
    page = open_page("/images", PHONE)
    expect(page.locator("#image-form .submit-button")).to_be_in_viewport()
    page.mouse.wheel(0, 600)
    expect(page.locator("#image-form .submit-button")).to_be_in_viewport()


# The browser's Notification, replaced by one that records what the page shows (headless
# Chromium shows none), with the permission already granted.
RECORD_NOTIFICATIONS = """
window.shown = [];
window.Notification = class { constructor(title, options) { window.shown.push([title, options.body]); } };
window.Notification.permission = "granted";
window.Notification.requestPermission = () => Promise.resolve("granted");
"""


def test_ctrl_enter_submits_the_title_and_favicon_count_and_an_alert_announces(open_page, studio, files):
    page = open_page("/", init_script=RECORD_NOTIFICATIONS)
    base_title = page.title()
    page.click("#alerts-toggle")
    with studio.paused():
        page.set_input_files("#image-file", files["first"])
        page.fill("#prompt", "sent with the keyboard")
        before = newest(studio)
        page.locator("#prompt").press("Control+Enter")
        task = wait_for_new_task(studio, before)
        assert task["params"]["prompt"] == "sent with the keyboard"
        expect(page).to_have_title("(1) " + base_title)
        assert page.locator('link[rel="icon"]').get_attribute("href").startswith("data:image/png")
        # In the background, a task that ends is counted until the tab is looked at again.
        page.evaluate("() => Object.defineProperty(document, 'hidden', {value: true, configurable: true})")
    expect(page).to_have_title("(✓1) " + base_title, timeout=LONG)
    # Alerts are on: the ended task was announced (in the background, so as a notification).
    assert page.evaluate("() => window.shown") == [["AIAPI Studio", "Done · local-motion · sent with the keyboard"]]
    page.evaluate("""() => { Object.defineProperty(document, 'hidden', {value: false, configurable: true});
                             document.dispatchEvent(new Event('visibilitychange')); }""")
    expect(page).to_have_title(base_title)
    assert page.locator('link[rel="icon"]').get_attribute("href").endswith("favicon.svg")


def test_alerts_are_opt_in_and_remembered(open_page):
    page = open_page("/")
    toggle = page.locator("#alerts-toggle")
    expect(toggle).to_have_attribute("aria-pressed", "false")
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "true")
    expect(toggle.locator(".alerts-on")).to_be_visible()
    expect(toggle.locator(".alerts-off")).to_be_hidden()
    assert page.evaluate("() => localStorage.getItem('studio.alerts')") == "on"
    page.reload()
    expect(page.locator("#alerts-toggle")).to_have_attribute("aria-pressed", "true")


# ---- honest forms ---------------------------------------------------------------------------

def test_fields_the_local_engine_ignores_are_hidden_or_marked(open_page):
    page = open_page("/images")
    choose(page, "local", "local-filters")
    expect(page.locator("#negative-prompt")).to_be_hidden()
    expect(page.locator("#prompt-ignored")).to_be_visible()
    expect(page.locator("#prompt-ignored")).to_contain_text("does not read the prompt")
    expect(page.locator("#model-seed")).to_be_hidden()
    choose(page, "dashscope", "wanx2.1-t2i-turbo")
    expect(page.locator("#negative-prompt")).to_be_visible()
    expect(page.locator("#prompt-ignored")).to_be_hidden()

    video = open_page("/")
    choose(video, "local", "local-motion")
    expect(video.locator("#negative-prompt")).to_be_hidden()
    expect(video.locator("#prompt-ignored")).to_be_hidden()     # the prompt picks the camera move
    choose(video, "kling", "kling-v1-6")
    expect(video.locator("#negative-prompt")).to_be_visible()


def test_seed_prompt_extend_and_sound_only_where_the_model_takes_them(open_page):
    page = open_page("/")
    choose(page, "kling", "kling-v1-6")
    for selector in ("#model-seed", "#prompt-extend", "#sound"):
        expect(page.locator(selector)).to_be_hidden()
    choose(page, "dashscope", "wanx2.1-t2v-turbo")
    expect(page.locator("#model-seed")).to_be_visible()
    expect(page.locator("#prompt-extend")).to_be_visible()
    expect(page.locator("#sound")).to_be_hidden()
    choose(page, "kling", "kling-v2-6")
    page.locator('[data-options-for="mode"] label').filter(has_text="Standard").click()
    expect(page.locator("#sound")).to_be_hidden()
    expect(page.locator("#sound-note")).to_contain_text("sound only with")
    page.locator('[data-options-for="mode"] label').filter(has_text="Professional").click()
    expect(page.locator("#sound")).to_be_visible()
    expect(page.locator("#sound")).not_to_be_checked()          # the table's default: off


def test_seed_and_prompt_extend_reach_the_tasks_params(open_page, studio):
    with studio.paused():
        page = open_page("/")
        choose(page, "dashscope", "wanx2.1-t2v-turbo")
        page.fill("#prompt", "waves at dusk")
        page.fill("#model-seed", "1234")
        page.locator("#prompt-extend").check()
        before = newest(studio)
        page.click("#video-form .submit-button")
        task = wait_for_new_task(studio, before)
        assert (task["provider"], task["model"]) == ("dashscope", "wanx2.1-t2v-turbo")
        assert task["params"]["seed"] == 1234 and task["params"]["prompt_extend"] is True

        images = open_page("/images")
        choose(images, "dashscope", "wanx2.1-t2i-turbo")
        images.fill("#prompt", "a lighthouse")
        images.fill("#model-seed", "77")
        images.click("#image-form .submit-button")
        task = wait_for_new_task(studio, task)
        assert task["params"]["seed"] == 77 and task["params"]["prompt_extend"] is False
        cancel_queued(studio)


def test_sound_reaches_the_tasks_params(open_page, studio):
    with studio.paused():
        page = open_page("/")
        choose(page, "kling", "kling-v2-6")
        page.locator('[data-options-for="mode"] label').filter(has_text="Professional").click()
        page.fill("#prompt", "rain on a tin roof")
        page.locator("#sound").check()
        before = newest(studio)
        page.click("#video-form .submit-button")
        task = wait_for_new_task(studio, before)
        assert task["model"] == "kling-v2-6" and task["params"]["sound"] is True
        assert "seed" not in task["params"] and "prompt_extend" not in task["params"]
        # Waiting for a slot, the card says where it stands, with the provider's label.
        card = page.locator(f'#video-results .task-card[data-task-id="{task["id"]}"]')
        expect(card.locator(".task-queue")).to_have_text(re.compile(r"^1st in line for Kling"))
        # The tasks page says the same beside the task.
        page.goto(studio.url("/tasks"))
        row = page.locator(f'#task-list .task-row[data-task-id="{task["id"]}"]')
        expect(row.locator(".task-queue")).to_have_text(re.compile(r"^ · 1st in line for Kling"))
        cancel_queued(studio)


def test_the_first_frame_minimum_is_the_models(open_page, files):
    page = open_page("/")
    choose(page, "dashscope", "wan2.2-i2v-flash")
    page.set_input_files("#image-file", files["small"])
    expect(page.locator('[data-field="image"] .dropzone')).to_have_class(re.compile("has-picture"))
    page.locator('[data-field="image"] .dz-remove').click()
    choose(page, "kling", "kling-v1-6")
    page.set_input_files("#image-file", files["small"])
    expect(page.locator('[data-field="image"] .field-alert')).to_contain_text("at least 300 px")


# ---- results at their own shape -------------------------------------------------------------

def test_a_9_16_result_is_shown_whole(open_page, studio, files):
    page = open_page("/images")
    choose(page, "local", "local-filters")
    page.set_input_files("#image-file", files["reference"])
    page.locator('[data-options-for="aspect_ratio"] label').filter(has_text="9:16").click()
    page.fill("#n", "1")
    before = newest(studio)
    page.click("#image-form .submit-button")
    task = wait_for_new_task(studio, before)
    frame = page.locator(f'#image-results .task-group[data-task-id="{task["id"]}"] .image-frame')
    expect(frame.locator("img")).to_be_visible(timeout=LONG)
    frame.locator("img").evaluate("img => img.decode()")
    box = frame.bounding_box()
    assert box["width"] / box["height"] == pytest.approx(9 / 16, rel=0.03)
    fit = frame.locator("img").evaluate("img => getComputedStyle(img).objectFit")
    assert fit == "contain"


def test_a_refused_seed_is_shown_next_to_the_seed_the_model_uses(open_page):
    page = open_page("/images")
    page.allow_console("422")
    choose(page, "dashscope", "wanx2.1-t2i-turbo")
    page.fill("#prompt", "a lighthouse")
    page.fill("#model-seed", "3000000000")
    page.click("#image-form .submit-button")
    expect(page.locator('#image-form [data-show-if="seed"] .field-alert')).to_contain_text("seed")
    expect(page.locator("#model-seed")).to_have_attribute("aria-invalid", "true")
    # liblib-custom takes its seed among its advanced settings: the error goes there, not to the hidden one.
    choose(page, "liblib", "liblib-custom")
    expect(page.locator("#model-seed")).to_be_hidden()
    page.fill("#seed", "3000000000")
    page.click("#image-form .submit-button")
    expect(page.locator('#advanced-section [data-field="seed"] .field-alert')).to_contain_text("2147483647")
