"""``--reload``: a changed handler is served anew on the same port; one that does not
import is reported in one line while the old code keeps serving."""

from __future__ import annotations

import importlib
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gserver.reload import watched_directories
from gserver.testing.kit import Client
from gserver.testing.probes import alive, wait_until
from gserver.testing.process import WAIT, ServerProcess
from tests.conftest import clean_env, gserver_command, run_gserver

APP = "def handle(conn):\n    conn.send({!r})\n"
JSON_LOCAL = ("--host", "127.0.0.1", "--log-format", "json")


@pytest.fixture
def reloading(tmp_path: Path) -> Iterator[ServerProcess]:
    """``python -m gserver --reload --handler app:handle`` serving app.py of tmp_path."""
    (tmp_path / "app.py").write_text(APP.format("v1\n"))
    proc = subprocess.Popen(
        gserver_command("--reload", "--handler", "app:handle", "--port", "0", *JSON_LOCAL),
        cwd=tmp_path,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = ServerProcess(proc)
    try:
        server.port = server.wait_for_log("listening")["port"]
        yield server
    finally:
        server.stop()


def greeting(server: ServerProcess) -> str:
    with Client("127.0.0.1", server.port) as client:
        return client.read_to_close()


def edit(path: Path, text: str, server: ServerProcess) -> int:
    """Write ``text`` to ``path``; the number of output lines before, to wait from."""
    mark = len(server.raw_stderr)
    path.write_text(text)
    return mark


def test_a_changed_handler_is_served_on_the_same_port(reloading: ServerProcess, tmp_path: Path):
    assert greeting(reloading) == "v1\n"
    first_child = reloading.wait_for_log("listening")["pid"]
    # Same size as before, within the same second: no stale bytecode may be run.
    mark = edit(tmp_path / "app.py", APP.format("v2\n"), reloading)
    assert reloading.wait_for_output("app.py changed; restarting", after=mark)
    second = reloading.wait_for_events("listening", 2)[1]
    assert second["port"] == reloading.port and second["pid"] != first_child
    assert greeting(reloading) == "v2\n"
    assert reloading.events("stopped"), "the old child stops gracefully"


def test_a_broken_change_is_one_line_and_the_old_code_serves_on(
    reloading: ServerProcess, tmp_path: Path
) -> None:
    app = tmp_path / "app.py"
    mark = edit(app, "def handle(conn)\n    conn.send('v2\\n')\n", reloading)
    line = reloading.wait_for_output("gserver: reload:", after=mark)
    assert line == (
        "gserver: reload: cannot import 'app': SyntaxError: expected ':' (app.py, line 1); "
        "still serving the previous code"
    )
    assert greeting(reloading) == "v1\n"
    assert len(reloading.events("listening")) == 1

    mark = edit(app, APP.format("fixed\n"), reloading)
    reloading.wait_for_output("app.py changed; restarting", after=mark)
    reloading.wait_for_events("listening", 2)
    assert greeting(reloading) == "fixed\n"


def test_a_change_elsewhere_than_py_files_changes_nothing(
    reloading: ServerProcess, tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    mark = edit(tmp_path / "app.py", APP.format("v2\n"), reloading)
    line = reloading.wait_for_output("changed; restarting", after=mark)
    assert "notes.txt" not in line


def test_sigterm_stops_the_child_gracefully_and_exits_with_its_status(
    reloading: ServerProcess,
) -> None:
    child = reloading.wait_for_log("listening")["pid"]
    client = Client("127.0.0.1", reloading.port)
    client.read_line()
    reloading.signal(signal.SIGTERM)
    assert reloading.wait() == 0
    assert reloading.events("stopped")
    assert not alive(child)
    client.close()


def test_the_child_does_not_outlive_a_killed_supervisor(reloading: ServerProcess) -> None:
    child = reloading.wait_for_log("listening")["pid"]
    reloading.signal(signal.SIGKILL)
    reloading.wait()
    wait_until(lambda: not alive(child), WAIT, "the child stops with its supervisor")


def test_reload_with_workers_is_refused_in_one_line(tmp_path: Path) -> None:
    result = run_gserver("--reload", "--workers", "2", "--mode", "basic", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "gserver: error: setting 'reload': cannot be combined with workers > 1 (got workers = 2)"
    )


def test_a_port_in_use_ends_the_supervisor_with_the_childs_status(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP.format("v1\n"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_gserver(
            "--reload", "--handler", "app:handle", "--port", str(port), *JSON_LOCAL, cwd=tmp_path
        )
    assert result.returncode == 1
    assert f"gserver: error: port {port} is already in use on 127.0.0.1" in result.stderr


def test_the_handlers_package_is_watched_where_it_lies_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "elsewhere" / "myapp"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.delitem(sys.modules, "myapp", raising=False)
    importlib.import_module("myapp")  # the server process has imported it when it asks
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert watched_directories("myapp:handle") == [package.parent.resolve()]  # inside: once
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert watched_directories("myapp.handlers:handle") == [work.resolve(), package.resolve()]
    assert watched_directories("pytest:main") == [work.resolve()]  # installed: not watched
    assert watched_directories(None) == [work.resolve()]
