"""What the studio promises about spending: quotas and per-user limits hold under parallel
requests, across worker processes, and whatever a user deletes afterwards."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from accounts import Accounts
from tests.conftest import ADMIN_KEY, b64, picture, run_pipeline
from tests.live import LiveStudio
from tests.signin import login, make_user

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.mark.parametrize("gunicorn", [False, True], ids=["python-app-py", "gunicorn-2x4"])
def test_twenty_parallel_requests_get_exactly_the_quota(tmp_path, gunicorn):
    with LiveStudio(tmp_path, gunicorn=gunicorn) as studio:
        accounts = Accounts(studio.data_dir)            # the same files the server reads
        user = accounts.create_user("racer", "correct horse battery staple", images_per_day=3)
        key, _ = accounts.create_api_key(user["id"], "race")
        body = {"image": b64(picture(400, 400)), "n": 1}

        def one(_):
            return requests.post(studio.url("/generate_image"), json=body, timeout=60,
                                 headers={"Authorization": f"Bearer {key}"}).status_code
        with ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(one, range(20)))
        assert sorted(codes) == [202] * 3 + [429] * 17, codes
        listed = requests.get(studio.url("/api/tasks"), headers=ADMIN, timeout=10).json()
        assert listed["total"] == 3


def test_deleting_tasks_gives_no_quota_back(app, client, png_b64):
    headers = make_user(app, "dana", images_per_day=2)
    ids = [client.post("/generate_image", json={"image": png_b64, "n": 1}, headers=headers).get_json()["task_id"]
           for _ in range(2)]
    for task_id in ids:
        assert run_pipeline(app, task_id)["status"] == "succeeded"
        assert client.delete(f"/api/tasks/{task_id}", headers=headers).status_code == 204
    refused = client.post("/generate_image", json={"image": png_b64, "n": 1}, headers=headers)
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "quota_exceeded"
    assert "resets" in refused.get_json()["error"]["message"]
    me = client.get("/api/me", headers=headers).get_json()
    assert me["usage"]["images"] == {"used": 2, "limit": 2, "left": 0}


def test_daily_quota_counts_images_and_videos_apart(app, client, png_b64):
    headers = make_user(app, "erin", videos_per_day=1, images_per_day=3)
    assert client.post("/generate", json={"image": png_b64}, headers=headers).status_code == 202
    assert client.post("/generate", json={"image": png_b64}, headers=headers).status_code == 429
    assert client.post("/generate_image", json={"image": png_b64, "n": 2}, headers=headers).status_code == 202
    assert client.post("/generate_image", json={"image": png_b64, "n": 2}, headers=headers).status_code == 429
    assert client.post("/generate_image", json={"image": png_b64, "n": 1}, headers=headers).status_code == 202


def test_a_task_cancelled_before_any_provider_saw_it_costs_nothing(app, client, png_b64):
    headers = make_user(app, "fay", videos_per_day=1)
    task_id = client.post("/generate", json={"image": png_b64}, headers=headers).get_json()["task_id"]
    assert client.post(f"/api/tasks/{task_id}/cancel", headers=headers).status_code == 200
    assert client.post("/generate", json={"image": png_b64}, headers=headers).status_code == 202
    # A second cancel of the same task never refunds twice.
    assert client.post(f"/api/tasks/{task_id}/cancel", headers=headers).status_code == 409
    assert client.post("/generate", json={"image": png_b64}, headers=headers).status_code == 429


def test_retry_is_charged_like_a_new_task(app, client, png_b64):
    headers = make_user(app, "gus", videos_per_day=1)
    task_id = client.post("/generate", json={"image": png_b64}, headers=headers).get_json()["task_id"]
    assert run_pipeline(app, task_id)["status"] == "succeeded"
    refused = client.post(f"/api/tasks/{task_id}/retry", headers=headers)
    assert refused.status_code == 429


def test_tasks_in_flight_are_capped_per_user(app, client, png_b64):
    headers = make_user(app, "hal", max_in_flight=1)
    first = client.post("/generate", json={"image": png_b64}, headers=headers)
    assert first.status_code == 202
    second = client.post("/generate", json={"image": png_b64}, headers=headers)
    assert second.status_code == 429 and second.get_json()["error"]["code"] == "too_many_in_flight"
    assert run_pipeline(app, first.get_json()["task_id"])["status"] == "succeeded"
    assert client.post("/generate", json={"image": png_b64}, headers=headers).status_code == 202


def test_longest_video_and_largest_side_are_enforced_at_submit(tmp_path, monkeypatch):
    from app import create_app

    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "none.env"))
    # DashScope is configured but never called: limits are checked before anything is created.
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "d"), "DASHSCOPE_API_KEY": "sk-x",
                      "DASHSCOPE_API_BASE": "http://127.0.0.1:9"})
    client = app.test_client()
    headers = make_user(app, "ivy", max_duration=5, max_resolution=1280)
    image = b64(picture(640, 400))
    long = client.post("/generate", json={"image": image, "duration": "10"}, headers=headers)
    assert long.status_code == 403 and long.get_json()["error"] == {
        "code": "limit_exceeded", "field": "duration", "message": "Your account allows videos of at most 5 s.",
        "params": {"max": 5}}
    big = client.post("/generate", json={"image": image, "provider": "dashscope", "model_name": "wan2.2-i2v-flash",
                                         "mode": "1080P"}, headers=headers)
    assert big.status_code == 403 and big.get_json()["error"]["field"] == "mode"
    ok = client.post("/generate", json={"image": image, "provider": "dashscope", "model_name": "wan2.2-i2v-flash",
                                        "mode": "720P"}, headers=headers)
    assert ok.status_code == 202
    assert len(app.extensions["task_store"]) == 1


def test_the_admin_edits_limits_and_sees_spend(app, client, png_b64):
    headers = make_user(app, "jo", images_per_day=1)
    user_id = app.extensions["accounts"].user_by_name("jo")["id"]
    assert client.post("/generate_image", json={"image": png_b64}, headers=headers).status_code == 202
    assert client.patch(f"/api/users/{user_id}", json={"images_per_day": 2}, headers=headers).status_code == 403
    changed = client.patch(f"/api/users/{user_id}", json={"images_per_day": 2, "max_in_flight": 5})
    assert changed.status_code == 200 and changed.get_json()["limits"]["images_per_day"] == 2
    assert changed.get_json()["limits"]["videos_per_day"] is None         # fields not sent stay
    assert client.patch(f"/api/users/{user_id}", json={"images_per_day": "2"}).status_code == 400
    assert client.patch("/api/users/u-nobody", json={"images_per_day": 2}).status_code == 404
    row = next(u for u in client.get("/api/users").get_json()["users"] if u["id"] == user_id)
    assert row["usage"]["images"]["used"] == 1
    assert client.post("/generate_image", json={"image": png_b64}, headers=headers).status_code == 202


def test_the_account_page_shows_what_is_left_today(app, png_b64):
    make_user(app, "kit", images_per_day=4)
    browser = login(app, "kit")
    page = browser.get("/account").get_data(as_text=True)
    assert "Left today: 4 images, videos without limit" in page
