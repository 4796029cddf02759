"""TLS for every mode, with gevent's cooperative SSL: the standard library's blocking one
would freeze every client while one handshake waits on the network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gserver.settings import SettingsError


def make_context(cert_file: str, key_file: str) -> Any:
    """A server context with this certificate chain and key; SettingsError if unusable."""
    from gevent import ssl  # imported only when TLS is asked for

    for setting, path in (("tls_cert", cert_file), ("tls_key", key_file)):
        if not Path(path).is_file():
            raise SettingsError(setting, f"file not found: {path}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        raise SettingsError(
            "tls_cert", f"cannot use {cert_file} with {key_file}: {reason}"
        ) from None
    except OSError as exc:
        raise SettingsError("tls_cert", f"cannot read {cert_file}: {exc.strerror}") from None
    return context
