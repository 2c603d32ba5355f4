"""Logging setup (text and JSON lines) and masking of secrets."""

from __future__ import annotations

import json
import logging
import re

import pytest

from service.logs import describe_settings, mask_secret, setup_logging

pytestmark = pytest.mark.usefixtures("restore_logging")

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (?P<level>[A-Z]+) (?P<rest>.*)$"
)


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_json_lines_carry_core_fields_and_extras(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging("json")

    logging.getLogger("tlink.sync").info(
        "sync done", extra={"devices": 5, "user": "a b"}
    )
    logging.getLogger("tlink.push").warning("late reading %s", "x\ny")

    first, second = (json.loads(line) for line in _lines(capsys))
    assert first == {
        "ts": first["ts"],
        "level": "INFO",
        "logger": "tlink.sync",
        "msg": "sync done",
        "devices": 5,
        "user": "a b",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert second["msg"] == "late reading x\ny", "newlines stay inside one JSON line"
    assert second["level"] == "WARNING"


def test_json_keeps_exceptions_and_odd_values_on_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging("json")
    log = logging.getLogger("tlink.projector")

    try:
        raise RuntimeError("projector stopped")
    except RuntimeError:
        log.exception("failed", extra={"path": object(), "msg_": 1, "level_": "x"})

    (line,) = _lines(capsys)
    record = json.loads(line)
    assert record["level"] == "ERROR"
    assert "RuntimeError: projector stopped" in record["exc"]
    assert record["path"].startswith("<object object")


def test_extra_cannot_overwrite_core_json_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging("json")

    logging.getLogger("tlink").info("real", extra={"ts": "fake", "logger": "fake"})

    record = json.loads(_lines(capsys)[0])
    assert record["logger"] == "tlink"
    assert record["ts"] != "fake"
    assert record["ts_"] == "fake"
    assert record["logger_"] == "fake"


def test_text_lines_append_extras_as_key_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging("text")

    logging.getLogger("tlink.sync").info(
        "sync done", extra={"devices": 5, "user": "a b", "ok": True, "ids": [1, 2]}
    )

    (line,) = _lines(capsys)
    match = TEXT_LINE.match(line)
    assert match, line
    assert match["level"] == "INFO"
    assert (
        match["rest"] == 'tlink.sync sync done devices=5 user="a b" ok=true ids=[1,2]'
    )


def test_text_lines_show_tracebacks(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging()

    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logging.getLogger("tlink").exception("boom")

    lines = _lines(capsys)
    assert TEXT_LINE.match(lines[0])
    assert lines[0].endswith("tlink boom")
    assert lines[-1] == "ZeroDivisionError: division by zero"


def test_level_filters_and_accepts_any_case(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("text", level="warning")

    logging.getLogger("tlink").info("hidden")
    logging.getLogger("tlink").warning("shown")

    lines = _lines(capsys)
    assert len(lines) == 1
    assert lines[0].endswith("WARNING tlink shown")


@pytest.mark.parametrize(("fmt", "level"), [("xml", "INFO"), ("text", "LOUD")])
def test_bad_format_or_level_is_a_clear_error(fmt: str, level: str) -> None:
    with pytest.raises(ValueError, match=r"xml|LOUD"):
        setup_logging(fmt, level)


def test_calling_twice_does_not_duplicate_output(
    capsys: pytest.CaptureFixture[str],
) -> None:
    foreign = logging.NullHandler()
    logging.getLogger().addHandler(foreign)
    setup_logging("text")
    setup_logging("json")
    setup_logging("json")

    logging.getLogger("tlink").info("once")

    lines = _lines(capsys)
    assert len(lines) == 1
    assert json.loads(lines[0])["msg"] == "once", "the last call's format wins"
    assert foreign in logging.getLogger().handlers, "handlers set up by others stay"


def test_access_log_is_silent_unless_enabled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    access = logging.getLogger("aiohttp.access")

    setup_logging("text")
    access.info("GET /api/health 200")
    assert _lines(capsys) == []

    setup_logging("text", access_log=True)
    access.info("GET /api/health 200")
    assert [line.split(" ", 2)[2] for line in _lines(capsys)] == [
        "aiohttp.access GET /api/health 200"
    ]


def test_access_log_warnings_still_show(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("text")

    logging.getLogger("aiohttp.access").warning("odd request")

    assert len(_lines(capsys)) == 1


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        (None, ""),
        ("", ""),
        ("s3cr3t", "****"),
        ("a", "****"),
        ("mysql://user:pass@host/db", "mysql://user:****@host/db"),
        (
            "mysql://tlink:p@ss:w0rd@mysql:3306/tlink",
            "mysql://tlink:****@mysql:3306/tlink",
        ),
        ("mysql://user@host/db", "mysql://user@host/db"),
        ("sqlite:///data/tlink.db", "sqlite:///data/tlink.db"),
        ("sqlite:////abs/tlink.db", "sqlite:////abs/tlink.db"),
        ("https://h/cb?token=abc&page=2", "https://h/cb?token=****&page=2"),
        ("http://[bad", "****"),
    ],
)
def test_mask_secret(value: str | None, masked: str) -> None:
    assert mask_secret(value) == masked


def test_masked_values_never_contain_the_secret() -> None:
    for secret in ("hunter2", "tlinkpass"):
        assert secret not in mask_secret(secret)
        assert secret not in mask_secret(f"mysql://tlink:{secret}@mysql:3306/tlink")


def test_describe_settings_is_one_line_with_secrets_masked() -> None:
    class SecretStr:  # the shape of pydantic's SecretStr
        def get_secret_value(self) -> str:
            return "from-secret-str"

    line = describe_settings(
        {
            "PORT": 5000,
            "USE_HTTPS": True,
            "DATABASE_URL": "mysql://tlink:tlinkpass@mysql:3306/tlink",
            "PUSH_WEBHOOK_SECRET": "hmac-key",
            "WEBHOOK_TOKEN": None,
            "API_KEYS": ["k1", "k2"],
            "SECRET_KEY": SecretStr(),
            "CORS_ALLOWED_ORIGINS": ["https://a.example", "https://b.example"],
            "SYNC_LOG_DIR": "my logs",
        },
        {
            "DATABASE_URL",
            "PUSH_WEBHOOK_SECRET",
            "WEBHOOK_TOKEN",
            "API_KEYS",
            "secret_key",
        },
    )

    assert "\n" not in line
    assert line == (
        "PORT=5000 USE_HTTPS=true DATABASE_URL=mysql://tlink:****@mysql:3306/tlink"
        " PUSH_WEBHOOK_SECRET=**** WEBHOOK_TOKEN= API_KEYS=**** SECRET_KEY=****"
        " CORS_ALLOWED_ORIGINS=https://a.example,https://b.example"
        ' SYNC_LOG_DIR="my logs"'
    )
    for secret in ("tlinkpass", "hmac-key", "k1", "from-secret-str"):
        assert secret not in line


SECRETS = {
    "DATABASE_URL": "mysql://tlink:db-pass-123@mysql:3306/tlink",
    "SECRET_KEY": "secret-key-456",
    "PUSH_WEBHOOK_SECRET": "hmac-secret-789",
    "WEBHOOK_TOKEN": "push-token-abc",
    "API_KEYS": "api-key-one,api-key-two",
    "TLINK_OAUTH_CLIENT_SECRET": "client-secret-def",
    "TLINK_OAUTH_PASSWORD": "oauth-pass-ghi",
    "DATABASE_PASSWORD": "db/pass#?jkl",
}


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_start_up_line_names_the_effective_settings_with_secrets_masked(
    fmt: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    from service.config import load_settings
    from service.http import server

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(server.web, "run_app", lambda app, **kwargs: None)
    setup_logging(fmt)
    assert server.run_server(load_settings(USE_HTTPS=False, PORT=5123)) == 0

    err = capsys.readouterr().err
    [start] = [line for line in err.splitlines() if "starting:" in line]
    for secret in ("db-pass-123", "secret-key-456", "hmac-secret-789", "push-token-abc", "api-key-one",
                   "client-secret-def", "oauth-pass-ghi", "db/pass#?jkl", "jkl"):  # fmt: skip
        assert secret not in err
    message = json.loads(start)["msg"] if fmt == "json" else start
    assert "DATABASE_URL=mysql://tlink:****@mysql:3306/tlink" in message
    for name in ("SECRET_KEY", "PUSH_WEBHOOK_SECRET", "WEBHOOK_TOKEN", "API_KEYS", "TLINK_OAUTH_PASSWORD",
                 "DATABASE_PASSWORD"):  # fmt: skip
        assert f"{name}=****" in message
    assert "PORT=5123" in message and "USE_HTTPS=false" in message
    assert re.search(r"TLINK_SYNC_USER_IDS=(\s|$)", message)  # an empty list shows as empty, like other unset values


@pytest.mark.parametrize(("level", "shown"), [("INFO", False), ("DEBUG", True)])
def test_scheduler_chatter_only_shows_at_debug(
    level: str, shown: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("text", level)
    logging.getLogger("apscheduler.executors.default").info("Running job x")
    logging.getLogger("apscheduler.scheduler").warning("job missed")
    err = capsys.readouterr().err
    assert ("Running job x" in err) is shown
    assert "job missed" in err
