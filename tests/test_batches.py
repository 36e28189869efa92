"""Batches end to end: a shot-list zip through the local engine to a report, resume, retry, pause, cancel,
the command line, JSON items, and who may see what."""

import base64
import csv
import io
import os
import random
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openpyxl
import pytest
from PIL import Image, ImageDraw
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

import task_query
from tests.conftest import ADMIN_PASSWORD, run_pipeline
from tests.signin import csrf_of, login, make_user

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "batch-shots"
SETTINGS = {"name": "Episode one", "provider": "local", "model_name": "local-motion", "duration": "5"}


def png(seed=0):
    """A small picture (uploads stay under werkzeug's 500 KB in-memory limit for the test client)."""
    img = Image.new("RGB", (480, 320), (40 + seed * 30 % 200, 80, 120))
    ImageDraw.Draw(img).ellipse([100, 60, 300, 260], fill=(240, 200 - seed * 20 % 200, 80))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def shot_zip(folder=EXAMPLE, extra=()):
    """The example folder (or another) as a zip, plus extra (name, bytes) members."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"Series/{path.relative_to(folder).as_posix()}")
        for name, data in extra:
            archive.writestr(name, data)
    return buffer.getvalue()


def multipart(client, fields):
    """POST a multipart body encoded here: the test client would spool a large one to a temp file it never closes."""
    values = {k: FileStorage(io.BytesIO(v[0]), filename=v[1]) if isinstance(v, tuple) else v for k, v in fields.items()}
    boundary, body = encode_multipart(values)
    return client.post("/api/v1/batches", data=body, content_type=f"multipart/form-data; boundary={boundary}")


def upload(client, data, **fields):
    return multipart(client, {"file": (data, "shots.zip"), **SETTINGS, **fields})


def run_batch(app, client, batch_id, **kwargs):
    """Drive the pipeline until every item's task has finished; the batch as the API shows it then."""
    for item in client.get(f"/api/v1/batches/{batch_id}").get_json()["items"]:
        if item["task_id"]:
            run_pipeline(app, item["task_id"], **kwargs)
    return client.get(f"/api/v1/batches/{batch_id}").get_json()


def test_shot_list_zip_reaches_100_percent_with_a_report_and_resumes_without_repeats(app, client):
    resp = upload(client, shot_zip())
    assert resp.status_code == 202, resp.get_json()
    made = resp.get_json()
    assert made["created"] == 3 and made["counts"]["queued"] == 3
    batch = run_batch(app, client, made["batch_id"])
    assert batch["progress"] == 100 and batch["status"] == "completed" and batch["eta_seconds"] == 0
    assert batch["counts"]["completed"] == 3 and batch["finished_at"]
    assert app.extensions["batch_store"].get(made["batch_id"])["finished_at"] == batch["finished_at"]
    assert [i["name"] for i in batch["items"]] == [f"Episode-01/Shot-00{n}" for n in (1, 2, 3)]
    assert batch["items"][0]["prompt"].startswith("Dawn over the harbour") and "Slow zoom in." in \
        batch["items"][0]["prompt"]
    tasks = [app.extensions["task_store"].get(i["task_id"]) for i in batch["items"]]
    assert {t["batch_id"] for t in tasks} == {made["batch_id"]}
    assert tasks[2]["batch_item"] == "Episode-01/Shot-003"

    report = client.get(f"/api/v1/batches/{made['batch_id']}/report.xlsx")
    assert report.status_code == 200
    sheet = openpyxl.load_workbook(io.BytesIO(report.data)).active
    assert sheet.max_row == 4 and len(sheet._images) == 3
    assert [sheet.cell(row, 2).value for row in (2, 3, 4)] == [i["name"] for i in batch["items"]]
    assert sheet.cell(2, 4).value == "completed" and sheet.cell(2, 13).hyperlink is not None

    results = client.get(f"/api/v1/batches/{made['batch_id']}/results.zip")
    with zipfile.ZipFile(io.BytesIO(results.data)) as archive:
        assert archive.namelist() == [f"Episode-01-Shot-00{n}.mp4" for n in (1, 2, 3)]
        assert archive.read("Episode-01-Shot-003.mp4")[4:8] == b"ftyp"
    text = client.get(f"/api/v1/batches/{made['batch_id']}/report.csv").get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    assert len(rows) == 4 and rows[0][:3] == ["Name", "Prompt", "Status"] and rows[3][2] == "completed"

    before = len(app.extensions["task_store"])
    again = upload(client, shot_zip())
    assert again.status_code == 202 and again.get_json()["created"] == 0
    assert again.get_json()["batch_id"] == made["batch_id"]
    assert len(app.extensions["task_store"]) == before


def test_the_same_folder_with_one_more_shot_makes_one_task(app, client):
    made = upload(client, shot_zip()).get_json()
    # The prompt of shot 4 comes in a second prompts file of the episode.
    more = shot_zip(extra=[("Series/05_generated_images/Episode-01/Episode-01-Shot-004.png", png(seed=4)),
                           ("Series/07_video_prompts/x/Episode-01-Video-Prompts.txt", "Shot-004: the fourth")])
    again = upload(client, more).get_json()
    assert again["batch_id"] == made["batch_id"] and again["created"] == 1
    batch = client.get(f"/api/v1/batches/{made['batch_id']}").get_json()
    assert batch["total"] == 4 and batch["items"][3]["name"] == "Episode-01/Shot-004"


def test_the_same_zip_sent_twice_at_once_makes_each_task_once(app):
    data = shot_zip()
    clients = [app.test_client() for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda c: upload(c, data).get_json(), clients))
    assert len({a["batch_id"] for a in answers}) == 1, answers      # one batch of that name, not four
    assert sum(a["created"] for a in answers) == 3, answers
    assert len(app.extensions["task_store"]) == 3


def test_refused_items_are_listed_while_the_others_run(app, client):
    long_prompt = "x" * 2600
    data = shot_zip(extra=[
        ("Series/05_generated_images/Episode-02/Episode-02-Shot-001.png", b"this is not a picture at all" * 4),
        ("Series/05_generated_images/Episode-02/Episode-02-Shot-002.png", png(seed=2)),
        ("Series/05_generated_images/Episode-02/notes.docx", b"PK"),
        ("Series/07_video_prompts/Episode-02-Video-Prompts.txt",
         f"Shot-001: a prompt\nShot-002: {long_prompt}\nShot-003: no picture for this one\n")])
    resp = upload(client, data)
    assert resp.status_code == 202
    batch = client.get(f"/api/v1/batches/{resp.get_json()['batch_id']}").get_json()
    refused = {i["name"]: i["error"]["code"] for i in batch["items"] if i["status"] == "refused"}
    assert refused == {"Episode-02/Shot-001": "unsupported_image_format", "Episode-02/Shot-002": "prompt_too_long",
                       "Episode-02/Shot-003": "picture_missing",
                       "Series/05_generated_images/Episode-02/notes.docx": "not_a_shot"}
    assert batch["counts"] == {"queued": 3, "processing": 0, "completed": 0, "failed": 0, "cancelled": 0,
                               "refused": 4}


@pytest.mark.parametrize("fields, code, field", [
    ({"provider": "nobody"}, "unknown_provider", "provider"),
    ({"n": "2"}, "unsupported_value", "n"),
    ({"colour": "red"}, "unknown_field", "colour"),
])
def test_settings_the_whole_batch_cannot_use_are_a_4xx_naming_the_field(app, client, fields, code, field):
    resp = upload(client, shot_zip(), **fields)
    assert resp.status_code in (400, 422) and resp.get_json()["error"]["code"] == code
    assert resp.get_json()["error"]["field"] == field
    assert app.extensions["batch_store"].list() == [] and len(app.extensions["task_store"]) == 0


def test_an_upload_without_a_layout_is_a_4xx_naming_the_file(client):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("holiday.png", png())
    resp = upload(client, buffer.getvalue())
    assert resp.status_code == 400 and resp.get_json()["error"] == {
        "code": "no_layout", "field": "file", "message": resp.get_json()["error"]["message"]}
    assert upload(client, b"not a zip").get_json()["error"]["code"] == "invalid_zip"


def test_csv_manifest_and_a_separate_prompts_file(app, client):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("pics/a.png", png(seed=1))
        archive.writestr("pics/b.png", png(seed=2))
        archive.writestr("list.csv", "image,prompt,name\npics/a.png,first one,Intro\npics/b.png,second,\n"
                                     "pics/c.png,gone,\n")
    resp = upload(client, buffer.getvalue(), name="manifest")
    batch = client.get(f"/api/v1/batches/{resp.get_json()['batch_id']}").get_json()
    assert [(i["name"], i["status"]) for i in batch["items"]] == [
        ("Intro", "queued"), ("pics/b", "queued"), ("pics/c", "refused")]
    # Pictures in a zip, the episode's prompts beside it (the page's "zip plus a prompts file").
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("Ep-Shot-1.png", png(seed=1))
    resp = multipart(client, {"file": (buffer.getvalue(), "p.zip"), **SETTINGS, "name": "separate",
                              "prompts": (b"Shot-1: hello", "Ep-Video-Prompts.txt")})
    assert resp.get_json()["created"] == 1


def test_json_items_with_base64_pictures(app, client):
    good = base64.b64encode(png(seed=5)).decode()
    resp = client.post("/api/v1/batches", json={**SETTINGS, "name": "json", "items": [
        {"name": "one", "image": good, "prompt": "zoom in"},
        {"name": "two", "image": "data:image/png;base64," + good, "prompt": "pan left"},
        {"name": "bad", "image": "%%%", "prompt": "x"}]})
    assert resp.status_code == 202 and resp.get_json()["created"] == 2
    batch = client.get(f"/api/v1/batches/{resp.get_json()['batch_id']}").get_json()
    assert batch["items"][2]["status"] == "refused" and batch["items"][2]["error"]["code"] == "invalid_image"
    assert batch["items"][2]["error"]["field"] == "items.2.image"


# ---- hostile zips ---------------------------------------------------------------------------

def _symlink_member(name, target):
    info = zipfile.ZipInfo(name)
    info.external_attr = (0o120777 << 16)
    return info, target


def test_hostile_members_are_refused_one_by_one_and_nothing_is_written_outside(app, client, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("Series/05_generated_images/Episode-01/Episode-01-Shot-001.png", png(1))
        archive.writestr("Series/07_video_prompts/Episode-01-Video-Prompts.txt", "Shot-001: fine\nShot-002: bomb")
        archive.writestr("../../evil-traversal.png", png(2))
        archive.writestr("/tmp/evil-absolute.png", png(3))
        archive.writestr("C:\\evil\\windows.png", png(3))
        archive.writestr(*_symlink_member("Series/05_generated_images/Episode-01/link.png", "/etc/passwd"))
        # A bomb by ratio: 20 MB of zeros packs into about 20 KB.
        archive.writestr("Series/05_generated_images/Episode-01/Episode-01-Shot-002.png", bytes(20 * 2**20))
    before = sorted(p.name for p in tmp_path.parent.iterdir())
    resp = upload(client, buffer.getvalue())
    assert resp.status_code == 202, resp.get_json()
    batch = client.get(f"/api/v1/batches/{resp.get_json()['batch_id']}").get_json()
    refused = {i["name"]: i["error"]["message"] for i in batch["items"] if i["status"] == "refused"}
    assert refused["../../evil-traversal.png"] == "Refused: a path with '..'."
    assert refused["/tmp/evil-absolute.png"] == refused["C:\\evil\\windows.png"] == "Refused: an absolute path."
    assert refused["Series/05_generated_images/Episode-01/link.png"] == "Refused: a symbolic link."
    assert "100 times" in refused["Series/05_generated_images/Episode-01/Episode-01-Shot-002.png"]
    # Shot 2's picture was refused, so its prompt has no picture; shot 1 runs.
    assert refused["Episode-01/Shot-002"] == "No picture for Episode-01/Shot-002."
    assert [i["name"] for i in batch["items"] if i["status"] == "queued"] == ["Episode-01/Shot-001"]
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == before
    assert not list(Path(app.config["DATA_DIR"]).rglob("evil*")) and not Path("/tmp/evil-absolute.png").exists()


def test_an_upload_of_nothing_but_refusals_is_a_4xx(app, client):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../x/Episode-01-Shot-001.png", png(1))
        archive.writestr("07_video_prompts/Episode-01-Video-Prompts.txt", "Shot-001: no picture left")
    resp = upload(client, buffer.getvalue())
    error = resp.get_json()["error"]
    assert resp.status_code == 422 and error["code"] == "no_usable_items" and error["field"] == "file"
    assert "Refused: a path with '..'" in error["message"]
    assert app.extensions["batch_store"].list() == []


def test_a_bomb_by_member_count_is_refused_whole(app, client):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for n in range(10_001):
            archive.writestr(f"f{n}", b"")
    resp = upload(client, buffer.getvalue())
    assert resp.status_code == 413 and resp.get_json()["error"]["field"] == "file"
    assert resp.get_json()["error"]["code"] == "too_many_members"
    assert app.extensions["batch_store"].list() == []


def test_an_archive_unpacking_past_the_upload_limit_is_refused_whole(tmp_path, monkeypatch):
    from app import create_app

    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    small = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "d"), "SECRET_KEY": "t", "BATCH_MAX_UPLOAD_MB": 1})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for n in range(3):      # 3 x 600 KB of noise-free pictures: fine by ratio, too much together
            archive.writestr(f"big{n}.bmp", bytes(600 * 1024), compress_type=zipfile.ZIP_STORED)
    resp = upload(small.test_client(), buffer.getvalue())
    assert resp.status_code == 413 and resp.get_json()["error"]["code"] in ("upload_too_large", "payload_too_large")


# ---- pause, resume, cancel; who may see a batch -----------------------------------------------

def json_batch(client, name="held", count=2):
    items = [{"name": f"shot-{n}", "image": base64.b64encode(png(n)).decode(), "prompt": f"zoom in {n}"}
             for n in range(count)]
    resp = client.post("/api/v1/batches", json={**SETTINGS, "name": name, "items": items})
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["batch_id"]


def test_pause_holds_queued_items_resume_sends_them_cancel_stops_the_rest(app, client):
    store, providers = app.extensions["task_store"], app.extensions["providers"]
    batch_id = json_batch(client)
    paused = client.post(f"/api/v1/batches/{batch_id}/pause").get_json()
    assert paused["status"] == "paused"
    # Before a result exists, an item shows its own picture.
    with client.get(paused["items"][0]["thumbnail"]) as shown:
        assert shown.status_code == 200 and shown.mimetype == "image/png"
    task_query.dispatch(store, providers)
    assert {store.get(i["task_id"])["status"] for i in paused["items"]} == {"queued"}
    assert client.post("/api/v1/batches", json={**SETTINGS, "name": "held", "items": [
        {"name": "late", "image": base64.b64encode(png(9)).decode(), "prompt": "x"}]}).status_code == 409
    resumed = client.post(f"/api/v1/batches/{batch_id}/resume").get_json()
    assert resumed["status"] == "running"
    task_query.dispatch(store, providers)
    assert {store.get(i["task_id"])["status"] for i in resumed["items"]} <= {"submitted", "running", "downloading",
                                                                               "succeeded"}
    other = json_batch(client, name="stopped")
    cancelled = client.post(f"/api/v1/batches/{other}/cancel").get_json()
    assert cancelled["status"] == "cancelled" and cancelled["counts"]["cancelled"] == 2


def test_a_batch_that_is_not_yours_is_a_404(app, client):
    batch_id = json_batch(client)
    headers = make_user(app, "someone")
    for method, path in [("GET", ""), ("GET", "/report.xlsx"), ("GET", "/report.csv"), ("GET", "/results.zip"),
                         ("POST", "/retry-failed"), ("POST", "/pause"), ("POST", "/resume"), ("POST", "/cancel")]:
        resp = client.open(f"/api/v1/batches/{batch_id}{path}", method=method, headers=headers)
        assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found", (method, path)
    assert client.get("/api/v1/batches", headers=headers).get_json() == {"batches": []}
    assert client.get(f"/batches/{batch_id}", headers=headers).status_code == 404
    assert client.get("/api/v1/batches/..%2f..%2fetc").status_code == 404
    assert [b["batch_id"] for b in client.get("/api/v1/batches").get_json()["batches"]] == [batch_id]


# ---- the command line -----------------------------------------------------------------------

def test_flask_batch_run_watch_makes_the_example_folder(app, tmp_path):
    runner = app.test_cli_runner()
    results = tmp_path / "results.zip"
    out = runner.invoke(args=["batch", "run", str(EXAMPLE), "--watch", "--interval", "0.1", "--results",
                              str(results)])
    assert out.exit_code == 0, out.output
    assert "3 new task(s), 3 item(s)" in out.output and "completed (3 completed)" in out.output
    with zipfile.ZipFile(results) as archive:
        assert archive.namelist() == [f"Episode-01-Shot-00{n}.mp4" for n in (1, 2, 3)]
    again = runner.invoke(args=["batch", "run", str(EXAMPLE)])
    assert again.exit_code == 0 and "0 new task(s), 3 item(s)" in again.output
    assert len(app.extensions["batch_store"].list()) == 1


def test_the_readme_command_in_a_process_of_its_own(tmp_path):
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "BACKUP_DIR": str(tmp_path / "backups"),
           "DOTENV_PATH": str(tmp_path / "no.env"), "FLASK_APP": ""}
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "app:create_app", "batch", "run",
                           "examples/batch-shots", "--provider", "local", "--model", "local-motion", "--watch",
                           "--interval", "0.2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "3 new task(s), 3 item(s)" in done.stdout and "completed (3 completed)" in done.stdout
    assert len(list((tmp_path / "data" / "outputs").glob("*/video.mp4"))) == 3


# ---- more ways in, limits, ETA --------------------------------------------------------------

def test_a_dropped_folder_arrives_as_files_named_by_their_relative_paths(app, client):
    fields = [("name", "folder"), ("provider", "local"), ("model_name", "local-motion")]
    for path in sorted(EXAMPLE.rglob("*")):
        if path.is_file():
            fields.append(("files", FileStorage(io.BytesIO(path.read_bytes()),
                                                filename=f"batch-shots/{path.relative_to(EXAMPLE).as_posix()}")))
    fields.append(("files", FileStorage(io.BytesIO(png(7)), filename="batch-shots/../../outside.png")))
    boundary, body = encode_multipart(MultiDict(fields))
    resp = client.post("/api/v1/batches", data=body, content_type=f"multipart/form-data; boundary={boundary}")
    assert resp.status_code == 202 and resp.get_json()["created"] == 3
    assert resp.get_json()["counts"]["refused"] == 1


def test_the_command_refuses_a_symlink_in_the_folder_and_runs_the_rest(app, tmp_path):
    folder = tmp_path / "shots"
    shutil.copytree(EXAMPLE, folder)
    (folder / "05_generated_images" / "Episode-01" / "Episode-01-Shot-004.png").symlink_to("/etc/passwd")
    out = app.test_cli_runner().invoke(args=["batch", "run", str(folder), "--name", "linked"])
    assert out.exit_code == 0, out.output
    assert "3 new task(s), 4 item(s)" in out.output
    assert "refused 05_generated_images/Episode-01/Episode-01-Shot-004.png: Refused: a symbolic link." in out.output


def test_each_item_spends_the_users_quota_and_the_one_over_it_is_refused(app, client):
    headers = make_user(app, "counted", videos_per_day=2)
    items = [{"name": f"s{n}", "image": base64.b64encode(png(n)).decode(), "prompt": "zoom in"} for n in range(3)]
    resp = client.post("/api/v1/batches", json={**SETTINGS, "items": items}, headers=headers)
    assert resp.status_code == 202 and resp.get_json()["created"] == 2
    batch = client.get(f"/api/v1/batches/{resp.get_json()['batch_id']}", headers=headers).get_json()
    assert batch["items"][2]["status"] == "refused" and batch["items"][2]["error"]["code"] == "quota_exceeded"


def test_a_batch_upload_may_be_larger_than_a_single_request_from_a_signed_in_browser(tmp_path, monkeypatch):
    from app import create_app

    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "d"), "SECRET_KEY": "t",
                      "MAX_CONTENT_LENGTH": 512 * 1024})
    browser = login(app, "admin", ADMIN_PASSWORD)
    noise = random.Random(0).randbytes(2**20)     # 1 MB that does not pack smaller
    data = shot_zip(extra=[("Series/readme.bin", noise)])
    boundary, body = encode_multipart({"file": FileStorage(io.BytesIO(data), filename="big.zip"), **SETTINGS})
    assert len(body) > 512 * 1024
    resp = browser.post("/api/v1/batches", data=body, content_type=f"multipart/form-data; boundary={boundary}",
                        headers={"X-CSRFToken": csrf_of(browser)})
    assert resp.status_code == 202, resp.get_json()
    # Elsewhere the single-request limit still holds.
    big = browser.post("/generate", json={"prompt": "x" * (600 * 1024)}, headers={"X-CSRFToken": csrf_of(browser)})
    assert big.status_code == 413


def test_eta_comes_from_the_finished_items(tmp_path, monkeypatch):
    from app import create_app

    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "d"), "SECRET_KEY": "t", "LOCAL_MAX_CONCURRENCY": 1})
    client = app.test_client()
    batch_id = json_batch(client, count=3)
    first = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert first["eta_seconds"] is None and first["progress"] == 0 and first["status"] == "running"
    run_pipeline(app, first["items"][0]["task_id"])
    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert batch["counts"]["completed"] == 1 and batch["eta_seconds"] >= 1
    assert 33 <= batch["progress"] < 100 and batch["finished_at"] is None


@pytest.mark.parametrize("path", ["/batches", "/batches/new"])
def test_the_batch_pages_speak_chinese(client, path):
    html = client.get(path + "?lang=zh").get_data(as_text=True)
    assert "批量任务" in html and ("新建批次" in html)
    assert '"reason.picture_missing": "\\u6b64' in html or "此项没有图片" in html


def test_report_cells_are_text_never_formulas_and_names_stay_apart(app, client):
    picture = base64.b64encode(png(1)).decode()
    resp = client.post("/api/v1/batches", json={**SETTINGS, "name": "formulas", "items": [
        {"name": "same", "image": picture, "prompt": "=HYPERLINK(\"http://evil\",\"x\")"},
        {"name": "same", "image": picture, "prompt": "+1+1"}]})
    batch_id = resp.get_json()["batch_id"]
    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert [i["name"] for i in batch["items"]] == ["same", "same (2)"] and resp.get_json()["created"] == 2
    sheet = openpyxl.load_workbook(io.BytesIO(client.get(f"/api/v1/batches/{batch_id}/report.xlsx").data)).active
    assert sheet.cell(2, 3).data_type == "s" and sheet.cell(2, 3).value.startswith("=HYPERLINK")
    text = client.get(f"/api/v1/batches/{batch_id}/report.csv").get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    assert rows[1][1].startswith("'=HYPERLINK") and rows[2][1] == "'+1+1"
