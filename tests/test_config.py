"""Settings: one typed object, from defaults, .env, the environment and overrides, checked once."""

import subprocess
import sys
from pathlib import Path

import pytest

from config import SettingsError, load_settings
from task_backup import take_backup
from task_store import TaskStore

ROOT = Path(__file__).resolve().parent.parent


def test_precedence_defaults_then_env_file_then_environment_then_overrides(tmp_path, monkeypatch):
    env_file = tmp_path / "studio.env"
    env_file.write_text("APP_PORT=6000\nPOLL_INTERVAL_SECONDS=2.5\nBACKUP_KEEP=3\nSESSION_COOKIE_SECURE=yes\n"
                        "NOT_A_SETTING=x\nKLING_API_BASE=\n")
    monkeypatch.setenv("DOTENV_PATH", str(env_file))
    monkeypatch.setenv("BACKUP_KEEP", "7")
    settings, extra = load_settings({"APP_PORT": 7000, "WTF_CSRF_ENABLED": False})
    assert settings.APP_PORT == 7000 and settings.BACKUP_KEEP == 7 and settings.POLL_INTERVAL_SECONDS == 2.5
    assert settings.SESSION_COOKIE_SECURE is True and settings.KLING_API_BASE is None
    assert settings.APP_HOST == "127.0.0.1" and extra == {"WTF_CSRF_ENABLED": False}


@pytest.mark.parametrize(("name", "value"), [("APP_PORT", "http"), ("APP_PORT", "70000"),
                                              ("SESSION_COOKIE_SECURE", "maybe"), ("BACKUP_KEEP", "0"),
                                              ("KLING_MAX_CONCURRENCY", "-1")])
def test_a_bad_value_stops_the_start_naming_the_setting(tmp_path, monkeypatch, name, value):
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "none.env"))
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings()


def test_the_app_reads_typed_values(app):
    assert isinstance(app.config["POLL_INTERVAL_SECONDS"], float) and isinstance(app.config["APP_PORT"], int)
    assert app.config["ALLOW_PRIVATE_URLS"] is False and app.config["TRUSTED_PROXIES"] == 0


@pytest.mark.slow
def test_flask_backup_commands_use_the_apps_settings(tmp_path):
    env = {"DATA_DIR": str(tmp_path / "data"), "BACKUP_DIR": str(tmp_path / "b"), "DOTENV_PATH": str(tmp_path / "x"),
           "ADMIN_PASSWORD": "a long admin secret", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    flask = [sys.executable, "-m", "flask", "--app", "app:create_app", "backup"]

    def run(*args):
        return subprocess.run([*flask, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run("list").returncode == 0
    backup = take_backup(TaskStore(tmp_path / "data"), tmp_path / "b")
    assert backup.name in run("list").stdout
    verified = run("verify", str(backup))
    assert verified.returncode == 0 and "OK, 0 tasks" in verified.stdout, verified.stderr
    assert run("verify", str(tmp_path / "nothing.jsonl.gz")).returncode == 1
    assert not (tmp_path / "data" / "scheduler.lock").exists()       # a command never runs the pipeline
