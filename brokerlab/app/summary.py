"""The console summary printed when a run ends: counts, latency percentiles, throughput, verdict.

It reads only ``metrics.json``-shaped data, the same numbers reports and notebooks show.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

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


def requirements_table(metrics: dict[str, Any]) -> Table:
    """Requirement by requirement, with the measured value and the verdict."""
    table = Table(title=f"requirements: {metrics['verdict'].upper()}", title_justify="left")
    for name in ("requirement", "bound", "measured", "ok"):
        table.add_column(name)
    for req in metrics["requirements"]:
        ok = {True: "[green]ok[/]", False: "[red]FAIL[/]", None: "[yellow]n/a[/]"}[req["ok"]]
        table.add_row(req["name"], str(req["bound"]), str(req["measured"]), ok)
    return table


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
    verdict = metrics["verdict"]
    colour = "green" if verdict == "pass" else "red"
    console.print(f"verdict: [{colour}]{verdict}[/]   results: {path}")
    for warning in warnings or []:
        console.print(f"[yellow]warning:[/] {warning}")
