"""Settings: defaults < TOML file < environment < flags, and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gserver.settings import (
    DEFAULT_CONFIG,
    FIELDS,
    Settings,
    SettingsError,
    environment_warnings,
    load,
    unknown_environment,
)
from tests.conftest import REPO, run_gserver


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults() -> None:
    s = Settings()
    assert (s.host, s.port, s.mode) == ("0.0.0.0", 8080, "chat")
    assert (s.max_line_bytes, s.keepalive, s.uptime_interval, s.shutdown_grace) == (
        16384,
        60.0,
        30.0,
        5.0,
    )
    assert (s.log_format, s.log_level) == ("auto", "info")


@pytest.mark.parametrize(
    ("mode", "timeout"), [("basic", 30), ("echo", 30), ("inspect", 30), ("chat", 600)]
)
def test_idle_timeout_defaults_by_mode(mode: str, timeout: float) -> None:
    assert Settings(mode=mode).effective_idle_timeout == timeout
    assert Settings(mode=mode, idle_timeout=0).effective_idle_timeout == 0


def test_precedence_defaults_file_environment_flags(tmp_path: Path) -> None:
    config = write(tmp_path / "g.toml", 'port = 1111\nmode = "echo"\nidle_timeout = 7\n')
    assert load({}, {}, config).port == 1111
    assert load({}, {"PORT": "2222"}, config).port == 2222
    assert load({}, {"PORT": "2222", "GSERVER_PORT": "3333"}, config).port == 3333
    s = load({"port": "4444"}, {"PORT": "2222", "GSERVER_PORT": "3333"}, config)
    assert (s.port, s.mode, s.idle_timeout) == (4444, "echo", 7.0)
    assert load({}, {"GSERVER_MODE": "basic"}, config).mode == "basic"


def test_default_file_is_read_only_where_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load({}, {}).port == 8080
    (tmp_path / DEFAULT_CONFIG).parent.mkdir()
    write(tmp_path / DEFAULT_CONFIG, "port = 9999\n")
    assert load({}, {}).port == 9999


def test_the_shipped_settings_file_lists_every_setting_with_its_default() -> None:
    text = (REPO / "conf" / "gserver.toml").read_text()
    for name in FIELDS:
        assert f"{name} =" in text, name
    # Loading it (idle_timeout and handler are commented out) gives the built-in defaults.
    assert load({}, {}, REPO / "conf" / "gserver.toml") == Settings()


@pytest.mark.parametrize(
    ("source", "setting"),
    [
        ({"flags": {"mode": "nope"}}, "mode"),
        ({"flags": {"port": "70000"}}, "port"),
        ({"flags": {"port": "eighty"}}, "port"),
        ({"env": {"GSERVER_IDLE_TIMEOUT": "-1"}}, "idle_timeout"),
        ({"env": {"GSERVER_LOG_LEVEL": "loud"}}, "log_level"),
        ({"file": "colour = 3\n"}, "colour"),
        ({"file": 'port = "8080"\n'}, "port"),
        ({"file": "port = \n"}, "config"),
        ({"flags": {"handler": "no_colon"}}, "handler"),
    ],
)
def test_bad_values_name_the_setting(
    source: dict[str, object], setting: str, tmp_path: Path
) -> None:
    config = write(tmp_path / "g.toml", str(source.get("file", "")))
    with pytest.raises(SettingsError) as caught:
        load(source.get("flags", {}), source.get("env", {}), config)  # type: ignore[arg-type]
    assert caught.value.setting == setting
    assert setting in str(caught.value)


def test_a_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="config"):
        load({}, {}, tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("args", "env", "setting"),
    [
        (["--mode", "nope"], {}, "mode"),
        (["--port", "70000"], {}, "port"),
        ([], {"GSERVER_PORT": "x"}, "port"),
        (["--handler", "no_such_module_xyz:handle"], {}, "handler"),
        (["--config", "missing.toml"], {}, "config"),
        (["--no-such-flag"], {}, "--no-such-flag"),
        (["--workers", "2", "--mode", "chat"], {}, "backplane"),
        (["--workers", "0"], {}, "workers"),
        (["--backplane", "http://x"], {}, "backplane"),
        (["--backplane", "redis://h:xx/0"], {}, "backplane"),
    ],
)
def test_cli_bad_setting_is_one_line_exit_2(
    args: list[str], env: dict[str, str], setting: str, tmp_path: Path
) -> None:
    result = run_gserver(*args, cwd=tmp_path, **env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert setting in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_unknown_key_in_the_file_exits_2(tmp_path: Path) -> None:
    write(tmp_path / "bad.toml", "colour = 3\n")
    result = run_gserver("--config", "bad.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "gserver: error: setting 'colour': unknown setting in bad.toml"


def test_help_lists_every_setting(tmp_path: Path) -> None:
    result = run_gserver("--help", cwd=tmp_path)
    assert result.returncode == 0
    for name in FIELDS:
        assert "--" + name.replace("_", "-") in result.stdout
    assert "--config" in result.stdout


def test_the_readme_documents_every_setting() -> None:
    readme = (REPO / "README.md").read_text()
    for name in FIELDS:
        assert f"| `{name}` |" in readme, name


# Every SettingsError that a value can cause: (source, setting named, the value as shown).
BAD_VALUES: list[tuple[dict[str, Any], str, str]] = [
    ({"flags": {"port": "70000"}}, "port", "70000"),
    ({"flags": {"port": "eighty"}}, "port", "'eighty'"),
    ({"flags": {"mode": "nope"}}, "mode", "'nope'"),
    ({"flags": {"handler": "no_colon"}}, "handler", "'no_colon'"),
    ({"flags": {"host": "a b"}}, "host", "'a b'"),
    ({"env": {"GSERVER_IDLE_TIMEOUT": "-1"}}, "idle_timeout", "-1"),
    ({"env": {"GSERVER_KEEPALIVE": "soon"}}, "keepalive", "'soon'"),
    ({"env": {"GSERVER_PROXY_PROTOCOL": "maybe"}}, "proxy_protocol", "'maybe'"),
    ({"flags": {"max_line_bytes": "0"}}, "max_line_bytes", "0"),
    ({"flags": {"log_format": "xml"}}, "log_format", "'xml'"),
    ({"env": {"GSERVER_LOG_LEVEL": "loud"}}, "log_level", "'loud'"),
    ({"flags": {"tls_cert": "cert.pem"}}, "tls_key", "'cert.pem'"),
    ({"flags": {"tls_key": "key.pem"}}, "tls_cert", "'key.pem'"),
    ({"flags": {"workers": "0"}}, "workers", "0"),
    ({"flags": {"workers": "many"}}, "workers", "'many'"),
    ({"flags": {"workers": "2", "mode": "chat"}}, "backplane", "2 workers in chat mode"),
    ({"flags": {"backplane": "http://x"}}, "backplane", "'http://x'"),
    ({"flags": {"backplane_prefix": "two words"}}, "backplane_prefix", "'two words'"),
    ({"flags": {"metrics_port": "70000"}}, "metrics_port", "70000"),
    ({"file": 'port = "8080"\n'}, "port", "'8080'"),
    ({"file": "workers = 2.5\n"}, "workers", "2.5"),
    ({"file": "colour = 3\n"}, "colour", "colour"),
    ({"file": "port = \n"}, "config", "g.toml"),
    ({"flags": {"colour": 3}}, "colour", "colour"),
]


def test_every_bad_value_is_named_in_its_error(tmp_path: Path) -> None:
    unnamed = []
    for source, setting, got in BAD_VALUES:
        config = write(tmp_path / "g.toml", str(source.get("file", "")))
        with pytest.raises(SettingsError) as caught:
            load(source.get("flags", {}), source.get("env", {}), config)
        assert caught.value.setting == setting, (source, str(caught.value))
        if got not in str(caught.value):
            unnamed.append(f"{got}: {caught.value}")
    assert unnamed == []


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"file": 'port = "8080"\n'}, "must be an integer in the settings file, got '8080'"),
        ({"flags": {"port": "eighty"}}, "must be an integer, got 'eighty'"),
        ({"file": 'workers = "many"\n'}, "must be N or auto in the settings file, got 'many'"),
        ({"env": {"GSERVER_WORKERS": "many"}}, "must be N or auto, got 'many'"),
        ({"flags": {"workers": "0"}}, "must be N or auto, with N at least 1, got 0"),
    ],
)
def test_types_are_said_in_words(source: dict[str, object], message: str, tmp_path: Path) -> None:
    config = write(tmp_path / "g.toml", str(source.get("file", "")))
    with pytest.raises(SettingsError) as caught:
        load(source.get("flags", {}), source.get("env", {}), config)  # type: ignore[arg-type]
    assert str(caught.value).endswith(message)


def test_help_shows_workers_as_n_or_auto(tmp_path: Path) -> None:
    result = run_gserver("--help", cwd=tmp_path)
    assert "--workers N|auto" in result.stdout
    assert "N or auto" in " ".join(result.stdout.split())


def test_unknown_gserver_environment_variables_are_found() -> None:
    environ = {
        "GSERVER_PORT": "1",
        "GSERVER_CONFIG": "g.toml",
        "GSERVER_IDLE_TIMOUT": "5",
        "gserver_mode": "echo",
        "PORT": "2",
        "HOME": "/root",
    }
    assert unknown_environment(environ) == ["GSERVER_IDLE_TIMOUT", "gserver_mode"]
    assert environment_warnings(environ) == [
        "unknown environment variable GSERVER_IDLE_TIMOUT "
        "(ignored; did you mean GSERVER_IDLE_TIMEOUT?)",
        "unknown environment variable gserver_mode (ignored; did you mean GSERVER_MODE?)",
    ]
    assert environment_warnings({"GSERVER_ZZZZZZZZ": "1"}) == [
        "unknown environment variable GSERVER_ZZZZZZZZ (ignored)"
    ]


def test_a_misspelt_environment_variable_is_one_warning_and_gserver_starts(
    start_server,
) -> None:
    server = start_server("--mode", "basic", env={"GSERVER_IDLE_TIMOUT": "5"})
    warning = (
        "gserver: warning: unknown environment variable GSERVER_IDLE_TIMOUT "
        "(ignored; did you mean GSERVER_IDLE_TIMEOUT?)"
    )
    assert [line for line in server.raw_stderr if "GSERVER_" in line] == [warning]
