"""The OpenAPI document: valid 3.1, built from the models that validate requests, and honoured by the
API under a property-based run (Schemathesis); /docs serves Swagger UI with no inline script."""

import re
import time

import pytest
import schemathesis
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import GenerationMode, checks

import health
from api import models
from tests.conftest import ADMIN_KEY, b64, picture, run_pipeline

EXAMPLES = 25           # per operation: about 10 s for the whole run, most of it drawing the cases


@pytest.fixture
def document(app):
    resp = FlaskClient(app, app.response_class).get("/openapi.json")     # public: no credentials
    assert resp.status_code == 200
    return resp.get_json()


def test_the_document_is_valid_openapi_3_1(document):
    validate(document)
    assert document["openapi"].startswith("3.1")


def test_the_document_is_built_from_the_request_models(document):
    schemas = document["components"]["schemas"]
    paths = document["paths"]
    for path, model in (("/api/v1/videos/generate", models.V1VideoRequest),
                        ("/api/v1/images/generate", models.V1ImageRequest),
                        ("/api/v1/tasks/", models.ImageServiceRequest)):
        ref = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{model.__name__}"
        assert set(schemas[model.__name__]["properties"]) == set(model.model_fields)
        assert schemas[model.__name__]["additionalProperties"] is False       # unknown fields are refused
        names = {p["name"] for p in paths[path]["post"]["parameters"]}
        assert "Idempotency-Key" in names
    # Every v1 route of the app is in the document, and the health check needs no key.
    assert {"/api/v1/tasks", "/api/v1/tasks/{task_id}", "/api/v1/tasks/{task_id}/result",
            "/api/v1/health"} <= set(paths)
    assert paths["/api/v1/health"]["get"]["security"] == []
    assert "`processing` (submitted, running, downloading)" in " ".join(document["info"]["description"].split())


@pytest.mark.slow
def test_property_based_run_finds_no_500_and_every_answer_matches_its_schema(app):
    client = app.test_client()
    picture_body = {"image": b64(picture(400, 320, seed=5), "image/png"), "model_name": "local-filters"}
    done = client.post("/api/v1/images/generate", json=picture_body).get_json()["task_id"]
    run_pipeline(app, done)
    queued = client.post("/api/v1/images/generate", json=picture_body).get_json()["task_id"]
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    wanted = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
              checks.response_schema_conformance]
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 22         # 12, and the 10 of the batches (api/batches.py)

    for operation in operations:
        # Valid and invalid input, and for the task routes real tasks too (a finished one; a queued
        # one to delete, so the others still find theirs), besides ids that do not exist.
        strategies = [operation.as_strategy(), operation.as_strategy(GenerationMode.NEGATIVE)]
        if "{task_id}" in operation.path:
            task_id = queued if operation.method == "delete" else done
            strategies.append(operation.as_strategy(path_parameters={"task_id": task_id}))

        @given(case=st.one_of(strategies))
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            # A pipeline is alive (beating before every call: the run outlasts a heartbeat's 30 s on
            # a slow machine); /api/v1/health's 503 is not the run's subject.
            health.beat(app.config["DATA_DIR"])
            case.call_and_validate(headers=headers, checks=wanted)
        run()
    assert time.monotonic() - started < 60


def test_docs_page_runs_swagger_ui_from_the_studio_with_no_inline_script(app):
    resp = FlaskClient(app, app.response_class).get("/docs")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert [body.strip() for _, body in scripts] == ["", "", ""]
    sources = [re.search(r'src="([^"]+)"', attrs).group(1) for attrs, _ in scripts]
    assert sources == ["/static/js/theme.js", "/static/vendor/swagger-ui-5.35.0/swagger-ui-bundle.js",
                       "/static/js/docs.js"]
    for source in sources:
        with app.test_client().get(source) as served:
            assert served.status_code == 200
    assert 'data-spec-url="/openapi.json"' in html
