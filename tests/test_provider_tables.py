"""The providers' capability tables: typed, unchanged as JSON, and translated where they are defined."""

import json
import re
from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from providers import build_providers
from providers.capabilities import ImageModel, VideoModel, model_from_dict

ROOT = Path(__file__).resolve().parent.parent
# GET /api/capabilities of these providers as the untyped tables served it, captured once from the
# code before the tables were typed (`configured` left out: it depends on the keys).
EXPECTED = json.loads((Path(__file__).parent / "capabilities_expected.json").read_text())


def tables(tmp_path):
    return {name: provider.capabilities() for name, provider in build_providers({"DATA_DIR": str(tmp_path)}).items()}


def test_api_json_is_what_the_untyped_tables_served(app):
    served = {p["name"]: p for p in app.test_client().get("/api/capabilities").get_json()["providers"]}
    for name, expected in EXPECTED.items():
        assert {k: v for k, v in served[name].items() if k != "configured"} == expected, name


def test_every_table_entry_round_trips_through_its_type(tmp_path):
    for name, table in tables(tmp_path).items():     # the local engine's untyped table included
        for model in table["models"]:
            typed = model_from_dict(model)
            assert isinstance(typed, VideoModel if model["kind"] == "video" else ImageModel), name
            assert typed.as_dict() == model, (name, model["id"])


def test_left_out_options_read_as_their_documented_defaults(tmp_path):
    kling = {m["id"]: model_from_dict(m) for m in tables(tmp_path)["kling"]["models"] if m["kind"] == "video"}
    assert "mode_label" not in kling["kling-v1-6"].as_dict()
    assert kling["kling-v1-6"].option("mode_label") == "Mode"
    assert kling["kling-v1-6"].option("max_negative_prompt") == kling["kling-v1-6"].max_prompt
    assert kling["kling-v1-6"].option("camera_combos") == kling["kling-v1-6"].combos
    assert kling["kling-v1"].option("camera_with_tail") is False
    assert kling["kling-v2-master"].option("mode_label") == "Quality (one level)"


def test_every_text_marked_in_providers_has_its_chinese():
    with open(ROOT / "translations/zh/LC_MESSAGES/messages.po", "rb") as f:
        translated = {m.id: m.string for m in read_po(f) if m.id}
    marked = {message for _file, _line, message, _comments, _context in
              extract_from_dir(ROOT / "providers", [("**.py", "python")])}
    assert {"Kling (official API)", "Resolution", "302.ai (Kling and Wan)"} <= marked
    assert sorted(m for m in marked if not translated.get(m)) == [], "run the pybabel steps in babel.cfg"


def test_pages_get_the_providers_texts_in_their_language(app):
    html = app.test_client().get("/", headers={"Accept-Language": "zh"}).get_data(as_text=True)
    block = re.search(r'<script type="application/json" id="studio-config">(.*?)</script>', html, re.S)
    catalog = json.loads(block.group(1))["catalog"]
    assert catalog["Kling (official API)"] == "可灵（官方 API）"
    assert catalog["Resolution"] == "分辨率" and catalog["Quality (one level)"] == "质量（仅一档）"
    assert catalog["Aliyun DashScope (Wan)"] == "阿里云 DashScope（万相）"
    # The template's own entries are still there.
    assert catalog["zoom_in"] and catalog["Local effects engine"] != "Local effects engine"
