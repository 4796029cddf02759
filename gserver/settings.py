"""Every setting of gserver, their defaults and validation, and where they come from.

Precedence, lowest first: built-in defaults < TOML file < environment (``GSERVER_<NAME>``,
and ``PORT`` as Procfile platforms set it) < command-line flags.  All sources except the
TOML file deliver strings, so one converter per type turns them into values and names the
setting when it cannot.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODES = ("basic", "echo", "chat", "inspect")
LOG_FORMATS = ("auto", "console", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_CONFIG = Path("conf/gserver.toml")
# Chat users read far more than they type, so the idle limit is longer there.
IDLE_TIMEOUT_BY_MODE = {"basic": 30.0, "echo": 30.0, "chat": 600.0, "inspect": 30.0}
IDLE_TIMEOUT_FOR_HANDLERS = 30.0
# Environment variables that are not settings but are still gserver's.
ENVIRONMENT_EXTRAS = ("GSERVER_CONFIG",)
# What a value must be, said the same way for every source (TOML knows types; text does not).
_KIND_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


class SettingsError(Exception):
    """A setting has a value gserver cannot use; the message names the setting."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"setting '{setting}': {problem}")
        self.setting = setting


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class Settings:
    """All of gserver's settings; build one directly or with :func:`load`."""

    host: str = field(
        default="0.0.0.0", metadata=_help("address to listen on; '::' serves IPv6 and IPv4")
    )
    port: int = field(default=8080, metadata=_help("TCP port to listen on (0 = any free port)"))
    mode: str = field(default="chat", metadata=_help("built-in mode: basic, echo, chat, inspect"))
    handler: str | None = field(
        default=None,
        metadata=_help("serve your own handler instead of a mode: package.module:function"),
    )
    idle_timeout: float | None = field(
        default=None,
        metadata=_help(
            "seconds without data before a client is closed (0 = off); "
            "default 30, or 600 in chat mode"
        ),
    )
    keepalive: float = field(
        default=60.0, metadata=_help("TCP keepalive idle time in seconds (0 = off)")
    )
    max_line_bytes: int = field(
        default=16384, metadata=_help("longest line accepted in echo and chat mode, in bytes")
    )
    uptime_interval: float = field(
        default=30.0, metadata=_help("seconds between uptime broadcasts in echo mode (0 = off)")
    )
    shutdown_grace: float = field(
        default=5.0, metadata=_help("seconds to let queued output flush on shutdown")
    )
    max_output_bytes: int = field(
        default=1024 * 1024,
        metadata=_help("bytes queued for one client before it is dropped as a slow consumer"),
    )
    write_timeout: float = field(
        default=10.0,
        metadata=_help("seconds without write progress before a client is dropped as slow"),
    )
    max_clients: int = field(
        default=10000, metadata=_help("clients served at once by one process; others are refused")
    )
    max_clients_per_ip: int = field(
        default=0, metadata=_help("clients at once from one IP address (0 = no limit)")
    )
    backlog: int = field(default=1024, metadata=_help("listen backlog of the server socket"))
    flood_rate: float = field(
        default=10.0,
        metadata=_help("lines a second one client may send in echo and chat mode (0 = no limit)"),
    )
    flood_burst: int = field(
        default=20, metadata=_help("lines a client may send at once before flood_rate applies")
    )
    proxy_protocol: bool = field(
        default=False,
        metadata=_help("expect a PROXY protocol v1/v2 header from a load balancer first"),
    )
    tls_cert: str | None = field(
        default=None, metadata=_help("PEM certificate chain file: serve over TLS")
    )
    tls_key: str | None = field(default=None, metadata=_help("PEM private key file for tls_cert"))
    handshake_timeout: float = field(
        default=10.0,
        metadata=_help("seconds for a TLS handshake or a PROXY header before the client is closed"),
    )
    workers: int = field(
        default=1,
        metadata=_help("worker processes sharing the port: N or auto (one per core)"),
    )
    backplane: str | None = field(
        default=None,
        metadata=_help("Redis URL that carries chat and broadcasts between processes"),
    )
    backplane_prefix: str = field(
        default="gserver", metadata=_help("prefix of every Redis key and channel gserver uses")
    )
    metrics_host: str = field(
        default="127.0.0.1",
        metadata=_help(
            "address the metrics port listens on; loopback by default, since metrics "
            "reveal traffic and a scraper on the same host or a sidecar needs no more"
        ),
    )
    metrics_port: int | None = field(
        default=None,
        metadata=_help("serve Prometheus /metrics and /healthz on this port (worker k: +k)"),
    )
    default_room: str = field(
        default="lobby",
        metadata=_help("the chat room everyone starts in (written #lobby)"),
    )
    max_rooms: int = field(
        default=1000, metadata=_help("chat rooms with anyone in them at once, the default included")
    )
    history_lines: int = field(
        default=0,
        metadata=_help(
            "lines each chat room keeps and shows to whoever enters it (0 = off, as in the seed)"
        ),
    )
    oper_password: str | None = field(
        default=None,
        metadata=_help(
            "hash of the chat operators' password (python -m gserver hash-password); "
            "unset: nobody can become an operator"
        ),
    )
    web_port: int | None = field(
        default=None,
        metadata=_help(
            "serve HTTP here: the chat page at /, WebSocket clients at /ws, /healthz; "
            "the same number as port serves TCP and web clients on one listener"
        ),
    )
    sniff_timeout: float = field(
        default=0.3,
        metadata=_help(
            "with web_port = port: seconds to wait for a client's first bytes before "
            "greeting it as a TCP client"
        ),
    )
    web_origins: str = field(
        default="",
        metadata=_help(
            "other sites' origins whose pages may open a WebSocket, comma-separated "
            "(scheme://host[:port]; * for any); the page's own origin always may"
        ),
    )
    forwarded_allow_ips: str = field(
        default="127.0.0.1",
        metadata=_help(
            "proxies whose X-Forwarded-For gives a web client's address: addresses or "
            "networks, comma-separated, * for any"
        ),
    )
    ws_ping_interval: float = field(
        default=20.0,
        metadata=_help(
            "seconds between pings to each WebSocket client; one that has not answered "
            "by the next ping is closed (0 = off)"
        ),
    )
    log_format: str = field(
        default="auto",
        metadata=_help("auto (console on a terminal, JSON lines otherwise), console or json"),
    )
    log_level: str = field(default="info", metadata=_help("debug, info, warning or error"))
    reload: bool = field(
        default=False,
        metadata=_help(
            "restart the server when a .py file under the current directory changes "
            "(for development; one process, so not with workers)"
        ),
    )

    def __post_init__(self) -> None:
        for check in _CHECKS:
            check(self)

    @property
    def effective_idle_timeout(self) -> float:
        """The idle timeout in force: the setting, or the mode's default when unset."""
        if self.idle_timeout is not None:
            return self.idle_timeout
        if self.handler:
            return IDLE_TIMEOUT_FOR_HANDLERS
        return IDLE_TIMEOUT_BY_MODE[self.mode]


def _check_port(s: Settings) -> None:
    if not 0 <= s.port <= 65535:
        raise SettingsError("port", f"must be from 0 to 65535, got {s.port}")


def _check_mode(s: Settings) -> None:
    if s.mode not in MODES:
        raise SettingsError("mode", f"must be one of {', '.join(MODES)}, got {s.mode!r}")


def _check_handler(s: Settings) -> None:
    if s.handler is not None and not _looks_like_handler(s.handler):
        raise SettingsError("handler", f"must look like package.module:function, got {s.handler!r}")


def _looks_like_handler(spec: str) -> bool:
    module, sep, function = spec.partition(":")
    return bool(sep and module and function.isidentifier())


def _check_non_negative(s: Settings) -> None:
    for name in (
        "keepalive",
        "uptime_interval",
        "shutdown_grace",
        "write_timeout",
        "flood_rate",
        "handshake_timeout",
    ):
        _require_non_negative(name, getattr(s, name))
    if s.idle_timeout is not None:
        _require_non_negative("idle_timeout", s.idle_timeout)
    _require_non_negative("max_clients_per_ip", s.max_clients_per_ip)


def _require_non_negative(name: str, value: float) -> None:
    if value < 0 or math.isnan(value) or math.isinf(value):
        raise SettingsError(name, f"must be a finite number >= 0, got {value}")


def _check_positive(s: Settings) -> None:
    for name in ("max_line_bytes", "max_output_bytes", "max_clients", "backlog", "flood_burst"):
        value = getattr(s, name)
        if value < 1:
            raise SettingsError(name, f"must be at least 1, got {value}")


def _check_logging(s: Settings) -> None:
    if s.log_format not in LOG_FORMATS:
        raise SettingsError(
            "log_format", f"must be one of {', '.join(LOG_FORMATS)}, got {s.log_format!r}"
        )
    if s.log_level not in LOG_LEVELS:
        raise SettingsError(
            "log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {s.log_level!r}"
        )


def _check_reload(s: Settings) -> None:
    # Reloading restarts the one serving process; a master with workers is another story.
    if s.reload and s.workers > 1:
        raise SettingsError(
            "reload", f"cannot be combined with workers > 1 (got workers = {s.workers})"
        )


def _check_tls(s: Settings) -> None:
    if bool(s.tls_cert) != bool(s.tls_key):
        given, missing = ("tls_cert", "tls_key") if s.tls_cert else ("tls_key", "tls_cert")
        raise SettingsError(
            missing,
            f"must be given with {given}, got {given} {getattr(s, given)!r} and no {missing}",
        )


def _check_cluster(s: Settings) -> None:
    if s.workers < 1:
        raise SettingsError("workers", f"must be N or auto, with N at least 1, got {s.workers}")
    if s.backplane is not None:
        _check_redis_url(s.backplane)
    if s.workers > 1 and s.mode in ("chat", "echo") and not s.handler and not s.backplane:
        raise SettingsError(
            "backplane",
            f"{s.workers} workers in {s.mode} mode need a backplane (--backplane redis://...) "
            "to share the room, got none",
        )
    if not s.backplane_prefix or any(c.isspace() for c in s.backplane_prefix):
        raise SettingsError(
            "backplane_prefix", f"must be a non-empty word, got {s.backplane_prefix!r}"
        )
    if s.metrics_port is not None and not 0 <= s.metrics_port <= 65535:
        raise SettingsError("metrics_port", f"must be from 0 to 65535, got {s.metrics_port}")


def _check_redis_url(url: str) -> None:
    problem = None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        problem = "must be a redis://, rediss:// or unix:// URL"
    else:
        from redis.connection import parse_url

        try:
            parse_url(url)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            problem = str(exc) or "is not a valid Redis URL"
    if problem:
        raise SettingsError("backplane", f"{problem}, got {url!r}")


def _check_host(s: Settings) -> None:
    if not s.host or any(c.isspace() for c in s.host):
        raise SettingsError("host", f"must be an address or host name, got {s.host!r}")


def _check_web(s: Settings) -> None:
    if s.web_port is not None and not 0 <= s.web_port <= 65535:
        raise SettingsError("web_port", f"must be from 0 to 65535, got {s.web_port}")
    if s.web_port is not None and s.web_port != s.port and s.workers > 1:
        raise SettingsError(
            "web_port",
            f"with {s.workers} workers, must be the same as port ({s.port}: one shared "
            f"listener serves TCP and web clients), got {s.web_port}",
        )
    _require_non_negative("sniff_timeout", s.sniff_timeout)
    _require_non_negative("ws_ping_interval", s.ws_ping_interval)
    if not s.web_origins and s.forwarded_allow_ips == "127.0.0.1":
        return  # the defaults: no need to load h11 and wsproto at every start
    from gserver.protocol.websocket import OriginPolicy, TrustedProxies

    try:
        OriginPolicy(web_origin_list(s.web_origins))
    except ValueError as exc:
        raise SettingsError("web_origins", f"{exc}, got {s.web_origins!r}") from None
    try:
        TrustedProxies(s.forwarded_allow_ips)
    except ValueError as exc:
        raise SettingsError(
            "forwarded_allow_ips", f"{exc}, got {s.forwarded_allow_ips!r}"
        ) from None


def _check_chat(s: Settings) -> None:
    from gserver.protocol.rooms import room_display

    if room_display(s.default_room) is None:
        raise SettingsError(
            "default_room",
            f"must be 1-32 letters, digits, - _ or . (with or without #), got {s.default_room!r}",
        )
    _require_non_negative("history_lines", s.history_lines)
    if s.max_rooms < 1:
        raise SettingsError("max_rooms", f"must be at least 1, got {s.max_rooms}")
    if s.oper_password is not None:
        from gserver.protocol.passwords import PasswordHashError, parse

        try:
            parse(s.oper_password)
        except PasswordHashError as exc:
            # Not what it got: that may be the password itself, pasted by mistake.
            raise SettingsError("oper_password", f"{exc}, got something else") from None


def web_origin_list(text: str) -> list[str]:
    """``web_origins`` as a list: comma- or space-separated origins."""
    return [part for part in text.replace(",", " ").split() if part]


_CHECKS: tuple[Callable[[Settings], None], ...] = (
    _check_host,
    _check_port,
    _check_mode,
    _check_handler,
    _check_non_negative,
    _check_positive,
    _check_logging,
    _check_tls,
    _check_cluster,
    _check_reload,
    _check_web,
    _check_chat,
)

FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def setting_type(name: str) -> type:
    """The plain Python type of a setting (``int`` for ``int | None``)."""
    annotation = str(FIELDS[name].type)
    for candidate in (bool, int, float, str):
        if candidate.__name__ in annotation.split(" | "):
            return candidate
    raise AssertionError(f"no converter for {annotation}")  # pragma: no cover


def setting_help(name: str) -> str:
    return str(FIELDS[name].metadata["help"])


def setting_metavar(name: str) -> str:
    """How ``--help`` shows a setting's value: its type (``INT``), or ``N|auto``."""
    return "N|auto" if name == "workers" else setting_type(name).__name__.upper()


def convert_text(name: str, text: str) -> Any:
    """Turn a string from the environment or a flag into the setting's value."""
    kind = setting_type(name)
    text = text.strip()
    if kind is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingsError(name, f"must be {_kind_words(name)}, got {text!r}")
    if kind is int:
        if name == "workers" and text.lower() == "auto":
            return os.cpu_count() or 1
        try:
            return int(text)
        except ValueError:
            raise SettingsError(name, f"must be {_kind_words(name)}, got {text!r}") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise SettingsError(name, f"must be {_kind_words(name)}, got {text!r}") from None
    return text


def _kind_words(name: str) -> str:
    """What a setting's value must be, in words: ``an integer``, ``N or auto``..."""
    if name == "workers":
        return "N or auto"
    return _KIND_WORDS[setting_type(name)]


def _convert_toml(name: str, value: Any) -> Any:
    kind = setting_type(name)
    if name == "workers" and value == "auto":
        return os.cpu_count() or 1
    # TOML knows types already; only check them (bool is an int in Python, so test it first).
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        problem = f"must be {_kind_words(name)} in the settings file, got {value!r}"
        raise SettingsError(name, problem)
    return value


def read_file(path: Path) -> dict[str, Any]:
    """Settings from a flat TOML table; unknown keys are errors, not silently ignored."""
    import tomllib  # only where there is a settings file (start-up time)

    try:
        with path.open("rb") as f:
            table = tomllib.load(f)
    except FileNotFoundError:
        raise SettingsError("config", f"file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError("config", f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise SettingsError("config", f"cannot read {path}: {exc.strerror}") from None
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in FIELDS:
            raise SettingsError(key, f"unknown setting in {path}")
        values[key] = _convert_toml(key, value)
    return values


def read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if environ.get("PORT", "").strip():
        values["port"] = convert_text("port", environ["PORT"])
    for name in FIELDS:
        text = environ.get(f"GSERVER_{name.upper()}", "")
        if text.strip():
            values[name] = convert_text(name, text)
    return values


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """The ``GSERVER_*`` variables that name no setting, which are otherwise ignored.

    Compared without case, so that a lower-case ``gserver_port`` is reported too: Unix
    names are case-sensitive and it would be ignored just the same.
    """
    known = {f"GSERVER_{name.upper()}" for name in FIELDS} | set(ENVIRONMENT_EXTRAS)
    return sorted(
        name for name in environ if name.upper().startswith("GSERVER_") and name not in known
    )


def environment_warnings(environ: Mapping[str, str]) -> list[str]:
    """One sentence for each unknown ``GSERVER_*`` variable, with the likely meant one."""
    known = [f"GSERVER_{name.upper()}" for name in FIELDS] + list(ENVIRONMENT_EXTRAS)
    warnings = []
    for name in unknown_environment(environ):
        import difflib  # only where there is something to warn about (start-up time)

        close = difflib.get_close_matches(name.upper(), known, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"unknown environment variable {name} (ignored{hint})")
    return warnings


def load(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config: Path | None = None,
) -> Settings:
    """Build Settings from defaults < file < environment < flags.

    ``flags`` holds already-chosen values by setting name (strings are converted);
    ``config`` is an explicit file, which must exist; without it the default file is read
    only where it exists.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if config is None and environ.get("GSERVER_CONFIG", "").strip():
        config = Path(environ["GSERVER_CONFIG"].strip())
    if config is not None:
        values.update(read_file(config))
    elif DEFAULT_CONFIG.is_file():
        values.update(read_file(DEFAULT_CONFIG))
    values.update(read_environment(environ))
    for name, value in (flags or {}).items():
        if name not in FIELDS:
            raise SettingsError(name, "unknown setting")
        values[name] = convert_text(name, value) if isinstance(value, str) else value
    return Settings(**values)
