"""The batch pages in headless Chromium against a real server whose pipeline runs: a zip of the example
shots uploaded on /batches/new, its page follows the batch to 100 %, with its items and downloads."""

import zipfile

import pytest
from playwright.sync_api import expect

from tests.browser import PageProblems, run_chromium, serve_studio
from tests.test_batches import shot_zip

expect.set_options(timeout=60_000)      # three renders through the whole pipeline


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    yield from serve_studio(tmp_path_factory)


@pytest.fixture(scope="module")
def browser():
    yield from run_chromium()


def test_a_zip_uploaded_on_the_page_runs_to_100_percent_with_its_items_and_downloads(browser, studio, tmp_path):
    archive = tmp_path / "episode.zip"
    archive.write_bytes(shot_zip())
    context = studio.sign_in(browser.new_context(viewport={"width": 1280, "height": 800}))
    page = context.new_page()
    problems = PageProblems(page)
    page.goto(studio.url("/batches/new"))
    expect(page.locator('select[name="model_name"] option')).not_to_have_count(0)
    page.fill("#batch-name", "Episode one in the browser")
    page.locator('[data-source="zip"]').click()
    page.set_input_files("#batch-zip", str(archive))
    page.locator(".submit-button").click()

    page.wait_for_url("**/batches/b*")
    expect(page.locator("#batch-status")).to_have_text("Done")
    expect(page.locator("#batch-progress")).to_have_attribute("aria-valuenow", "100")
    items = page.locator("#batch-items .batch-item")
    expect(items).to_have_count(3)
    expect(items.first.locator(".item-name")).to_have_text("Episode-01/Shot-001")
    expect(items.first.locator(".item-status")).to_have_text("Done")
    expect(items.first.locator(".item-thumb")).to_be_visible()
    expect(page.locator("#batch-counts")).to_contain_text("3 of 3 done")
    expect(page.locator('[data-action="retry-failed"]')).to_be_disabled()

    with page.expect_download() as download:
        page.locator('[data-download="results.zip"]').click()
    with zipfile.ZipFile(download.value.path()) as results:
        assert results.namelist() == [f"Episode-01-Shot-00{n}.mp4" for n in (1, 2, 3)]

    page.locator(".studio-nav").get_by_role("link", name="Batches").click()
    row = page.locator("#batch-list .batch-row")
    expect(row).to_have_count(1)
    expect(row.locator(".batch-name")).to_have_text("Episode one in the browser")
    expect(row.locator(".batch-status")).to_have_text("Done")
    context.close()
    assert problems.unexpected() == []
