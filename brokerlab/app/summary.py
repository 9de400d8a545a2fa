"""The console summary printed when a run ends: counts, latency percentiles, throughput, verdict.

It reads only ``metrics.json``-shaped data, the same numbers reports and notebooks show.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from brokerlab.core.analysis import CAPABILITY_REQUIREMENTS, inconclusive_reasons
from brokerlab.core.vocabulary import LATENCY_STATISTICS

LATENCY_COLUMNS = LATENCY_STATISTICS


def _ms(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 100 else f"{value:.1f}"


def latency_table(metrics: dict[str, Any], title: str = "latency (ms)") -> Table:
    """Percentiles of every latency kind, one row each."""
    table = Table(title=title, title_justify="left")
    table.add_column("latency")
    for name in (*LATENCY_COLUMNS, "count"):
        table.add_column(name.replace("_", "."), justify="right")
    for kind, stats in metrics["latency_ms"].items():
        table.add_row(kind, *(_ms(stats.get(c)) for c in LATENCY_COLUMNS), str(stats["count"]))
    return table


def counts_table(metrics: dict[str, Any]) -> Table:
    """Delivery counts and throughput side by side."""
    table = Table(title="delivery", title_justify="left")
    counts = metrics["counts"]
    for name in counts:
        table.add_column(name, justify="right")
    table.add_row(*(str(v) for v in counts.values()))
    return table


#: How each verdict is coloured on the terminal.
VERDICT_COLOURS = {"pass": "green", "fail": "red", "inconclusive": "yellow"}


def judgement(requirement: dict[str, Any]) -> str:
    """One requirement's state in words: ``ok``, ``FAIL``, ``cannot tell`` (a measured
    requirement this run gave no data for) or ``n/a`` (a capability a run cannot show)."""
    if requirement["ok"] is True:
        return "ok"
    if requirement["ok"] is False:
        return "FAIL"
    return "n/a" if requirement["name"] in CAPABILITY_REQUIREMENTS else "cannot tell"


def requirements_table(metrics: dict[str, Any]) -> Table:
    """Requirement by requirement, with the measured value, the judgement and why."""
    table = Table(title=f"requirements: {metrics['verdict'].upper()}", title_justify="left")
    for name in ("requirement", "bound", "measured", "ok", "note"):
        table.add_column(name)
    colours = {"ok": "green", "FAIL": "red", "cannot tell": "yellow", "n/a": "dim"}
    for req in metrics["requirements"]:
        said = judgement(req)
        measured = "-" if req["measured"] is None else str(req["measured"])
        table.add_row(
            req["name"],
            str(req["bound"]),
            measured,
            f"[{colours[said]}]{said}[/]",
            escape(req.get("note") or ""),
        )
    return table


def verdict_line(metrics: dict[str, Any]) -> str:
    """The verdict, and for anything but a pass, which requirements decided it and why."""
    verdict = metrics["verdict"]
    line = f"verdict: [{VERDICT_COLOURS.get(verdict, 'red')}]{verdict}[/]"
    if verdict == "fail":
        failed = [req["name"] for req in metrics["requirements"] if req["ok"] is False]
        line += escape(f" (not met: {', '.join(failed)})") if failed else ""
    elif verdict == "inconclusive":
        line += escape(f" (cannot tell: {'; '.join(inconclusive_reasons(metrics))})")
    return line


def print_summary(
    console: Console, metrics: dict[str, Any], path: str, warnings: list[str] | None = None
) -> None:
    """The end-of-run report on the terminal."""
    tput = metrics["throughput_per_s"]
    console.print(
        f"[bold]{metrics['scenario']}[/] on [bold]{metrics['target']}[/] (seed {metrics['seed']}), "
        f"{metrics['duration_s']:.3f} s of run time"
    )
    console.print(counts_table(metrics))
    console.print(latency_table(metrics))
    console.print(
        "throughput /s: "
        + ", ".join(f"{k} {v:,.1f}" if v is not None else f"{k} -" for k, v in tput.items())
    )
    if metrics["requirements"]:
        console.print(requirements_table(metrics))
    console.print(verdict_line(metrics))
    console.print(f"results: {escape(path)}")
    for warning in warnings or []:
        console.print(f"[yellow]warning:[/] {warning}")
