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


@pytest.mark.slow
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
    cluster = text.split("## cluster: ", 1)
    assert len(cluster) == 2, "no cluster section"
    body = cluster[1].split("\n## ", 1)[0]
    if shutil.which("redis-server") is None:
        assert "the cluster scenario is skipped: `redis-server` is not on PATH" in text
    if "the cluster scenario is skipped" in text:
        assert "> Scenario skipped: " in body and "| median |" not in body
    else:
        assert "deliveries/s" in body and "| median |" in body, "no cluster table"
        assert "gserver chat --workers 2 + Redis" in body
        assert "failed (below)" not in body, body
        assert "2 workers + Redis / 1 process: deliveries/s" in text
    assert "ratios" in result.stdout


def test_cluster_scenario_skipped_without_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without redis-server the cluster scenario starts nothing and says why in the report."""
    from bench.catalog import scenarios
    from bench.procs import redis_available
    from bench.report import markdown
    from bench.scenarios import Config, run_scenario

    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server there
    why = redis_available()
    assert why == "`redis-server` is not on PATH"
    cfg = Config(rounds=1)
    res = run_scenario(scenarios(REPO)["cluster"], cfg, tmp_path / "loadgen", tmp_path, None, why)
    assert res.runs == [] and res.specs == []
    text = markdown([res], cfg, dt.datetime.now(dt.UTC), 0.0, None, [])
    body = text.split("## cluster: ", 1)[1]
    assert "> Scenario skipped: `redis-server` is not on PATH" in body
    assert "| median |" not in body
    assert "| chat, 2 workers + Redis / 1 process: deliveries/s | " in text and "n/a" in text
