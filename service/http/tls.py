"""The server's TLS context and the self-signed development certificate behind it."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from eventlog.files import fsync_dir

try:  # POSIX only; elsewhere two processes racing on first start are not guarded.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("tlink.tls")

CERT_NAME = "localhost.crt"
KEY_NAME = "localhost.key"
VALIDITY = datetime.timedelta(days=825)
# Reissue a little before expiry so a long-running dev box never serves an expired cert.
RENEW_MARGIN = datetime.timedelta(days=1)


class TlsError(Exception):
    """The TLS certificate or key cannot be used."""


def ensure_certificate(cert_dir: Path) -> tuple[Path, Path]:
    """Return (cert, key) in cert_dir, creating a self-signed pair if needed."""
    cert_path, key_path = cert_dir / CERT_NAME, cert_dir / KEY_NAME
    if _unusable_reason(cert_path, key_path) is None:
        return cert_path, key_path
    try:
        cert_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive(cert_dir / ".localhost.lock"):
            # Checked again under the lock: a concurrent start may have just written it.
            reason = _unusable_reason(cert_path, key_path)
            if reason is not None:
                _write_new_pair(cert_path, key_path, reason)
    except OSError as exc:
        raise TlsError(
            f"cannot create a self-signed certificate in {cert_dir}: {exc}"
        ) from exc
    return cert_path, key_path


def build_ssl_context(
    use_https: bool,
    cert_file: Path | None,
    key_file: Path | None,
    auto_generate: bool,
    cert_dir: Path,
) -> ssl.SSLContext | None:
    """The server TLS context, or None for plain HTTP (caller warns if unwanted)."""
    if not use_https:
        return None
    pair = _explicit_pair(cert_file, key_file)
    if pair is None:
        if not auto_generate:
            return None
        pair = ensure_certificate(cert_dir)
    return _server_context(*pair)


def _explicit_pair(
    cert_file: Path | None, key_file: Path | None
) -> tuple[Path, Path | None] | None:
    """The configured files, checked to exist; None when none is configured."""
    if cert_file is None and key_file is None:
        return None
    if cert_file is None:
        raise TlsError(f"SSL_KEY_FILE is set ({key_file}) but SSL_CERT_FILE is not")
    if key_file is None and not _holds_private_key(Path(cert_file)):
        # OpenSSL also reads SSL_CERT_FILE, as the CA bundle to trust; many machines set
        # it. Without a key it cannot be our server certificate, so it is not one.
        log.warning("SSL_CERT_FILE %s has no private key and SSL_KEY_FILE is unset: ignoring it", cert_file)
        return None
    for name, path in (("SSL_CERT_FILE", cert_file), ("SSL_KEY_FILE", key_file)):
        if path is not None and not Path(path).is_file():
            raise TlsError(f"{name} {path} does not exist or is not a file")
    return Path(cert_file), None if key_file is None else Path(key_file)


def _holds_private_key(path: Path) -> bool:
    try:
        return b"PRIVATE KEY-----" in path.read_bytes()
    except OSError:
        return True  # let loading report the real problem


def _server_context(cert_file: Path, key_file: Path | None) -> ssl.SSLContext:
    """A TLS 1.2+ server context (the key may sit in the certificate PEM)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        files = f"{cert_file}" if key_file is None else f"{cert_file} / {key_file}"
        raise TlsError(f"cannot load TLS certificate/key {files}: {exc}") from exc
    return context


def _unusable_reason(cert_path: Path, key_path: Path) -> str | None:
    """Why the stored pair cannot be reused, or None when it can."""
    if not (cert_path.is_file() and key_path.is_file()):
        return "missing"
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        return f"unreadable ({exc})"
    if cert.public_key() != key.public_key():
        return "key does not match certificate"
    if cert.not_valid_after_utc - RENEW_MARGIN <= _now():
        return "expired or about to expire"
    return None


def _write_new_pair(cert_path: Path, key_path: Path, reason: str) -> None:
    """Generate a fresh key and self-signed certificate and store both atomically."""
    if reason != "missing":
        log.warning("replacing development certificate %s: %s", cert_path, reason)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed(key)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _atomic_write(key_path, key_pem, 0o600)
    _atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info(
        "created self-signed development certificate %s (trust it or use -k)", cert_path
    )


def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """A self-signed end-entity certificate for localhost, 127.0.0.1 and ::1."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
            x509.NameAttribute(
                NameOID.ORGANIZATION_NAME, "TLINK push service (development)"
            ),
        ]
    )
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    start = _now() - datetime.timedelta(minutes=5)  # tolerate small clock skew
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + VALIDITY)
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public), critical=False
        )
        # Python 3.13's strict verification wants an AKI even when self-signed.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def _key_usage() -> x509.KeyUsage:
    """Key usage for an ECDSA TLS server key."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write via a synced temp file and rename: a crash never leaves half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename's durability is best effort
        fsync_dir(path.parent)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an advisory lock so concurrent first starts write one matching pair."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _now() -> datetime.datetime:
    """The current UTC time (one place to patch in tests)."""
    return datetime.datetime.now(datetime.UTC)
