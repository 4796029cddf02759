"""The report: machine, versions, settings, per-round numbers, medians, ratios; and a chart."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from bench.procs import REPO, ServerSpec, node_available
from bench.scenarios import Config, Ratio, RunResult, ScenarioResult


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "CPU": cpu,
        "memory": mem,
        "kernel": platform.release(),
    }


def versions(gserver_commit: str | None = None) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("gevent", "greenlet", "structlog", "gserver"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    out["node"] = _run(["node", "--version"]) or "not available"
    out["cc"] = (_run(["cc", "--version"]).splitlines() or ["not available"])[0]
    if gserver_commit:
        out["gserver commit"] = f"{gserver_commit[:12]} (gserver/ exported from git, --gserver-ref)"
    else:
        commit = _run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO) or "unknown"
        dirty = _run(["git", "status", "--porcelain", "--", "gserver"], cwd=REPO)
        note = " (working tree, with uncommitted changes in gserver/)" if dirty else ""
        out["gserver commit"] = commit + note
    return out


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def scenario_tables(res: ScenarioResult) -> list[str]:
    header = ["server", "round", *(c.header for c in res.columns)]
    rounds: list[list[str]] = []
    for run in res.runs:
        if run.error:
            last = run.error.strip().splitlines()[-1].replace("|", "/")[:120]
            rounds.append(
                [run.spec.label, str(run.round), f"failed (below): {last}"]
                + [""] * (len(res.columns) - 1)
            )
        else:
            rounds.append(
                [
                    run.spec.label,
                    str(run.round),
                    *(c.show(run.metrics.get(c.key)) for c in res.columns),
                ]
            )
    medians = [
        [f"**{spec.label}**", "median", *(c.show(res.median(spec.key, c.key)) for c in res.columns)]
        for spec in res.specs
    ]
    return [
        "Medians:",
        "",
        *_table(header, medians),
        "",
        "Every round:",
        "",
        *_table(header, rounds),
    ]


def ratio_rows(results: list[ScenarioResult]) -> list[tuple[Ratio, float | None]]:
    rows = []
    for res in results:
        keys = {s.key for s in res.specs}
        for ratio in res.ratios:
            value = res.ratio(ratio) if {ratio.num, ratio.den} <= keys else None
            rows.append((ratio, value))
    return rows


def ratios_table(results: list[ScenarioResult]) -> list[str]:
    rows = [
        [r.label, f"{r.num} / {r.den}", fmt_ratio(v), f"{r.better} is better for {r.good_for}"]
        for r, v in ratio_rows(results)
    ]
    return _table(["measure", "ratio of medians", "value", "reading"], rows)


def _servers(results: list[ScenarioResult]) -> list[ServerSpec]:
    seen: dict[str, ServerSpec] = {}
    for res in results:
        for spec in res.specs:
            seen.setdefault(spec.label, spec)
    return list(seen.values())


def _clean_exit(spec: ServerSpec, run: RunResult) -> bool:
    """gserver must exit 0 on SIGTERM; the others may simply die of it (-15)."""
    allowed = (0, None) if spec.key.startswith("gserver") else (0, -15, None)
    return run.exit_code in allowed


def markdown(
    results: list[ScenarioResult],
    cfg: Config,
    started: dt.datetime,
    elapsed: float,
    chart_name: str | None,
    notes: list[str],
    gserver_commit: str | None = None,
) -> str:
    out = [f"# gserver benchmark, {started:%Y-%m-%d %H:%M} UTC", ""]
    out += [
        "Produced by `python -m bench " + " ".join(sys.argv[1:]) + f"` in {elapsed:.0f} s.",
        "All traffic on 127.0.0.1; loadgen is bench/loadgen.c (single-threaded epoll), "
        "on the same machine as the server.",
        "",
    ]
    for note in notes:
        out += [f"> **Note:** {note}", ""]
    out += ["## Machine", ""]
    out += [f"- {k}: {v}" for k, v in machine().items()]
    out += ["", "## Versions", ""]
    out += [f"- {k}: {v}" for k, v in versions(gserver_commit).items()]
    out += ["", "## Settings", ""]
    out += [f"- {k}: {v}" for k, v in asdict(cfg).items()]
    out += ["- servers (PORT is a free port picked per run):", ""]
    out += [f"  - {s.label}: `{s.display()}`" for s in _servers(results)]
    out += ["", "## Ratios (medians: gserver / other; cluster: 2 workers / 1 process)", ""]
    out += ratios_table(results)
    if chart_name:
        out += ["", f"![ratios]({chart_name})"]
    for res in results:
        out += ["", f"## {res.name}: {res.title}", ""]
        out += [f"> {n}" for n in res.notes]
        if res.notes:
            out.append("")
        if res.specs:
            out += scenario_tables(res)
        failed = [r for r in res.runs if r.error]
        for r in failed:
            out += [
                "",
                f"Failure of {r.spec.label}, round {r.round}:",
                "",
                "```",
                r.error or "",
                "```",
            ]
        logs = [r for r in res.runs if r.log_summary or r.killed or not _clean_exit(r.spec, r)]
        if logs:
            out += [
                "",
                "Unexpected exits, and server log lines (gserver: warning and above; "
                "others: stderr):",
                "",
            ]
            for r in logs:
                extra = " (killed after SIGTERM timeout)" if r.killed else ""
                out.append(
                    f"- {r.spec.label}, round {r.round}: exit {r.exit_code}{extra}"
                    + (f"; {r.log_summary}" if r.log_summary else "")
                )
    return "\n".join(out) + "\n"


def chart(results: list[ScenarioResult], path: Path) -> bool:
    """A horizontal bar chart of the ratios; False when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(r, v) for r, v in ratio_rows(results) if v is not None]
    fig, ax = plt.subplots(figsize=(9, 0.5 * max(len(rows), 1) + 1.5))
    if not rows:
        ax.text(0.5, 0.5, "no ratios (Node side skipped?)", ha="center", va="center")
        ax.set_axis_off()
    else:
        labels = [f"{r.label} ({r.better} is better)" for r, _ in rows]
        values = [v for _, v in rows]
        good = [(v >= 1) == (r.better == "higher") for r, v in rows]
        # bars grow from 1 (parity) towards the value, on a log axis
        ax.barh(
            labels,
            [v - 1 for v in values],
            left=1.0,
            color=["tab:green" if g else "tab:red" for g in good],
        )
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xscale("log")
        ax.invert_yaxis()
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.2f}", va="center")
        ax.set_xlabel("gserver / other, or 2 workers / 1 process (log scale; green = better)")
    ax.set_title("gserver vs references (and 2 workers vs 1 process), ratio of medians")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return bool(rows)


def stdout_summary(results: list[ScenarioResult]) -> str:
    lines: list[str] = []
    for res in results:
        lines += ["", f"{res.name}: {res.title}"]
        lines += [f"  ({n})" for n in res.notes]
        if not res.specs:
            continue
        header = ["server", *(c.header for c in res.columns)]
        rows = [
            [s.label, *(c.show(res.median(s.key, c.key)) for c in res.columns)] for s in res.specs
        ]
        widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
        for row in [header, *rows]:
            lines.append(
                "  ".join(
                    x.rjust(w) if i else x.ljust(w)
                    for i, (x, w) in enumerate(zip(row, widths, strict=True))
                )
            )
    lines += ["", "ratios (medians: gserver / other; cluster: 2 workers / 1 process):"]
    for r, v in ratio_rows(results):
        lines.append(f"  {r.label}: {fmt_ratio(v)} ({r.better} is better)")
    return "\n".join(lines)


def node_note() -> str | None:
    why = node_available()
    return None if why is None else f"the Node side was skipped: {why}"
