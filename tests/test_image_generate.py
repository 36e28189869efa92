"""POST /generate_image: every validation rule with a good and a bad case."""

import pytest

from tests.conftest import b64, picture
from tests.test_video_extend import assert_error, nothing_stored


def post(client, **body):
    return client.post("/generate_image", json=body)


def test_reference_picture_request_is_queued(app, client, png_b64):
    resp = post(client, image=png_b64, prompt="watercolour", aspect_ratio="16:9", n=3, image_fidelity=0.7)
    assert resp.status_code == 202
    task = app.extensions["task_store"].get(resp.get_json()["task_id"])
    assert task["kind"] == "image" and task["model"] == "local-filters"
    assert task["params"]["n"] == 3 and task["params"]["image_fidelity"] == 0.7
    assert [i["role"] for i in task["inputs"]] == ["reference"]


def test_local_engine_needs_a_reference_picture(app, client):
    resp = post(client, prompt="a castle at dusk")
    assert_error(resp, 400, "image", "image_required")
    assert "reference picture" in resp.get_json()["error"]["message"]
    assert nothing_stored(app)


@pytest.mark.parametrize("ratio", ["16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9"])
def test_aspect_ratios_of_the_model(client, png_b64, ratio):
    assert post(client, image=png_b64, aspect_ratio=ratio).status_code == 202


def test_other_aspect_ratios_are_refused(client, png_b64):
    assert_error(post(client, image=png_b64, aspect_ratio="5:4"), 422, "aspect_ratio")


@pytest.mark.parametrize("n,status", [(1, 202), (9, 202), (0, 422), (10, 422)])
def test_n_between_1_and_9(client, png_b64, n, status):
    resp = post(client, image=png_b64, n=n)
    assert resp.status_code == status
    if status != 202:
        assert_error(resp, status, "n")


@pytest.mark.parametrize("value,status", [(0, 202), (1, 202), (1.5, 422), (-0.2, 422)])
def test_image_fidelity_between_0_and_1(client, png_b64, value, status):
    resp = post(client, image=png_b64, image_fidelity=value)
    assert resp.status_code == status
    if status != 202:
        assert_error(resp, status, "image_fidelity")


def test_model_alias(app, client, png_b64):
    resp = post(client, image=png_b64, model="local-filters")
    assert resp.status_code == 202
    assert app.extensions["task_store"].get(resp.get_json()["task_id"])["model"] == "local-filters"
    assert_error(post(client, image=png_b64, model="dall-e"), 422, "model_name")


def test_image_reference_only_where_the_model_has_it(client, png_b64):
    assert_error(post(client, image=png_b64, image_reference="face"), 422, "image_reference")


def test_reference_picture_rules_apply(app, client):
    assert_error(post(client, image=b64(picture(250, 400))), 422, "image", "image_too_small")
    assert_error(post(client, image=b64(picture(fmt="GIF"))), 400, "image")
    assert nothing_stored(app)


def test_prompt_length(client, png_b64):
    assert post(client, image=png_b64, prompt="y" * 2500).status_code == 202
    assert_error(post(client, image=png_b64, prompt="y" * 2501), 422, "prompt")


@pytest.mark.parametrize("field,value", [("n", True), ("n", "3"), ("n", 3.0), ("n", None), ("image_fidelity", True),
                                         ("image_fidelity", "0.5"), ("human_fidelity", False), ("prompt", 5),
                                         ("aspect_ratio", ["1:1"]), ("prompt", "a\u0000b"), ("prompt", "\ud800")])
def test_loose_types_are_refused(app, client, png_b64, field, value):
    # No coercion: `true` is not 1, "3" is not 3, and text holds no control characters.
    assert_error(post(client, image=png_b64, **{field: value}), 400, field, "invalid_field")
    assert nothing_stored(app)


def test_a_whole_number_is_a_fine_fidelity(app, client, png_b64):
    resp = post(client, image=png_b64, image_fidelity=1)
    assert resp.status_code == 202
    assert app.extensions["task_store"].get(resp.get_json()["task_id"])["params"]["image_fidelity"] == 1.0
