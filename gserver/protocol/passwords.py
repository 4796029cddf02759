"""Operator passwords: a salted, slow hash (scrypt, from the standard library), so that
the setting holds a hash and never the password, and a check in constant time.

Sans-IO and clockless: hashing takes tens of milliseconds of CPU on purpose, so a server
runs :func:`verify` off its event loop (gevent's threadpool; hashlib releases the GIL).
The hash reads ``scrypt$N$r$p$<salt, base64>$<key, base64>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

# RFC 7914's interactive parameters: about 16 MB and some 50 ms here.
N, R, P = 2**14, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32
MAX_MEMORY = 64 * 1024 * 1024
MAKE_ONE = "make one with: python -m gserver hash-password"


class PasswordHashError(ValueError):
    """Text that is not a hash made by :func:`hash_password`."""


def _key(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=MAX_MEMORY, dklen=KEY_BYTES
    )


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A new hash of ``password`` with a fresh random salt."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    key = _key(password, salt, N, R, P)
    encode = base64.b64encode
    return f"scrypt${N}${R}${P}${encode(salt).decode()}${encode(key).decode()}"


def parse(hashed: str) -> tuple[int, int, int, bytes, bytes]:
    """(N, r, p, salt, key) of a hash; PasswordHashError when it is none."""
    parts = hashed.strip().split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise PasswordHashError(f"not a gserver password hash ({MAKE_ONE})")
    try:
        n, r, p = (int(part) for part in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        raise PasswordHashError(f"a damaged password hash ({MAKE_ONE})") from None
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or 128 * n * r * p > MAX_MEMORY or not key:
        raise PasswordHashError("a password hash with unusable scrypt parameters")
    return n, r, p, salt, key


def verify(password: str, hashed: str) -> bool:
    """Whether ``password`` is the one ``hashed`` was made from (constant-time compare)."""
    n, r, p, salt, key = parse(hashed)
    return hmac.compare_digest(_key(password, salt, n, r, p), key)
