"""The smallest picture side is the chosen model's: Wan takes first and tail frames down to
240 px (its documented minimum, scaled up before sending), Kling and every model that documents
nothing keep the studio's 300 px, and a refusal names the field."""

import pytest

import media
from app import create_app
from providers.capabilities import STUDIO_MIN_SIDE
from tests.conftest import b64, picture

WAN_I2V, WAN_KF2V = "wan2.2-i2v-flash", "wan2.2-kf2v-flash"


@pytest.fixture
def client(tmp_path, monkeypatch):
    """Kling and DashScope configured (nothing is sent: these tests stop at the queue)."""
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no.env"))
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "t",
                      "KLING_ACCESS_KEY": "ak-test", "KLING_SECRET_KEY": "sk-test",
                      "DASHSCOPE_API_KEY": "sk-dashscope-test",
                      "KLING_API_BASE": "http://127.0.0.1:9", "DASHSCOPE_API_BASE": "http://127.0.0.1:9"})
    return app.test_client()


def frame(width, height, seed=1):
    return b64(picture(width, height, seed=seed), "image/png")


def video(client, provider, model, **body):
    return client.post("/generate", json={"provider": provider, "model_name": model, "prompt": "a slow pan",
                                          **body})


def test_studio_default_is_medias_minimum():
    assert STUDIO_MIN_SIDE == media.MIN_SIDE == 300


def test_capabilities_name_wans_minimum_and_leave_it_out_elsewhere(client):
    providers = {p["name"]: p for p in client.get("/api/capabilities").get_json()["providers"]}
    wan = {m["id"]: m for m in providers["dashscope"]["models"]}
    assert wan[WAN_I2V]["min_side"] == 240 and wan[WAN_KF2V]["min_side"] == 240
    assert "min_side" not in wan["wan2.6-t2v"]          # takes no picture
    assert all("min_side" not in m for m in providers["kling"]["models"])


def test_wan_takes_a_240_px_first_frame(client):
    resp = video(client, "dashscope", WAN_I2V, image=frame(240, 400), mode="480P", duration="5")
    assert resp.status_code == 202, resp.get_json()
    task = client.get(f"/api/tasks/{resp.get_json()['task_id']}").get_json()
    assert (task["inputs"][0]["width"], task["inputs"][0]["height"]) == (240, 400)


def test_wan_takes_a_240_px_tail_frame(client):
    resp = video(client, "dashscope", WAN_KF2V, image=frame(400, 400), image_tail=frame(400, 240, seed=2),
                 mode="480P", duration="5")
    assert resp.status_code == 202, resp.get_json()


def test_wan_refuses_below_its_minimum(client):
    resp = video(client, "dashscope", WAN_I2V, image=frame(239, 400), mode="480P", duration="5")
    assert resp.status_code == 422
    error = resp.get_json()["error"]
    assert (error["code"], error["field"]) == ("image_too_small", "image")
    assert "at least 240 px" in error["message"]


def test_kling_refuses_a_240_px_first_frame_naming_the_field(client):
    resp = video(client, "kling", "kling-v1-6", image=frame(240, 400), mode="std", duration="5")
    assert resp.status_code == 422
    error = resp.get_json()["error"]
    assert (error["code"], error["field"]) == ("image_too_small", "image")
    assert "at least 300 px" in error["message"] and "240×400" in error["message"]


def test_kling_refuses_a_240_px_tail_frame_naming_the_field(client):
    resp = video(client, "kling", "kling-v1-6", image=frame(400, 400), image_tail=frame(240, 400, seed=2),
                 mode="pro", duration="5")
    assert resp.status_code == 422
    assert resp.get_json()["error"]["field"] == "image_tail"


def test_a_model_that_documents_nothing_keeps_the_studio_minimum(client):
    resp = video(client, "local", "local-motion", image=frame(250, 400), duration="5")
    assert resp.status_code == 422 and "at least 300 px" in resp.get_json()["error"]["message"]
    resp = client.post("/generate_image", json={"provider": "local", "image": frame(250, 400), "n": 1})
    assert resp.status_code == 422 and resp.get_json()["error"]["field"] == "image"
    assert video(client, "local", "local-motion", image=frame(300, 400), duration="5").status_code == 202
