"""The self-signed certificate and TLS context, down to a real HTTPS round trip."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import re
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pytest_aiohttp import AiohttpServer

from service.http import tls
from service.http.tls import TlsError, build_ssl_context, ensure_certificate

ROOT = Path(__file__).resolve().parent.parent


def _load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certificate_is_created_once_and_reused(tmp_path: Path) -> None:
    cert_dir = tmp_path / "instance" / "certs"
    cert, key = ensure_certificate(cert_dir)
    first = (cert.read_bytes(), key.read_bytes())

    again = ensure_certificate(cert_dir)

    assert again == (cert_dir / "localhost.crt", cert_dir / "localhost.key")
    assert (cert.read_bytes(), key.read_bytes()) == first
    assert sorted(p.name for p in cert_dir.iterdir() if not p.name.startswith(".")) == [
        "localhost.crt",
        "localhost.key",
    ]
    assert not list(cert_dir.glob("*.tmp")), "no temp files are left behind"


def test_certificate_names_localhost_and_loopback(tmp_path: Path) -> None:
    cert = _load_cert(ensure_certificate(tmp_path)[0])

    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["localhost"]
    assert cert.issuer == cert.subject
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == datetime.timedelta(days=825)
    assert cert.not_valid_before_utc <= datetime.datetime.now(datetime.UTC)


def test_key_is_private_and_matches_the_certificate(tmp_path: Path) -> None:
    cert_path, key_path = ensure_certificate(tmp_path)

    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key() == _load_cert(cert_path).public_key()


def test_pair_with_a_missing_half_is_regenerated(tmp_path: Path) -> None:
    cert_path, key_path = ensure_certificate(tmp_path)
    old_cert = cert_path.read_bytes()
    key_path.unlink()

    ensure_certificate(tmp_path)

    assert key_path.exists()
    assert cert_path.read_bytes() != old_cert
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key() == _load_cert(cert_path).public_key()


def test_expired_certificate_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert_path, _ = ensure_certificate(tmp_path)
    old_cert = cert_path.read_bytes()
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=900)
    monkeypatch.setattr(tls, "_now", lambda: later)

    ensure_certificate(tmp_path)

    assert cert_path.read_bytes() != old_cert
    assert _load_cert(cert_path).not_valid_after_utc > later


def test_unwritable_directory_is_a_tls_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("file in the way")

    with pytest.raises(TlsError, match="not-a-dir"):
        ensure_certificate(blocker / "certs")


def test_plain_http_when_https_is_off(tmp_path: Path) -> None:
    assert build_ssl_context(False, None, None, True, tmp_path / "certs") is None
    assert not (tmp_path / "certs").exists(), "nothing is generated for plain HTTP"


def test_plain_http_when_nothing_configured_and_no_auto_generate(
    tmp_path: Path,
) -> None:
    assert build_ssl_context(True, None, None, False, tmp_path / "certs") is None
    assert not (tmp_path / "certs").exists()


def test_auto_generated_context_is_tls12_or_newer(tmp_path: Path) -> None:
    context = build_ssl_context(True, None, None, True, tmp_path / "certs")

    assert isinstance(context, ssl.SSLContext)
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert (tmp_path / "certs" / "localhost.crt").is_file()


def test_explicit_files_win_over_auto_generation(tmp_path: Path) -> None:
    own_cert, own_key = ensure_certificate(tmp_path / "mine")
    cert_dir = tmp_path / "auto"

    context = build_ssl_context(True, own_cert, own_key, True, cert_dir)

    assert isinstance(context, ssl.SSLContext)
    assert not cert_dir.exists(), "auto-generation must not run when files are given"


@pytest.mark.parametrize("missing", ["cert", "key"])
def test_missing_explicit_file_names_the_file(tmp_path: Path, missing: str) -> None:
    cert, key = ensure_certificate(tmp_path / "mine")
    gone = tmp_path / "nowhere" / f"missing.{missing}"
    cert_file, key_file = (gone, key) if missing == "cert" else (cert, gone)
    setting = "SSL_CERT_FILE" if missing == "cert" else "SSL_KEY_FILE"

    with pytest.raises(TlsError, match=rf"{setting} .*missing\.{missing}"):
        build_ssl_context(True, cert_file, key_file, True, tmp_path / "auto")
    assert not (tmp_path / "auto").exists(), (
        "a bad explicit file is an error, not a fallback"
    )


def test_key_file_without_cert_file_is_an_error(tmp_path: Path) -> None:
    _, key = ensure_certificate(tmp_path)

    with pytest.raises(TlsError, match="SSL_CERT_FILE"):
        build_ssl_context(True, None, key, True, tmp_path / "auto")


def test_mismatched_explicit_pair_is_a_tls_error(tmp_path: Path) -> None:
    cert_a, _ = ensure_certificate(tmp_path / "a")
    _, key_b = ensure_certificate(tmp_path / "b")

    with pytest.raises(TlsError, match="cannot load"):
        build_ssl_context(True, cert_a, key_b, False, tmp_path / "auto")


def _health_app() -> web.Application:
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/api/health", health)
    return app


@pytest.mark.asyncio
async def test_https_round_trip_trusting_the_generated_certificate(
    tmp_path: Path, aiohttp_server: AiohttpServer
) -> None:
    cert_dir = tmp_path / "certs"
    server_context = build_ssl_context(True, None, None, True, cert_dir)
    server = await aiohttp_server(_health_app(), ssl=server_context)
    client_context = ssl.create_default_context(cafile=str(cert_dir / "localhost.crt"))

    for host in ("localhost", "127.0.0.1"):
        url = f"https://{host}:{server.port}/api/health"
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, ssl=client_context) as response,
        ):
            assert response.status == 200
            assert await response.json() == {"status": "ok"}


@pytest.mark.asyncio
async def test_untrusting_client_rejects_the_certificate(
    tmp_path: Path, aiohttp_server: AiohttpServer
) -> None:
    server_context = build_ssl_context(True, None, None, True, tmp_path / "certs")
    server = await aiohttp_server(_health_app(), ssl=server_context)
    strangers = ensure_certificate(tmp_path / "other")[0]
    client_context = ssl.create_default_context(cafile=str(strangers))

    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(
                f"https://127.0.0.1:{server.port}/api/health", ssl=client_context
            )


def _dockerfile_healthcheck() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", "")
    match = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", text, re.MULTILINE)
    assert match, "Dockerfile has an exec-form HEALTHCHECK"
    command: list[str] = json.loads(match.group(1))
    return command


@pytest.mark.asyncio
@pytest.mark.parametrize("use_https", [True, False])
async def test_dockerfile_healthcheck_probes_the_health_endpoint(
    tmp_path: Path, aiohttp_server: AiohttpServer, use_https: bool
) -> None:
    context = build_ssl_context(use_https, None, None, True, tmp_path / "certs")
    server = await aiohttp_server(_health_app(), ssl=context)
    command = _dockerfile_healthcheck()
    assert command[0] == "python"
    env = {**os.environ, "USE_HTTPS": str(use_https).lower(), "PORT": str(server.port)}

    assert await _run([sys.executable, *command[1:]], env) == 0

    await server.close()
    assert await _run([sys.executable, *command[1:]], env) != 0, (
        "a dead server is unhealthy"
    )


async def _run(argv: list[str], env: dict[str, str]) -> int:
    # Run in a thread: the server under test lives on this event loop.
    result = await asyncio.to_thread(
        subprocess.run, argv, env=env, capture_output=True, timeout=30, check=False
    )
    return result.returncode
