"""Settings: every documented name parses, a bad value is one clear line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from service.config import Settings, SettingsError, load_settings

ROOT = Path(__file__).parent.parent


def compose_variables() -> set[str]:
    """The variables the Docker Compose stack requires (`${NAME:?message}` in its files)."""
    text = (ROOT / "docker-compose.yml").read_text() + (ROOT / "ops/grafana/grafana.env").read_text()
    return set(re.findall(r"\$\{([A-Z_]+):\?", text))


def test_env_example_lists_every_setting_and_nothing_else():
    """Every setting of the service, and the variables the Compose stack requires."""
    listed = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert compose_variables() == {"MYSQL_PASSWORD", "MYSQL_ROOT_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}
    assert listed == set(Settings.model_fields) | compose_variables()


def test_env_example_values_are_the_defaults(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    assert load_settings() == Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("PORT", "http", "PORT"),
        ("PORT", "70000", "PORT"),
        ("DATABASE_URL", "postgres://x/y", "unknown database URL scheme"),
        ("DATABASE_URL", "mysql://h:3306/", "needs a database name"),
        ("TLINK_SYNC_USER_IDS", "385,abc", "TLINK_SYNC_USER_IDS"),
        ("TLINK_SYNC_PAGE_SIZE", "500", "TLINK_SYNC_PAGE_SIZE"),
        ("TLINK_SYNC_INTERVAL_SECONDS", "1", "TLINK_SYNC_INTERVAL_SECONDS"),
        ("USE_HTTPS", "maybe", "USE_HTTPS"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT"),
    ],
)
def test_a_bad_value_names_the_setting(monkeypatch, name, value, fragment):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=fragment) as caught:
        load_settings()
    assert "\n" not in str(caught.value)


def test_lists_are_comma_separated(monkeypatch):
    monkeypatch.setenv("TLINK_SYNC_USER_IDS", "121025, 385")
    monkeypatch.setenv("API_KEYS", "a,b")
    settings = load_settings()
    assert settings.TLINK_SYNC_USER_IDS == [121025, 385] and settings.API_KEYS == ["a", "b"]


def test_start_up_with_a_bad_setting_prints_one_line_and_no_traceback(tmp_path):
    tlink_push = Path(sys.executable).with_name("tlink-push")
    result = subprocess.run(
        [str(tlink_push), "serve"], cwd=tmp_path, env={"PORT": "abc", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("tlink-push: invalid setting PORT: ")
    assert "Traceback" not in result.stderr
