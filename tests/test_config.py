"""Settings: every documented name parses, a bad value is one clear line."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

from projections.db import mysql_url, parse_database_url
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
        ("BUS_URL", "nats://h1:4222,http://h2:4222", "'http://h2:4222' is not a nats://"),
        ("BUS_PARTITIONS", "0", "BUS_PARTITIONS"),
        ("NODE_ROLE", "reader", "NODE_ROLE"),
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


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("ssl_mode=REQUIRED", "unknown mysql URL parameter 'ssl_mode'"),
        ("ssl-mode=SOMETIMES", "ssl-mode='SOMETIMES' is not one of DISABLED, PREFERRED"),
        ("ssl-mode=VERIFY_CA&ssl-ca=no-such-ca.pem", "ssl-ca: no file at no-such-ca.pem"),
        ("ssl-mode=DISABLED&ssl-ca=ca.pem", "ssl-ca is only used with ssl-mode=VERIFY_CA or VERIFY_IDENTITY"),
        ("ssl-ca=ca.pem", "ssl-ca is only used with"),
        ("ssl-mode=REQUIRED&ssl-key=ca.pem", "ssl-key needs ssl-cert"),
        ("ssl-mode=PREFERRED&ssl-cert=ca.pem", "ssl-cert and ssl-key need ssl-mode=REQUIRED"),
        ("ssl-mode=VERIFY_CA&ssl-ca=not-pem.txt", "the TLS files of the mysql URL cannot be used"),
        ("ssl-mode=REQUIRED&ssl-mode=DISABLED", "ssl-mode is given twice"),
    ],
)
def test_bad_tls_parameters_of_the_database_url_stop_start_up(monkeypatch, tmp_path, query, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ca.pem").write_text("")
    (tmp_path / "not-pem.txt").write_text("not a certificate\n")
    monkeypatch.setenv("DATABASE_URL", f"mysql://tlink:s3cret-pw@db:3306/tlink?{query}")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("invalid setting DATABASE_URL: ") and fragment in message
    assert "\n" not in message and "s3cret-pw" not in message


def test_database_password_replaces_the_urls_and_needs_no_escaping(monkeypatch):
    password = "p/#?%@:w 'x"
    monkeypatch.setenv("DATABASE_URL", "mysql://tlink:old@mysql:3306/tlink?ssl-mode=REQUIRED")
    monkeypatch.setenv("DATABASE_PASSWORD", password)
    database = load_settings().database
    assert (database.user, database.password, database.host, database.database) == ("tlink", password, "mysql", "tlink")
    assert database.ssl_mode == "REQUIRED" and password not in repr(database)


def test_a_percent_encoded_password_in_the_url_keeps_working(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "mysql://tlink:p%2F%23%3F%25%40:w@mysql:3306/tlink")
    monkeypatch.delenv("DATABASE_PASSWORD", raising=False)
    assert load_settings().database.password == "p/#?%@:w"


@pytest.mark.parametrize("password", ["secretpw/x", "secretpw#x", "secretpw?x", "secretpw:x/y"])
def test_an_unescaped_password_in_the_url_is_a_clear_error_that_does_not_show_it(monkeypatch, password):
    monkeypatch.setenv("DATABASE_URL", f"mysql://tlink:{password}@mysql:3306/tlink")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("invalid setting DATABASE_URL: ") and "percent-encode" in message
    assert "secretpw" not in message


@pytest.mark.parametrize("command", [["tlink-push"], [sys.executable, "-m", "service"]])
def test_version_and_python_dash_m_service(command, tmp_path):
    if command == ["tlink-push"]:
        command = [str(Path(sys.executable).with_name("tlink-push"))]
    version = importlib.metadata.version("tlink-push")
    done = subprocess.run([*command, "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == f"tlink-push {version}"
    # python -m service is the same command line: the same bad setting gives the same one line and status.
    env = {"PORT": "abc", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([*command, "verify"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stderr.startswith("tlink-push: invalid setting PORT: ")


def test_another_database_of_the_same_server_keeps_user_password_and_tls():
    server = parse_database_url("mysql://tlink@db:3307/x?ssl-mode=REQUIRED", password="p/#?%@:w")
    other = parse_database_url(mysql_url(server, "tlink_2"))
    assert (other.user, other.password, other.host, other.port) == ("tlink", "p/#?%@:w", "db", 3307)
    assert other.database == "tlink_2"
    assert other.ssl_mode == "REQUIRED"
    assert mysql_url(parse_database_url("mysql://root@127.0.0.1:3306/test"), "t2") == "mysql://root@127.0.0.1:3306/t2"
