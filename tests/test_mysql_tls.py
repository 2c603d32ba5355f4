"""TLS to MySQL/MariaDB and DATABASE_PASSWORD, against a private MariaDB started with certificates made here."""

from __future__ import annotations

import datetime
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ops.private_mariadb import PrivateMariaDB, ServerTls, available, query
from ops.wait_mysql import wait
from projections.db import DatabaseError, DatabaseUnavailable, connect
from service.config import load_settings
from service.http.app import create_app
from service.http.keys import SERVICES
from tests.conftest import MYSQL_URL, fixture_bytes, run_cli

pytestmark = [pytest.mark.mysql, pytest.mark.slow, pytest.mark.skipif(not available(), reason="no mariadbd")]

PASSWORD = "p/#?%@:w 'x\""  # every character a URL would need escaped, and quotes
Key = ec.EllipticCurvePrivateKey


def _write_key(key: Key, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _certificate(
    subject: str, key: Key, issuer: x509.Certificate | None, issuer_key: Key, dns_names: list[str] | None = None
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        usage = dict.fromkeys(["content_commitment", "data_encipherment", "key_agreement", "encipher_only",
                               "decipher_only", "digital_signature", "key_encipherment"], False)  # fmt: skip
        builder = builder.add_extension(x509.KeyUsage(key_cert_sign=True, crl_sign=True, **usage), critical=True)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def make_certificates(folder: Path) -> dict[str, Path]:
    """A test CA, a server certificate it signs for the name `localhost` only (not for 127.0.0.1, so that
    VERIFY_IDENTITY through the address fails), a client certificate it signs, and a second, unrelated CA."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("tlink test CA", ca_key, None, ca_key)
    files["ca"] = _pem(ca, folder / "ca.pem")
    for role, names in (("server", ["localhost"]), ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        _write_key(key, folder / f"{role}-key.pem")
        files[f"{role}-key"] = folder / f"{role}-key.pem"
        files[role] = _pem(_certificate(f"tlink test {role}", key, ca, ca_key, names), folder / f"{role}.pem")
    other_key = ec.generate_private_key(ec.SECP256R1())
    files["other-ca"] = _pem(_certificate("another CA", other_key, None, other_key), folder / "other-ca.pem")
    return files


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, certificates: dict[str, Path]) -> Iterator[PrivateMariaDB]:
    """A private MariaDB offering TLS, with a user `tlink` whose password needs escaping in a URL and a
    user `x509` that must show a client certificate."""
    server = PrivateMariaDB(
        tmp_path_factory.mktemp("tls-mariadb"),
        tls=ServerTls(certificates["ca"], certificates["server"], certificates["server-key"]),
    )
    server.start()
    escaped = PASSWORD.replace("\\", "\\\\").replace("'", "\\'")
    for statement in (
        f"CREATE USER 'tlink'@'%' IDENTIFIED BY '{escaped}'",
        "GRANT ALL ON *.* TO 'tlink'@'%'",
        "CREATE USER 'x509'@'%' REQUIRE X509",
        "GRANT ALL ON *.* TO 'x509'@'%'",
    ):
        server.query(statement)
    yield server
    server.kill()


@pytest.fixture
def secure_only(tls_server: PrivateMariaDB) -> Iterator[PrivateMariaDB]:
    """The TLS server refusing connections without TLS (require_secure_transport) for one test."""
    admin = f"mysql://root@127.0.0.1:{tls_server.port}/tlink?ssl-mode=REQUIRED"
    query(admin, "SET GLOBAL require_secure_transport = ON")
    yield tls_server
    query(admin, "SET GLOBAL require_secure_transport = OFF")


def tls_url(server: PrivateMariaDB, query_string: str, user: str = "tlink", host: str = "127.0.0.1") -> str:
    """A URL to a fresh database of the server, without a password (DATABASE_PASSWORD gives it)."""
    name = f"tlink_{uuid.uuid4().hex[:10]}"
    query(f"mysql://root@127.0.0.1:{server.port}/tlink?ssl-mode=REQUIRED", f"CREATE DATABASE {name}")
    return f"mysql://{user}@{host}:{server.port}/{name}?{query_string}"


async def cipher_of(url: str, password: str = "") -> str:
    """The TLS cipher of a connection of the service's own pool (empty: not encrypted)."""
    db = await connect(load_settings(DATABASE_URL=url, DATABASE_PASSWORD=password).database)
    try:
        [(_, cipher)] = await db.fetchall("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        return str(cipher)
    finally:
        await db.close()


def cli_env(url: str, logs: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "TLINK_", "SYNC_LOG_DIR"))}
    env.update(DATABASE_URL=url, DATABASE_PASSWORD=PASSWORD, SYNC_LOG_DIR=str(logs), LOG_LEVEL="WARNING")
    return env


async def test_service_and_replay_over_required_tls(aiohttp_client, secure_only, tmp_path):
    url = tls_url(secure_only, "ssl-mode=REQUIRED")
    settings = load_settings(
        DATABASE_URL=url, DATABASE_PASSWORD=PASSWORD, SYNC_LOG_DIR=tmp_path / "logs", USE_HTTPS=False, API_KEYS=[]
    )
    client = await aiohttp_client(create_app(settings))
    resp = await client.post("/api/webhooks/tlink", data=fixture_bytes("sample_push.json"))
    assert resp.status == 200 and (await resp.json())["projected"] is True
    devices = await client.get("/api/users/385/devices")
    assert devices.status == 200 and [d["deviceId"] for d in (await devices.json())["devices"]] == [2864]
    [(_, cipher)] = await client.app[SERVICES].db.fetchall("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
    assert cipher  # the service's own pool is encrypted
    await client.close()

    # The server refuses connections without TLS, so replay's workers (2 processes) connected with it.
    status, out, err = await run_cli(cli_env(url, tmp_path / "logs"), tmp_path, "replay", "--workers", "2")
    assert status == 0, err
    assert "replayed 1 events" in out
    assert query(url.replace("tlink@", "root@"), "SELECT COUNT(*) FROM sensor_readings") == [(3,)]


async def test_verify_ca_accepts_the_servers_ca_and_refuses_another(tls_server, certificates, tmp_path):
    assert await cipher_of(tls_url(tls_server, f"ssl-mode=VERIFY_CA&ssl-ca={certificates['ca']}"), PASSWORD)
    wrong = tls_url(tls_server, f"ssl-mode=VERIFY_CA&ssl-ca={certificates['other-ca']}")
    with pytest.raises(DatabaseUnavailable, match="certificate verify failed"):
        await cipher_of(wrong, PASSWORD)
    # The command line says the same in one line, without a traceback or the password.
    status, _, err = await run_cli(cli_env(wrong, tmp_path / "logs"), tmp_path, "replay")
    assert status == 1 and "certificate verify failed" in err
    assert "Traceback" not in err and PASSWORD not in err and "p/#?" not in err


async def test_verify_identity_checks_the_host_name(tls_server, certificates):
    ca = certificates["ca"]
    by_name = tls_url(tls_server, f"ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}", host="localhost")
    assert await cipher_of(by_name, PASSWORD)
    by_address = tls_url(tls_server, f"ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}")  # the certificate names localhost only
    with pytest.raises(DatabaseUnavailable, match="mismatch"):
        await cipher_of(by_address, PASSWORD)
    # VERIFY_CA checks the certificate but not the name: the address is fine there.
    assert await cipher_of(tls_url(tls_server, f"ssl-mode=VERIFY_CA&ssl-ca={ca}"), PASSWORD)


async def test_disabled_is_refused_by_a_server_requiring_tls(secure_only):
    # MariaDB answers "access denied" (MySQL: error 3159, insecure transport prohibited)
    with pytest.raises(DatabaseError, match=r"Access denied.*; if the server requires TLS, set ssl-mode"):
        await cipher_of(tls_url(secure_only, "ssl-mode=DISABLED"), PASSWORD)
    assert await cipher_of(tls_url(secure_only, "ssl-mode=PREFERRED"), PASSWORD)  # PREFERRED takes the TLS offered


async def test_required_refuses_a_server_without_tls_and_preferred_falls_back():
    plain = load_settings(DATABASE_URL=MYSQL_URL).database  # the shared test server, started without TLS
    base = f"mysql://{plain.user}@{plain.host}:{plain.port}/{plain.database}"
    if await cipher_of(base + "?ssl-mode=PREFERRED", plain.password):
        pytest.skip("the shared test server offers TLS")
    with pytest.raises(DatabaseUnavailable, match="offers no TLS, and DATABASE_URL says ssl-mode=REQUIRED"):
        await cipher_of(base + "?ssl-mode=REQUIRED", plain.password)
    with pytest.raises(Exception, match="SSL is required but the server doesn't support it"):
        query(base + "?ssl-mode=REQUIRED", "SELECT 1")  # the ops helpers (PyMySQL) refuse it too


def test_ops_helpers_connect_with_the_urls_tls(tls_server, certificates):
    url = tls_url(tls_server, f"ssl-mode=VERIFY_IDENTITY&ssl-ca={certificates['ca']}", user="root", host="localhost")
    [(_, cipher)] = query(url, "SHOW SESSION STATUS LIKE 'Ssl_cipher'")
    assert cipher
    assert wait(url, 5)
    assert not wait(tls_url(tls_server, f"ssl-mode=VERIFY_CA&ssl-ca={certificates['other-ca']}", user="root"), 0)


async def test_a_client_certificate_is_presented(tls_server, certificates):
    cert = f"ssl-cert={certificates['client']}&ssl-key={certificates['client-key']}"
    assert await cipher_of(tls_url(tls_server, f"ssl-mode=VERIFY_CA&ssl-ca={certificates['ca']}&{cert}", "x509"))
    with pytest.raises(Exception, match="Access denied"):  # the user requires a certificate (REQUIRE X509)
        await cipher_of(tls_url(tls_server, "ssl-mode=REQUIRED", "x509"))
