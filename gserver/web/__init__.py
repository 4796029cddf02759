"""The chat page: one HTML file, its script and its style, shipped in the package.

No CDN, no build step, no framework: the files are served as they are, under a
Content-Security-Policy that allows nothing but the page's own origin (no inline script or
style either, which is why the script and the style are files of their own).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Final


@dataclass(frozen=True, slots=True)
class Asset:
    """One static file: its bytes and the Content-Type to serve them with."""

    name: str
    body: bytes
    content_type: str


#: URL path -> (file name in this package, content type).  These three paths, with
#: /ws and /healthz, are all that the web port serves.
ROUTES: Final[dict[str, tuple[str, str]]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/chat.js": ("chat.js", "text/javascript; charset=utf-8"),
    "/chat.css": ("chat.css", "text/css; charset=utf-8"),
}


@functools.cache
def asset(path: str) -> Asset:
    """The file served at URL ``path`` (one of :data:`ROUTES`), read once."""
    name, content_type = ROUTES[path]
    body = resources.files(__name__).joinpath(name).read_bytes()
    return Asset(name, body, content_type)


def assets() -> dict[str, tuple[bytes, str]]:
    """Every file by URL path, as (body, content type): what a WebEndpoint serves."""
    return {path: (asset(path).body, asset(path).content_type) for path in ROUTES}
