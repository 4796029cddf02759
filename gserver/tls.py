"""TLS for every mode, with gevent's cooperative SSL: the standard library's blocking one
would freeze every client while one handshake waits on the network."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

from gserver.settings import SettingsError


class _Encrypted(Exception):
    """Raised by the passphrase callback: the key is encrypted, and no one is there to ask."""


def _no_passphrase() -> NoReturn:
    # Without a callback OpenSSL would prompt on the terminal, and a server would hang.
    raise _Encrypted


def make_context(cert_file: str, key_file: str) -> Any:
    """A server context with this certificate chain and key; SettingsError if unusable.

    OpenSSL says ``[SSL] PEM lib`` for most bad files, so the files are looked at first
    and its errors put in words, each naming the setting and the file.
    """
    from gevent import ssl  # imported only when TLS is asked for

    _check_pem("tls_cert", cert_file, b"CERTIFICATE-----", "certificate")
    _check_pem("tls_key", key_file, b"PRIVATE KEY-----", "private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except _Encrypted:
        raise SettingsError(
            "tls_key",
            f"{key_file} is encrypted with a passphrase; gserver needs it without one "
            f"(openssl pkey -in {key_file} -out plain-key.pem)",
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise SettingsError(
                "tls_key", f"{key_file} does not match the certificate in {cert_file}"
            ) from None
        if _certificates_load(ssl, cert_file):
            raise SettingsError(
                "tls_key",
                f"{key_file} holds a private key that cannot be read "
                "(damaged, or of a kind OpenSSL does not know)",
            ) from None
        raise SettingsError(
            "tls_cert", f"{cert_file} holds a certificate that cannot be read (damaged?)"
        ) from None
    except OSError as exc:
        raise SettingsError("tls_cert", f"cannot read {cert_file}: {exc.strerror}") from None
    return context


def _certificates_load(ssl: Any, cert_file: str) -> bool:
    """Whether the certificates alone load: if so, the key is what OpenSSL refused."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=cert_file)
    except ssl.SSLError:
        return False
    return True


def _check_pem(setting: str, path: str, marker: bytes, holds: str) -> None:
    """The file exists, is PEM, and has a block of the kind that the setting needs."""
    if not Path(path).is_file():
        raise SettingsError(setting, f"file not found: {path}")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(setting, f"cannot read {path}: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        kind = "is empty" if not data.strip() else "is not a PEM file (no -----BEGIN line)"
        raise SettingsError(setting, f"{path} {kind}; it must hold a PEM {holds}")
    if marker not in data:
        raise SettingsError(setting, f"{path} is PEM but holds no {holds}")
