"""The benchmark runs end to end in quick mode and writes its report and chart.

No timing is asserted: this only checks that the instrument works on this machine.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_quick_bench_writes_report_and_chart(tmp_path: Path) -> None:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler `cc` on PATH: the benchmark's load generator cannot be built")
    pytest.importorskip("matplotlib", reason="matplotlib (dev extra) draws the benchmark chart")
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    reports = sorted(tmp_path.glob("*.md"))
    assert len(reports) == 1, list(tmp_path.iterdir())
    day = reports[0].stem
    dt.date.fromisoformat(day)
    chart = tmp_path / f"{day}.png"
    assert chart.is_file()
    assert chart.read_bytes().startswith(b"\x89PNG")
    text = reports[0].read_text()
    for heading in ("## Machine", "## Versions", "## Settings", "## Ratios"):
        assert heading in text
    for scenario, column in [
        ("echo", "round trips/s"),
        ("chat", "deliveries/s"),
        ("idle", "bytes/conn"),
        ("startup", "startup ms"),
    ]:
        section = text.split(f"## {scenario}: ", 1)
        assert len(section) == 2, f"no {scenario} section"
        body = section[1].split("\n## ", 1)[0]
        assert column in body and "| median |" in body, f"no {scenario} table"
        assert "gserver" in body
    if "the Node side is skipped" not in text:
        assert "node basic-server.js" in text
    assert "ratios" in result.stdout
