"""MEDIA_DIR: a studio keeps inputs/ and outputs/ there (a volume several nodes can share) and
everything else in its own DATA_DIR; the pipeline, /media, deletion and the janitor all use it."""

import os
from datetime import timedelta
from pathlib import Path

import janitor
from app import create_app
from tasks import utcnow
from tests.conftest import b64, picture, run_pipeline

PICTURE = b64(picture(400, 320, seed=7), "image/png")


def test_a_local_task_keeps_its_files_under_media_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    data_dir, media_dir = tmp_path / "data", tmp_path / "shared" / "media"
    app = create_app({"TESTING": True, "SECRET_KEY": "test", "DATA_DIR": str(data_dir),
                      "MEDIA_DIR": str(media_dir)})
    client = app.test_client()
    made = client.post("/generate_image", json={"image": PICTURE})
    assert made.status_code == 202, made.get_json()
    task = run_pipeline(app, made.get_json()["task_id"])
    assert task["status"] == "succeeded", task["error"]

    files = [i["path"] for i in task["inputs"]] + [o["path"] for o in task["outputs"]]
    files += [o["thumbnail_url"][len("/media/"):] for o in task["outputs"]]
    assert files and all((media_dir / f).is_file() for f in files), files
    assert not (data_dir / "inputs").exists() and not (data_dir / "outputs").exists()
    for out in task["outputs"]:
        with client.get(out["url"]) as served:
            assert served.status_code == 200
            assert served.data == (media_dir / out["path"]).read_bytes()
    with client.get("/media/" + task["inputs"][0]["path"]) as served:
        assert served.status_code == 200

    orphan = media_dir / "outputs" / "t-orphan"
    orphan.mkdir()
    os.utime(orphan, (0, 0))
    removed = janitor.sweep(data_dir, app.extensions["task_store"], utcnow() + timedelta(hours=2))
    assert removed == ["outputs/t-orphan"] and not orphan.exists()

    assert client.delete(f"/api/tasks/{task['id']}").status_code in (200, 204)
    assert not (media_dir / "inputs" / task["id"]).exists() and not (media_dir / "outputs" / task["id"]).exists()


def test_without_media_dir_the_files_stay_in_data_dir(app, client):
    made = client.post("/generate_image", json={"image": PICTURE}).get_json()
    record = app.extensions["task_store"].get(made["task_id"])
    assert (Path(app.config["DATA_DIR"]) / record["inputs"][0]["path"]).is_file()
