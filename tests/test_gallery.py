"""The gallery's server side: favourites (kept on the task, owner only, a listing filter), the zip
of chosen results (exactly their files, by record, owner only, capped), and the pages' quota line."""

import io
import zipfile
from pathlib import Path

import pytest

from tasks import Task
from tests.conftest import run_pipeline
from tests.signin import make_user


def make_images(client, png_b64, app, n=1, headers=None, prompt="a gallery picture"):
    resp = client.post("/generate_image", json={"image": png_b64, "n": n, "prompt": prompt}, headers=headers)
    assert resp.status_code == 202, resp.get_json()
    task_id = resp.get_json()["task_id"]
    assert run_pipeline(app, task_id)["status"] == "succeeded"
    return task_id


def zip_of(client, ids, headers=None):
    return client.post("/api/tasks/download.zip", json={"task_ids": ids}, headers=headers)


# ---- favourites -------------------------------------------------------------------------------

def test_a_star_is_kept_on_the_task_and_filters_the_listing(app, client, png_b64):
    starred, plain = make_images(client, png_b64, app), make_images(client, png_b64, app)
    resp = client.post(f"/api/tasks/{starred}/favourite", json={"favourite": True})
    assert resp.status_code == 200 and resp.get_json()["favourite"] is True
    record = app.extensions["task_store"].get(starred)
    Task.model_validate(record)                         # a documented field of the task
    assert record["favourite"] is True and "favourite" not in app.extensions["task_store"].get(plain)

    listed = client.get("/api/tasks?favourite=1").get_json()
    assert [t["id"] for t in listed["tasks"]] == [starred] and listed["total"] == 1
    assert client.get("/api/tasks?favourite=0").get_json()["total"] == 2      # 0: no filter
    assert client.get("/api/tasks?favourite=1&status=succeeded&kind=image").get_json()["total"] == 1

    assert client.post(f"/api/tasks/{starred}/favourite", json={"favourite": False}).status_code == 200
    assert client.get("/api/tasks?favourite=1").get_json()["total"] == 0


@pytest.mark.parametrize("body", [{"favourite": "yes"}, {"favourite": 1}, {}, {"favourite": True, "x": 1}])
def test_a_star_takes_only_true_or_false(app, client, png_b64, body):
    task_id = make_images(client, png_b64, app)
    resp = client.post(f"/api/tasks/{task_id}/favourite", json=body)
    assert resp.status_code == 400 and set(resp.get_json()["error"]) - {"params"} == {"code", "message", "field"}
    assert "favourite" not in app.extensions["task_store"].get(task_id)


def test_the_favourite_filter_takes_only_0_or_1(client):
    resp = client.get("/api/tasks?favourite=yes")
    assert resp.status_code == 400 and resp.get_json()["error"]["field"] == "favourite"


def test_only_the_owner_stars_a_task(app, client, png_b64):
    alice = make_user(app, "alice")
    bob = make_user(app, "bob")
    task_id = make_images(client, png_b64, app, headers=alice)
    assert client.post(f"/api/tasks/{task_id}/favourite", json={"favourite": True}, headers=bob).status_code == 404
    # The admin sees the task but does not star it for its owner.
    assert client.post(f"/api/tasks/{task_id}/favourite", json={"favourite": True}).status_code == 404
    assert client.post("/api/tasks/20261122T000000000Z-abcdef/favourite", json={"favourite": True},
                       headers=alice).status_code == 404
    assert "favourite" not in app.extensions["task_store"].get(task_id)
    assert client.post(f"/api/tasks/{task_id}/favourite", json={"favourite": True}, headers=alice).status_code == 200


# ---- the zip ----------------------------------------------------------------------------------

def test_the_zip_holds_exactly_the_chosen_tasks_results(app, client, png_b64):
    two = make_images(client, png_b64, app, n=2)
    one = make_images(client, png_b64, app, n=1)
    left_out = make_images(client, png_b64, app, n=1)
    resp = zip_of(client, [two, one, two])
    assert resp.status_code == 200 and resp.mimetype == "application/zip"
    assert resp.headers["Content-Disposition"].startswith('attachment; filename="studio_')
    archive = zipfile.ZipFile(io.BytesIO(resp.get_data()))
    assert archive.testzip() is None
    store, data_dir = app.extensions["task_store"], Path(app.config["DATA_DIR"])
    wanted = {}
    for task_id in (two, one):
        task = store.get(task_id)
        for number, out in enumerate(task["outputs"], 1):
            created = task["created_at"][:19].replace("-", "").replace(":", "").replace("T", "_")
            name = f"{task['provider']}_{created}_{number}_{task_id.rsplit('-', 1)[-1]}.png"
            wanted[name] = (data_dir / out["path"]).read_bytes()
    assert sorted(archive.namelist()) == sorted(wanted)             # three files, no thumbnail, no input
    assert {name: archive.read(name) for name in archive.namelist()} == wanted
    assert not any(left_out.rsplit("-", 1)[-1] in name for name in archive.namelist())
    # The same name /media gives the file as an attachment.
    first = store.get(one)["outputs"][0]["url"]
    with client.get(first + "?download=1") as media:
        disposition = media.headers["Content-Disposition"]
    assert any(name in disposition for name in archive.namelist())


def test_a_foreign_or_unknown_task_refuses_the_whole_zip(app, client, png_b64):
    alice, bob = make_user(app, "alice"), make_user(app, "bob")
    hers = make_images(client, png_b64, app, headers=alice)
    his = make_images(client, png_b64, app, headers=bob)
    resp = zip_of(client, [his, hers], headers=bob)
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found"
    assert zip_of(client, [his, "20261122T000000000Z-abcdef"], headers=bob).status_code == 404
    assert zip_of(client, [his], headers=bob).status_code == 200
    assert zip_of(client, [his, hers]).status_code == 200          # the admin sees every task


def test_the_zip_is_capped_in_tasks_and_bytes(app, client, png_b64, tmp_path):
    ids = [make_images(client, png_b64, app) for _ in range(3)]
    app.config["ZIP_MAX_TASKS"] = 2
    resp = zip_of(client, ids)
    assert resp.status_code == 413 and resp.get_json()["error"]["code"] == "too_many_tasks"
    assert zip_of(client, ids[:2]).status_code == 200
    app.config["ZIP_MAX_TASKS"] = 100
    # A result of just over 1 MB (the cap's unit): written where the record says it is.
    big = Path(app.config["DATA_DIR"]) / app.extensions["task_store"].get(ids[0])["outputs"][0]["path"]
    big.write_bytes(big.read_bytes() + b"\0" * (1024 ** 2))
    app.config["ZIP_MAX_MB"] = 1
    resp = zip_of(client, ids)
    assert resp.status_code == 413 and resp.get_json()["error"]["code"] == "download_too_large"
    assert zip_of(client, ids[1:]).status_code == 200


@pytest.mark.parametrize("body", [{}, {"task_ids": []}, {"task_ids": "x"}, {"task_ids": [1]},
                                  {"task_ids": ["a" * 65]}, {"task_ids": ["x"], "more": 1}])
def test_a_bad_zip_request_is_a_4xx_with_the_error_shape(client, body):
    resp = client.post("/api/tasks/download.zip", json=body)
    assert 400 <= resp.status_code < 500 and set(resp.get_json()["error"]) - {"params"} == {"code", "message", "field"}


def test_a_task_without_saved_results_gives_no_empty_zip(app, client, png_b64):
    resp = client.post("/generate_image", json={"image": png_b64, "n": 1})
    task_id = resp.get_json()["task_id"]             # still queued: nothing saved
    resp = zip_of(client, [task_id])
    assert resp.status_code == 422 and resp.get_json()["error"]["code"] == "no_results"


# ---- the pages ----------------------------------------------------------------------------------

def test_the_tasks_page_shows_the_quota_left_today(app, png_b64):
    from tests.signin import login
    make_user(app, "quinn", images_per_day=5, videos_per_day=2)
    html = login(app, "quinn").get("/tasks").get_data(as_text=True)
    assert 'id="quota-left"' in html and "5 images, 2 videos" in html


def test_the_gallery_page_renders_with_the_tasks_filters(client):
    html = client.get("/gallery").get_data(as_text=True)
    tasks_html = client.get("/tasks").get_data(as_text=True)
    for name in ('name="q"', 'name="kind"', 'name="provider"', 'name="favourite"'):
        assert name in html and name in tasks_html
    assert 'href="/gallery"' in tasks_html            # in the navigation


def test_the_gallery_page_has_no_inline_script_or_style(client):
    # The CSP allows neither: every script is a file or a JSON block; sizes are set by the script.
    from tests.test_pages import _Tags
    parser = _Tags()
    parser.feed(client.get("/gallery").get_data(as_text=True))
    for tag, attrs in parser.tags:
        assert "style" not in attrs and not [name for name in attrs if name.startswith("on")], (tag, attrs)
        if tag == "script":
            assert attrs.get("src") or attrs.get("type") == "application/json"
