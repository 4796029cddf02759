"""Every scenario of the bench, in report order: this module's job alone, so that the
scenario modules import the shared parts (bench/scenarios.py) and nothing imports back."""

from __future__ import annotations

from pathlib import Path

from bench.churn import churn_scenarios
from bench.scenarios import Scenario, core_scenarios
from bench.ws import ws_scenarios


def scenarios(gserver_cwd: Path, baseline_cwd: Path | None = None) -> dict[str, Scenario]:
    return {
        **core_scenarios(gserver_cwd, baseline_cwd),
        **ws_scenarios(gserver_cwd, baseline_cwd),
        **churn_scenarios(gserver_cwd),
    }
