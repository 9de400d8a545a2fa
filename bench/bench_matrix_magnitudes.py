"""The guarantee matrix's magnitudes: the ideal simulator, the profiled simulator, the real broker.

The matrix judges each cell by whether a count is zero or not; this bench prints how large the
counts are, to see whether performance profiles bring the simulator's loss and duplicate figures
closer to the real broker's. For every cell (``scenarios/faults/CONFIG--FAULT.yaml``) it runs the
matrix (``brokerlab.app.matrix.run_matrix``: the cell, its fault-free control and the judgement
against ``brokerlab/data/fault_expectations.yaml``) three ways:

- ``sim-none``: the simulator with ``profile: none`` (the ideal broker, no costs: "before");
- ``sim-prof``: the simulator with ``--profile`` (default ``auto``: this machine's calibrated
  profile for the broker kind, else the shipped default: "after");
- ``real``: the real broker the cell names, started by the lab itself (``--no-real`` skips it).

and prints one table of lost / duplicates / redelivered / unknown per way (medians over
``--seeds`` seeds) with the matrix's status for each, and writes it as ``magnitudes.csv`` in the
output folder (a temporary folder unless ``--out`` is given; never inside the repository). It
asserts nothing.

    python bench/bench_matrix_magnitudes.py [--cells GLOB[,GLOB]] [--seeds N] [--no-real]
                                            [--profile auto] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from brokerlab.app.matrix import Cell, MatrixError, find_cells, run_matrix
from brokerlab.app.runner import RunOptions
from brokerlab.core import results

REPO = Path(__file__).resolve().parents[1]
CELLS = REPO / "scenarios" / "faults"
#: The counts shown per way, in table order, with their short headers.
SHOWN = (("lost", "lost"), ("duplicates", "dup"), ("redelivered", "redel"), ("unknown", "unk"))
#: The counts the CSV holds per way (medians, and each seed's figure).
CSV_COUNTS = ("lost", "unprocessed", "duplicates", "redelivered", "unknown", "out_of_order")
#: How the printed table abbreviates a status.
SHORT = {"match": "ok", "mismatch": "MISMATCH", "inconclusive": "inconcl"}
#: How the printed table abbreviates a rule of the expectation table.
RULE_MARK = {"none": "0", "some": "+"}
RULE_LETTER = {
    "lost": "L",
    "duplicates": "D",
    "redelivered": "R",
    "out_of_order": "O",
    "unknown": "U",
}


def select_cells(pattern: str) -> list[Cell]:
    """The matrix's cells whose ``CONFIG--FAULT`` name matches ``pattern`` (a shell glob, or
    several separated by commas: a few cells' real runs in one table)."""
    globs = [g.strip() for g in pattern.split(",") if g.strip()]
    cells = [
        c
        for c in find_cells(CELLS)
        if any(fnmatch.fnmatch(f"{c.config}--{c.fault}", g) for g in globs)
    ]
    if not cells:
        raise MatrixError(f"--cells {pattern!r}: matches no cell of {CELLS}")
    return cells


def ways(profile: str, real: bool) -> list[tuple[str, list[str], str | None]]:
    """(name, matrix targets, simulator profile) for each way a cell is run."""
    chosen = [("sim-none", ["sim"], "none"), ("sim-prof", ["sim"], profile)]
    if real:
        chosen.append(("real", ["real"], None))
    return chosen


def run_all(
    cells: list[Cell], seeds: int, profile: str, real: bool, work: Path
) -> tuple[dict[tuple[str, str, str], list[dict[str, Any]]], dict[str, str]]:
    """Run the matrix on the chosen cells once per way and seed.

    Returns the matrix records by (config, fault, way), one per seed, and, per broker kind, the
    profile the ``sim-prof`` runs used (as their run.json describes it).
    """
    folder = work / "cells"
    folder.mkdir()
    for cell in cells:
        shutil.copy(cell.path, folder / cell.path.name)
    records: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    used: dict[str, str] = {}
    for seed in range(1, seeds + 1):
        for name, targets, spec in ways(profile, real):
            started = time.monotonic()

            def show(cell: Cell, target: str, name: str = name, seed: int = seed) -> None:
                print(f"  {name} seed {seed}: {cell.config} x {cell.fault} on {target}", flush=True)

            options = RunOptions(
                seed=seed, out=work / f"{name}-seed{seed}", results_dir=work, profile=spec
            )
            result = run_matrix(folder, targets, options, on_cell=show)
            print(f"{name} seed {seed}: {time.monotonic() - started:.0f} s", flush=True)
            for record in result.records.to_dict("records"):
                records.setdefault((record["config"], record["fault"], name), []).append(record)
                if name == "sim-prof":
                    used.setdefault(record["broker"], _profile_of(record["run"]))
    return records, used


def _profile_of(run: str) -> str:
    """How a simulator run's run.json names the profile it charged."""
    try:
        manifest = json.loads((Path(run) / results.RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unknown (run failed)"
    profile = manifest.get("profile") or {}
    return str(profile.get("describe") or profile.get("name") or "unknown")


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number != number else number  # NaN: a failed run


def median(values: Sequence[Any]) -> float | None:
    """The median of the runs that have the count; None if none has it."""
    numbers = [n for n in (_number(v) for v in values) if n is not None]
    return statistics.median(numbers) if numbers else None


def status_of(records: Sequence[dict[str, Any]]) -> str:
    """One status for a cell's seeds: the status if all agree, else how many of each."""
    statuses = [str(r.get("status") or "") for r in records]
    if len(set(statuses)) == 1:
        return statuses[0]
    counts = {s: statuses.count(s) for s in dict.fromkeys(statuses)}
    return " ".join(f"{n}/{len(statuses)} {s}" for s, n in counts.items())


def rules_text(cell: Cell) -> str:
    """The cell's checked rules, short: ``L+`` lost some, ``D0`` duplicates none, ..."""
    return " ".join(f"{RULE_LETTER[k]}{RULE_MARK[v]}" for k, v in cell.rules().items())


def table(
    cells: list[Cell], records: dict[tuple[str, str, str], list[dict[str, Any]]], names: list[str]
) -> list[dict[str, Any]]:
    """One row per cell: per way the median counts, each seed's counts, the status and reasons."""
    rows = []
    for cell in cells:
        row: dict[str, Any] = {
            "config": cell.config,
            "fault": cell.fault,
            "expects": rules_text(cell),
        }
        for name in names:
            runs = records.get((cell.config, cell.fault, name), [])
            for key in CSV_COUNTS:
                row[f"{name}_{key}"] = median([r.get(key) for r in runs])
            for key in CSV_COUNTS:
                row[f"{name}_{key}_per_seed"] = " ".join(_fmt(_number(r.get(key))) for r in runs)
            row[f"{name}_status"] = status_of(runs) if runs else ""
            row[f"{name}_seeds"] = len(runs)
            row[f"{name}_reason"] = " | ".join(str(r.get("reason") or "") for r in runs)
        rows.append(row)
    return rows


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"


def print_table(rows: list[dict[str, Any]], names: list[str]) -> None:
    """The table as text: a block of counts and a status per way."""
    head = f"{'config':<27} {'fault':<15} {'expects':<12}"
    for name in names:
        head += " | " + f"{name:^8}" + "".join(f" {short:>5}" for _, short in SHOWN) + " status"
    print(head)
    print("-" * len(head))
    for row in rows:
        line = f"{row['config']:<27} {row['fault']:<15} {row['expects']:<12}"
        for name in names:
            lost = _fmt(row[f"{name}_lost"])
            unprocessed = row[f"{name}_unprocessed"]
            if unprocessed:
                lost += f"+{_fmt(unprocessed)}"
            cells = [lost] + [_fmt(row[f"{name}_{key}"]) for key, _ in SHOWN[1:]]
            status = row[f"{name}_status"]
            line += " | " + " " * 8 + "".join(f" {c:>5}" for c in cells)
            line += " " + SHORT.get(status, status)
        print(line)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """The table as CSV, one column per way and count (medians), status and reasons."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def changes(rows: list[dict[str, Any]]) -> list[str]:
    """Cells whose status differs between the ideal and the profiled simulator."""
    return [
        f"{r['config']} x {r['fault']}: sim-none {r['sim-none_status']} -> "
        f"sim-prof {r['sim-prof_status']}"
        for r in rows
        if r["sim-none_status"] != r["sim-prof_status"]
    ]


def mismatch_reasons(rows: list[dict[str, Any]], names: list[str]) -> list[str]:
    """Why each way of each cell is not a match: the judgement's reason for every seed."""
    said = []
    for row in rows:
        for name in names:
            if row[f"{name}_status"] not in ("match", ""):
                said.append(f"{row['config']} x {row['fault']} {name}: {row[f'{name}_reason']}")
    return said


def _output_folder(out: str | None) -> Path:
    if out is None:
        return Path(tempfile.mkdtemp(prefix="bench-matrix-magnitudes-"))
    path = Path(out).resolve()
    if path.is_relative_to(REPO):
        raise MatrixError(f"--out {out}: inside the repository; runs never go there")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise MatrixError(f"--out {out}: already exists and is not empty; runs never overwrite")
    path.mkdir(parents=True, exist_ok=True)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cells", default="*", help="globs on CONFIG--FAULT, comma-separated (default: all)"
    )
    parser.add_argument("--seeds", type=int, default=1, help="seeds 1..N, medians (default 1)")
    parser.add_argument("--no-real", action="store_true", help="simulator only")
    parser.add_argument(
        "--profile", default="auto", help="the 'after' profile: auto, default or a file"
    )
    parser.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    args = parser.parse_args(argv)
    try:
        if args.seeds < 1:
            raise MatrixError(f"--seeds {args.seeds}: must be at least 1")
        if args.profile == "none":
            raise MatrixError("--profile none: that is the 'before' way already; name another")
        cells = select_cells(args.cells)
        work = _output_folder(args.out)
    except MatrixError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    names = [name for name, _, _ in ways(args.profile, not args.no_real)]
    print(
        f"{len(cells)} cells x {len(names)} ways x {args.seeds} seeds -> {work}\n"
        f"BROKERLAB_PROFILES={os.environ.get('BROKERLAB_PROFILES', '(unset)')}; "
        f"load average {os.getloadavg()[0]:.1f} at start",
        flush=True,
    )
    started = time.monotonic()
    records, used = run_all(cells, args.seeds, args.profile, not args.no_real, work)
    rows = table(cells, records, names)
    print()
    print(
        f"== guarantee matrix magnitudes: medians over {args.seeds} seed(s); "
        "lost+N = N more unprocessed (taken by a consumer that died with them)"
    )
    print("   expects: L lost, D duplicates, R redelivered, O out of order; + some, 0 none")
    print_table(rows, names)
    print()
    print(f"sim-none profile: none (ideal broker, no costs); sim-prof --profile {args.profile}:")
    for kind, describe in sorted(used.items()):
        print(f"  {kind}: {describe}")
    reasons = mismatch_reasons(rows, names)
    if reasons:
        print("not a match (the matrix's reason; seeds separated by |):")
        for line in reasons:
            print(f"  {line}")
    moved = changes(rows)
    print("status changed by the profile: " + ("; ".join(moved) if moved else "none"))
    csv_path = work / "magnitudes.csv"
    write_csv(rows, csv_path)
    print(f"table: {csv_path}")
    print(
        f"bench took {time.monotonic() - started:.0f} s; "
        f"load average {os.getloadavg()[0]:.1f} at the end (shared machine)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
