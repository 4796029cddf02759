"""TLS: every mode over TLS, handshake timeout, SIGHUP reload, bad files, the client."""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
from pathlib import Path

import pytest

trustme = pytest.importorskip("trustme", reason="trustme makes the test certificates")

from tests.conftest import REPO, WAIT, Client, clean_env, run_gserver  # noqa: E402


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    return paths


class TLSClient(Client):
    def __init__(self, port: int, ca: Path) -> None:
        context = ssl.create_default_context(cafile=str(ca))
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        self.buffer = b""

    def serial(self) -> int:
        der = self.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        assert der is not None
        return hash(der)


def tls_args(certs: dict[str, Path]) -> list[str]:
    return ["--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"])]


@pytest.mark.parametrize("mode", ["basic", "echo", "chat", "inspect"])
def test_every_mode_over_tls(start_server, certs: dict[str, Path], mode: str) -> None:
    server = start_server("--mode", mode, *tls_args(certs))
    assert server.wait_for_log("listening")["tls"] is True
    with TLSClient(server.port, certs["ca"]) as client:
        if mode == "basic":
            assert client.read_line() == "Welcome to TCP Server!\n"
            client.send("secret")
            assert client.read_until("secret") == "Echo: secret"
        elif mode == "echo":
            assert client.read_line() == "Welcome! Currently 1 clients online\n"
            client.send_line("secret")
            assert client.read_line().endswith("] Echo: secret\n")
        elif mode == "chat":
            assert client.read_until(": ") == "Enter your username: "
            client.send_line("tess")
            assert client.read_line() == "Welcome tess!\n"
            client.send_line("over tls")
            assert client.read_line() == "[tess]: over tls\n"
        else:
            client.send("ok")
            assert client.read_until("Base64: b2s=\n").startswith("Length: 2\n")


def test_silent_and_plain_text_clients_hold_up_no_one(start_server, certs: dict[str, Path]) -> None:
    server = start_server("--mode", "echo", "--handshake-timeout", "2", *tls_args(certs))
    silent = socket.create_connection(("127.0.0.1", server.port))
    with Client(server.port) as plain:
        plain.send_line("hello in plain text")
        with TLSClient(server.port, certs["ca"]) as good:
            assert good.read_line() == "Welcome! Currently 1 clients online\n"
        with pytest.raises((ConnectionResetError, AssertionError)):
            plain.read_line()  # closed: it never speaks TLS
    silent.settimeout(WAIT)
    assert silent.recv(100) == b""  # the handshake timeout closed it
    silent.close()
    server.wait_for_events("handshake_failed", 2)
    assert not any("Traceback" in line for line in server.raw_stderr)


def test_sighup_reloads_the_certificate_without_dropping_anyone(
    start_server, certs: dict[str, Path]
) -> None:
    server = start_server("--mode", "chat", *tls_args(certs))
    old = TLSClient(server.port, certs["ca"])
    old.read_until(": ")
    old.send_line("old")
    assert old.read_line() == "Welcome old!\n"
    first_cert = old.serial()
    new_ca = trustme.CA()
    new_cert = new_ca.issue_cert("127.0.0.1")
    new_cert.cert_chain_pems[0].write_to_path(str(certs["cert"]))
    new_cert.private_key_pem.write_to_path(str(certs["key"]))
    new_ca.cert_pem.write_to_path(str(certs["ca"]))
    server.signal(signal.SIGHUP)
    server.wait_for_log("tls_reloaded")
    new = TLSClient(server.port, certs["ca"])
    assert new.serial() != first_cert
    new.read_until(": ")
    new.send_line("new")
    assert new.read_line() == "Welcome new!\n"
    assert old.read_line() == "new joined the chat\n"
    old.send_line("still here")
    assert new.read_line() == "[old]: still here\n"
    old.close()
    new.close()


def test_a_bad_reload_keeps_the_old_certificate(start_server, certs: dict[str, Path]) -> None:
    server = start_server("--mode", "basic", *tls_args(certs))
    certs["cert"].write_text("not a certificate")
    server.signal(signal.SIGHUP)
    server.wait_for_log("tls_reload_failed")
    with TLSClient(server.port, certs["ca"]) as client:
        assert client.read_line() == "Welcome to TCP Server!\n"


@pytest.mark.parametrize(
    ("change", "setting"),
    [("missing_cert", "tls_cert"), ("garbage_cert", "tls_cert"), ("only_cert", "tls_key")],
)
def test_bad_certificate_files_stop_the_start(
    certs: dict[str, Path], tmp_path: Path, change: str, setting: str
) -> None:
    args = tls_args(certs)
    if change == "missing_cert":
        args[1] = str(tmp_path / "nope.pem")
    elif change == "garbage_cert":
        certs["cert"].write_text("garbage")
    else:
        args = args[:2]
    result = run_gserver("--port", "0", *args, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and setting in lines[0], result.stderr


def spoil(certs: dict[str, Path], how: str) -> None:
    """Make the certificate or key unusable in one way."""
    if how == "mismatched_key":  # the key of another CA's certificate
        trustme.CA().issue_cert("localhost").private_key_pem.write_to_path(str(certs["key"]))
    elif how == "garbage_cert":
        certs["cert"].write_text("garbage")
    elif how == "garbage_key":
        certs["key"].write_bytes(b"\x30\x82\x01\x00 DER, say")
    elif how == "key_as_cert":
        certs["cert"].write_bytes(certs["key"].read_bytes())
    elif how == "cert_as_key":
        certs["key"].write_bytes(certs["cert"].read_bytes())
    elif how == "damaged_cert":
        certs["cert"].write_text(
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
        )
    elif how == "encrypted_key":
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(certs["key"].read_bytes(), password=None)
        certs["key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )


@pytest.mark.parametrize(
    ("how", "setting", "says"),
    [
        ("mismatched_key", "tls_key", "{key} does not match the certificate in {cert}"),
        ("garbage_cert", "tls_cert", "{cert} is not a PEM file"),
        ("garbage_key", "tls_key", "{key} is not a PEM file"),
        ("key_as_cert", "tls_cert", "{cert} is PEM but holds no certificate"),
        ("cert_as_key", "tls_key", "{key} is PEM but holds no private key"),
        ("damaged_cert", "tls_cert", "{cert} holds a certificate that cannot be read"),
        ("encrypted_key", "tls_key", "{key} is encrypted with a passphrase"),
    ],
)
def test_unusable_tls_files_are_a_plain_sentence(
    certs: dict[str, Path], tmp_path: Path, how: str, setting: str, says: str
) -> None:
    spoil(certs, how)
    result = run_gserver("--port", "0", *tls_args(certs), cwd=tmp_path)
    assert result.returncode == 2
    expected = says.format(cert=certs["cert"], key=certs["key"])
    assert result.stderr.startswith(f"gserver: error: setting '{setting}': {expected}")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "PEM lib" not in result.stderr and "_ssl.c" not in result.stderr


def test_the_client_speaks_tls(start_server, certs: dict[str, Path]) -> None:
    server = start_server("--mode", "basic", *tls_args(certs))
    base = [sys.executable, "-m", "gserver.client", "--host", "127.0.0.1"]
    base += ["--port", str(server.port), "--send", "hi", "--wait", "0.5"]
    for flag, env in (("--tls-insecure", {}), ("--tls", {"SSL_CERT_FILE": str(certs["ca"])})):
        result = subprocess.run(
            [*base, flag],
            env=clean_env(**env),
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == "Connected to server\nWelcome to TCP Server!\nEcho: hi\n"
    # Verification is on by default: an unknown CA is refused with one line.
    result = subprocess.run(
        [*base, "--tls"], env=clean_env(), capture_output=True, text=True, timeout=30, cwd=REPO
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1


OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
@pytest.mark.parametrize(
    ("how", "extra", "typed"),
    [
        ("quit", [], "alice\n/quit\n"),
        ("idle timeout", ["--idle-timeout", "0.5"], None),
    ],
)
def test_openssl_s_client_sees_a_clean_tls_close(
    start_server, certs: dict[str, Path], how: str, extra: list[str], typed: str | None
) -> None:
    server = start_server("--mode", "chat", *tls_args(certs), *extra)
    # -ign_eof: s_client reads until the server closes, not until its own input ends.
    result = subprocess.run(
        [OPENSSL, "s_client", "-quiet", "-ign_eof", "-connect", f"127.0.0.1:{server.port}"],
        input=(typed or "").encode(),
        capture_output=True,
        timeout=WAIT,
    )
    assert b"Enter your username: " in result.stdout
    assert b"unexpected eof" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    server.wait_for_log("disconnect", reason=how)


def test_a_server_shutdown_ends_tls_cleanly(start_server, certs: dict[str, Path]) -> None:
    server = start_server("--mode", "chat", *tls_args(certs))
    with TLSClient(server.port, certs["ca"]) as client:
        client.read_until("Enter your username: ")
        server.signal(signal.SIGTERM)
        assert client.read_line() == "Server shutting down\n"
        # A clean TLS end reads as b""; a truncation raises SSLEOFError here.
        assert client.sock.recv(100) == b""
    assert server.wait() == 0


@pytest.mark.parametrize("front", ["tls", "proxy"])
def test_health_checks_that_send_nothing_are_no_handshake_failures(
    start_server, certs: dict[str, Path], front: str
) -> None:
    args = tls_args(certs) if front == "tls" else ["--proxy-protocol"]
    server = start_server("--mode", "basic", "--log-level", "debug", *args)
    socket.create_connection(("127.0.0.1", server.port)).close()  # connect, close
    reset = socket.create_connection(("127.0.0.1", server.port))  # connect, reset
    reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reset.close()
    probes = server.wait_for_events("probe", 2)
    assert all(event["level"] == "debug" for event in probes)
    # A client that does speak shows that both probes were handled before it.
    if front == "proxy":
        with Client(server.port) as client:
            client.send("PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n")
            assert client.read_line() == "Welcome to TCP Server!\n"
    assert server.events("handshake_failed") == []


def test_the_client_reads_tls_replies_after_its_input_ends(
    start_server, certs: dict[str, Path]
) -> None:
    # Piped input ends at once: the client half-closes, and what the server says after
    # that must still be decrypted (it used to print the raw TLS records).
    server = start_server("--mode", "chat", *tls_args(certs))
    command = [sys.executable, "-m", "gserver.client", "--host", "127.0.0.1"]
    result = subprocess.run(
        [*command, "--port", str(server.port), "--tls-insecure"],
        input="carol\n/quit\n",
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "Connected to server\nEnter your username: Welcome carol!\nDisconnected\n"
    )
