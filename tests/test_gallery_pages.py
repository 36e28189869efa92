"""The gallery and the tasks page in headless Chromium (tests/browser.py), against a real studio
whose pipeline runs: the lightbox pages with the arrow keys and zooms, the bulk download saves a
zip holding exactly the selected results, stars and the favourites filter, the colour mode follows
`prefers-color-scheme` and the toggle, a link to a deleted task says so, a deleted task's page
refills, a task's title opens it, the filters fold away on a phone; and (opt-in, `make
screenshots`) every page in light and dark, English and Chinese, desktop and phone.
"""

import io
import os
import re
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import expect

from tasks import iso, new_task_id, utcnow
from tests.browser import PageProblems
from tests.conftest import AdminClient
from tests.test_pages import ARTIFACTS, browser, make_task, open_page, studio, wait_for_media  # noqa: F401

LONG = 60_000


@pytest.fixture(scope="module")
def results(studio):  # noqa: F811 - the fixture imported above
    """Three finished image tasks (1, 2 and 1 pictures; 4:3 and 9:16) and one video, newest last."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Flask, "test_client_class", AdminClient)     # the function-scoped sign-in comes later
        made = [make_task(studio, "image", prompt="gallery one", n=1, aspect_ratio="4:3"),
                make_task(studio, "image", prompt="gallery two", n=2, aspect_ratio="9:16"),
                make_task(studio, "video", prompt="gallery video"),
                make_task(studio, "image", prompt="gallery three", n=1, aspect_ratio="4:3")]
    for task_id in made:
        assert studio.wait_for(task_id)["status"] == "succeeded"
    return made


def tiles(page):
    return page.locator("#gallery .g-tile")


def test_the_lightbox_pages_with_the_arrow_keys_and_zooms(open_page, results, studio):  # noqa: F811
    page, _ = open_page("/gallery?q=gallery")        # the results of this module's fixture
    expect(tiles(page)).to_have_count(5)                                # one tile per result
    # True aspect ratio: a 9:16 tile is taller than wide, a 4:3 one wider than tall.
    first = tiles(page).first.bounding_box()
    tall = page.locator(f'#gallery .g-tile[data-task-id="{results[1]}"]').first.bounding_box()
    assert first["width"] > first["height"] and tall["height"] > tall["width"]
    assert abs(first["height"] - tall["height"]) < 2                    # one row, one height

    tiles(page).first.locator(".g-open").click()
    lightbox = page.locator("#lightbox")
    expect(lightbox).to_be_visible()
    expect(page.locator("#lightbox-position")).to_have_text("1 of 5")
    expect(page.locator("#lightbox-title")).to_have_text("gallery three")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#lightbox-position")).to_have_text("2 of 5")
    expect(page.locator("#lightbox-media video")).to_be_visible()      # the video plays here
    page.keyboard.press("ArrowRight")
    expect(page.locator("#lightbox-title")).to_have_text("gallery two")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#lightbox-position")).to_have_text("1 of 5")
    expect(page.locator("#lightbox-prev")).to_be_disabled()

    make_video = page.locator("#lightbox-make-video")
    output = studio.store.get(results[3])["outputs"][0]["url"]
    assert make_video.get_attribute("href").endswith("?image=" + output.replace("/", "%2F"))
    page.locator("#lightbox-media img").click()
    expect(page.locator("#lightbox-stage")).to_have_class(re.compile(r"\bzoomed\b"))
    page.locator("#lightbox-media img").click()
    expect(page.locator("#lightbox-stage")).not_to_have_class(re.compile(r"\bzoomed\b"))
    page.keyboard.press("Escape")
    expect(lightbox).to_be_hidden()

    # "Make a video from this" opens the video page with the picture as its first frame.
    tiles(page).first.locator(".g-open").click()
    make_video.click()
    expect(page.locator('[data-field="image"] .dropzone')).to_have_class(re.compile(r"\bhas-picture\b"),
                                                                          timeout=15_000)


def test_bulk_download_saves_a_zip_of_exactly_the_selected_results(open_page, results, studio, tmp_path):  # noqa: F811
    page, _ = open_page("/gallery?q=gallery")        # the results of this module's fixture
    expect(tiles(page)).to_have_count(5)
    page.click("#select-mode")
    page.locator(f'#gallery .g-tile[data-task-id="{results[1]}"] .g-open').first.click()
    page.locator(f'#gallery .g-tile[data-task-id="{results[0]}"] .g-open').click()
    expect(page.locator("#selection-count")).to_have_text("2 selected")
    with page.expect_download() as info:
        page.click("#download-zip")
    path = tmp_path / "chosen.zip"
    info.value.save_as(path)
    archive = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
    data_dir = Path(studio.app.config["DATA_DIR"])
    wanted = sorted((data_dir / out["path"]).read_bytes()
                    for task_id in (results[0], results[1]) for out in studio.store.get(task_id)["outputs"])
    assert sorted(archive.read(name) for name in archive.namelist()) == wanted
    assert len(archive.namelist()) == 3

    page.click("#compare")
    expect(page.locator("#compare-grid .compare-cell")).to_have_count(3)


def test_a_star_marks_the_task_and_the_favourites_filter_keeps_it(open_page, results, studio):  # noqa: F811
    page, _ = open_page("/gallery")
    star = page.locator(f'#gallery .g-tile[data-task-id="{results[2]}"] .g-star')
    star.click()
    expect(star).to_have_attribute("aria-pressed", "true")
    assert studio.store.get(results[2])["favourite"] is True
    page.check("#filter-favourite")
    expect(tiles(page)).to_have_count(1)
    assert "favourite=1" in page.url
    page.reload()
    expect(tiles(page)).to_have_count(1)
    expect(page.locator("#filter-favourite")).to_be_checked()
    page.goto(studio.url("/tasks?favourite=1"))                             # the tasks page has the filter too
    expect(page.locator("#task-list .task-row")).to_have_count(1)
    expect(page.locator("#task-list .task-row .task-fav")).to_be_visible()
    page.goto(studio.url("/gallery?favourite=1"))
    tiles(page).locator(".g-star").click()                                  # the star comes off
    expect(tiles(page).locator(".g-star")).to_have_attribute("aria-pressed", "false")
    assert studio.store.get(results[2])["favourite"] is False


def theme_of(page):
    return page.evaluate("() => [document.documentElement.dataset.bsTheme, "
                         "getComputedStyle(document.body).backgroundColor]")


@pytest.mark.parametrize("scheme", ["dark", "light"])
def test_the_colour_mode_follows_the_system_and_the_toggle(browser, studio, scheme):  # noqa: F811
    context = studio.sign_in(browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US",
                                                 color_scheme=scheme))
    try:
        page = context.new_page()
        problems = PageProblems(page)
        # The mode is set before the first paint: already there when the page's HTML has been read.
        page.goto(studio.url("/tasks"), wait_until="commit")
        page.wait_for_selector("body")
        assert page.evaluate("() => document.documentElement.dataset.bsTheme") == scheme
        page.wait_for_load_state()
        mode, background = theme_of(page)
        # rgb(43, 48, 53) is Bootstrap's dark tertiary background (the body's bg-body-tertiary).
        assert mode == scheme and (background == "rgb(43, 48, 53)") == (scheme == "dark")
        other = "light" if scheme == "dark" else "dark"
        page.click(f'#theme-toggle [data-theme-value="{other}"]')
        assert theme_of(page)[0] == other
        page.goto(studio.url("/gallery"))                                   # kept across pages
        assert theme_of(page)[0] == other
        expect(page.locator(f'#theme-toggle [data-theme-value="{other}"]')).to_have_attribute("aria-pressed", "true")
        page.click('#theme-toggle [data-theme-value="auto"]')
        assert theme_of(page)[0] == scheme
        assert problems.unexpected() == []
    finally:
        context.close()


def test_compared_videos_play_pause_and_seek_together(open_page, results, studio):  # noqa: F811
    second = make_task(studio, "video", prompt="second video", duration="10")
    studio.wait_for(second)
    try:
        page, _ = open_page("/gallery?kind=video")
        expect(tiles(page)).to_have_count(2)
        page.click("#select-mode")
        tiles(page).nth(0).locator(".g-open").click()
        tiles(page).nth(1).locator(".g-open").click()
        page.click("#compare")
        videos = page.locator("#compare-grid video")
        expect(videos).to_have_count(2)

        def every(condition):
            page.wait_for_function("() => [...document.querySelectorAll('#compare-grid video')]"
                                   f".every((v) => {condition})")

        every("v.readyState >= 2")
        page.click("#compare-play")
        every("!v.paused && v.currentTime > 0.3")
        videos.nth(0).evaluate("v => v.pause()")                    # one paused: both pause
        every("v.paused")
        videos.nth(1).evaluate("v => { v.currentTime = 2; }")       # one sought: both there
        every("Math.abs(v.currentTime - 2) < 0.2")
    finally:
        assert studio.app.test_client().delete(f"/api/tasks/{second}").status_code == 204


def test_bulk_delete_removes_the_selected_tasks(open_page, results, studio):  # noqa: F811
    doomed = [make_task(studio, "image", prompt=f"doomed {i}", n=1) for i in range(2)]
    for task_id in doomed:
        studio.wait_for(task_id)
    page, _ = open_page("/gallery?q=doomed")
    expect(tiles(page)).to_have_count(2)
    page.click("#select-mode")
    page.click("#select-all")
    expect(page.locator("#selection-count")).to_have_text("2 selected")
    page.click("#delete-selected")
    expect(page.locator("#bulk-delete-title")).to_have_text("Delete 2 tasks?")
    page.click("#bulk-delete-ok")
    expect(page.locator("#toasts")).to_contain_text("2 tasks deleted.")
    expect(page.locator("#gallery")).to_contain_text("No results match these filters")
    assert [studio.store.get(task_id) for task_id in doomed] == [None, None]
    assert all(studio.store.get(task_id) for task_id in results)


def test_more_results_come_as_the_end_scrolls_into_view(open_page, results, studio):  # noqa: F811
    """35 copies of a finished picture task (files and all): 30 at first, the rest on scrolling."""
    data_dir = Path(studio.app.config["DATA_DIR"])
    model = studio.store.get(results[0])
    start = utcnow() - timedelta(days=100)
    for i in range(35):
        task_id = new_task_id(start + timedelta(minutes=i))
        outputs = []
        for out in model["outputs"]:
            folder = data_dir / "outputs" / task_id
            folder.mkdir(parents=True, exist_ok=True)
            for url in (out["url"], out["thumbnail_url"]):
                (folder / url.rsplit("/", 1)[-1]).write_bytes((data_dir / url[len("/media/"):]).read_bytes())
            rel = f"outputs/{task_id}/{out['path'].rsplit('/', 1)[-1]}"
            outputs.append({**out, "path": rel, "url": "/media/" + rel,
                            "thumbnail_url": f"/media/outputs/{task_id}/{out['thumbnail_url'].rsplit('/', 1)[-1]}"})
        studio.store.create({**model, "id": task_id, "params": {**model["params"], "prompt": f"scroll {i}"},
                             "inputs": [], "outputs": outputs})
    page, _ = open_page("/gallery?q=scroll")
    expect(tiles(page)).to_have_count(30)
    page.locator("#gallery-more-wrap").scroll_into_view_if_needed()
    expect(tiles(page)).to_have_count(35)
    expect(page.locator("#gallery-end")).to_have_text("All 35 results are shown.")
    expect(page.locator("#gallery-more")).to_be_hidden()


# ---- the tasks page ----------------------------------------------------------------------------

def test_a_link_to_a_deleted_task_says_so(open_page, studio):  # noqa: F811
    task_id = make_task(studio, "image", prompt="soon gone", n=1)
    studio.wait_for(task_id)
    assert studio.app.test_client().delete(f"/api/tasks/{task_id}").status_code == 204
    for link in (f"/tasks?task={task_id}", f"/tasks#{task_id}"):
        page, problems = open_page(link)
        problems.allow("404")
        expect(page.locator("#task-gone")).to_contain_text(f"Task {task_id} does not exist any more")
        expect(page.locator("#task-modal")).to_be_hidden()
        assert "task=" not in page.url and "#" not in page.url


def seed_failed(store, n, prompt):
    """`n` finished (failed) tasks written straight into the store, oldest first."""
    start = utcnow() - timedelta(days=400)
    for i in range(n):
        at = start + timedelta(minutes=i)
        store.create({
            "id": new_task_id(at), "kind": "image", "provider": "local", "model": "local-filters",
            "params": {"prompt": f"{prompt} {i}"}, "inputs": [], "status": "failed", "outputs": [],
            "error": {"code": "x", "message": "made up", "retryable": False}, "progress": 0, "cost": None,
            "attempts": 1, "created_at": iso(at), "updated_at": iso(at), "submitted_at": iso(at),
            "finished_at": iso(at), "owner": None, "retry_of": None, "provider_task_id": None,
            "provider_status": None})


def test_after_a_delete_the_page_refills_and_the_count_is_right(open_page, studio):  # noqa: F811
    seed_failed(studio.store, 22, "refill")
    page, _ = open_page("/tasks?q=refill")
    rows = page.locator("#task-list .task-row")
    expect(rows).to_have_count(20)
    expect(page.locator("#page-range")).to_have_text("1–20 of 22")
    rows.first.locator(".dropdown-toggle").click()
    rows.first.locator('[data-action="delete"]').click()
    page.click("#confirm-modal .confirm-ok")
    expect(page.locator("#page-range")).to_have_text("1–20 of 21")
    expect(rows).to_have_count(20)                                       # the next task moved up
    expect(rows.last.locator(".task-title")).to_have_text("refill 1")
    # Clicking a task's title opens it.
    rows.first.locator(".task-title").click()
    expect(page.locator("#task-modal .detail-prompt")).to_have_text("refill 20")


def test_on_a_phone_the_filters_fold_away(open_page, studio):  # noqa: F811
    for path in ("/tasks", "/gallery"):
        page, _ = open_page(path, 390, 844)
        expect(page.locator("#task-filters")).to_be_hidden()
        page.click(".filters-toggle")
        expect(page.locator("#filter-q")).to_be_visible()
        page.fill("#filter-q", "x")
        expect(page.locator(".filters-count")).to_have_text("1")
    page, _ = open_page("/tasks", 1280, 800)
    expect(page.locator("#filter-q")).to_be_visible()
    expect(page.locator(".filters-toggle")).to_be_hidden()


def test_the_admin_goes_from_the_tasks_page_to_a_users_limits_and_spending(open_page, studio):  # noqa: F811
    accounts = studio.app.extensions["accounts"]
    user = accounts.create_user("limited", "correct horse battery staple", images_per_day=4)
    page, _ = open_page("/tasks")
    expect(page.locator("#quota-left")).to_contain_text("images without limit")
    page.click("#manage-users")
    row = page.locator(f'#user-list tr[data-user="{user["id"]}"]')
    expect(row).to_contain_text("0 images, 0 videos")                   # spent today
    row.locator('[data-limit="images_per_day"]').fill("7")
    row.locator(".save-limits").click()
    expect(page.locator("#toasts")).to_contain_text("Limits of limited saved.")
    assert accounts.user(user["id"])["limits"]["images_per_day"] == 7


# ---- screenshots (opt-in) -------------------------------------------------------------------------

SIZES = [(1280, 800), (390, 844)]
PAGES = [("video", "/", "#video-results .task-card"), ("images", "/images", "#image-results .image-card"),
         ("tasks", "/tasks", "#task-list .task-row"), ("gallery", "/gallery", "#gallery .g-tile"),
         ("account", "/account", "#key-form"), ("docs", "/docs", ".swagger-ui .info"),
         ("error", "/no-such-page", "#error-page")]


def shoot(page, name):
    page.wait_for_load_state("networkidle")
    wait_for_media(page)
    page.screenshot(path=ARTIFACTS / f"{name}.png", animations="disabled")


@pytest.mark.skipif(os.environ.get("STUDIO_SCREENSHOTS") != "1",
                    reason="screenshots are opt-in: set STUDIO_SCREENSHOTS=1 or run `make screenshots`")
def test_screenshots_in_both_modes_and_languages(browser, studio, results):  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    for scheme in ("light", "dark"):
        for locale, lang in (("en-US", "en"), ("zh-CN", "zh")):
            for width, height in SIZES:
                options = {"viewport": {"width": width, "height": height}, "locale": locale, "color_scheme": scheme}
                context = studio.sign_in(browser.new_context(**options))
                page = context.new_page()
                for name, path, ready in PAGES:
                    page.goto(studio.url(path))
                    expect(page.locator(ready).first).to_be_visible(timeout=LONG)
                    shoot(page, f"{name}-{scheme}-{lang}-{width}x{height}")
                page.goto(studio.url("/tasks"))
                page.locator("#task-list .task-row .task-title").first.click()
                media = page.locator("#task-modal .detail-media img, #task-modal .detail-media video")
                expect(media.first).to_be_visible()
                page.wait_for_timeout(400)      # the dialog's fade
                shoot(page, f"tasks-detail-{scheme}-{lang}-{width}x{height}")
                if width < 768:         # the folded navigation, with the colour and language toggles
                    page.goto(studio.url("/tasks"))
                    page.click(".navbar-toggler")
                    expect(page.locator("#theme-toggle")).to_be_visible()
                    page.wait_for_timeout(400)
                    shoot(page, f"menu-{scheme}-{lang}-{width}x{height}")
                page.goto(studio.url("/gallery"))
                tiles(page).first.locator(".g-open").click()
                expect(page.locator("#lightbox-media img")).to_be_visible()
                page.wait_for_timeout(400)      # the dialog's fade
                shoot(page, f"gallery-lightbox-{scheme}-{lang}-{width}x{height}")
                page.keyboard.press("Escape")
                expect(page.locator("#lightbox")).to_be_hidden()
                page.click("#select-mode")
                for index in (0, 3):
                    tiles(page).nth(index).locator(".g-open").click()
                shoot(page, f"gallery-selected-{scheme}-{lang}-{width}x{height}")
                page.click("#compare")
                expect(page.locator("#compare-grid .compare-cell")).to_have_count(3)
                expect(page.locator("#compare-modal")).to_have_class(re.compile(r"\bshow\b"))
                page.wait_for_timeout(400)      # the dialog's fade
                shoot(page, f"gallery-compare-{scheme}-{lang}-{width}x{height}")
                context.close()
                context = browser.new_context(**options)
                page = context.new_page()
                page.goto(studio.url("/login"))
                shoot(page, f"login-{scheme}-{lang}-{width}x{height}")
                context.close()
