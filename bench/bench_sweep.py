"""Benchmark: a 40-point simulator sweep in this process (``--workers 1``) against a local Dask
cluster of 2 worker processes, medians of 3 (goal: at least 1.7x on a 2-core machine).

Each point is the M/M/1 reference (scenarios/mm1.yaml) with fewer messages, at 40 offered rates
from 200/s to 950/s. A repetition starts from an empty sweep folder (no run is reused) and its
time includes starting and stopping the cluster, running, and writing every run folder and the
sweep table: what a user waits for. Also prints the cost per point (serial time / points) and
the load average, since other work on the machine changes both.

Run: ``python bench/bench_sweep.py [--points 40] [--messages 50000] [--repeats 3] [--workers 2]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from brokerlab.app.sweep import parse_vary, run_sweep
from brokerlab.core.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]


def once(points: int, messages: int, workers: int) -> tuple[float, float, pd.DataFrame]:
    """Wall time and this process's CPU time of one whole sweep from an empty folder, and its
    table. With ``--workers 1`` the CPU time is the whole cost (every point runs here), which
    other load on the machine changes far less than the wall time."""
    scenario = load_scenario(ROOT / "scenarios" / "mm1.yaml")
    axes = [
        parse_vary(f"producers.rate=200/s..950/s:{points}"),
        parse_vary(f"producers.messages={messages}"),
    ]
    with tempfile.TemporaryDirectory(prefix="brokerlab-bench-sweep-") as folder:
        start, cpu = time.perf_counter(), time.process_time()
        result = run_sweep(scenario, axes, out=Path(folder) / "sweep", workers=workers)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return elapsed, cpu, result.table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=40)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(f"{args.points}-point simulator sweep of mm1 ({args.messages:,} messages per point), "
          f"{args.repeats} repetitions, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    times: dict[int, list[float]] = {1: [], args.workers: []}
    cpu_serial: list[float] = []
    tables: dict[int, pd.DataFrame] = {}
    for repeat in range(args.repeats):
        for workers in (1, args.workers):  # interleaved, so load changes hit both alike
            elapsed, cpu, table = once(args.points, args.messages, workers)
            times[workers].append(elapsed)
            if workers == 1:
                cpu_serial.append(cpu)
            tables[workers] = table.drop(columns=["run"])
            print(f"  repeat {repeat + 1}: --workers {workers}: {elapsed:6.1f} s "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
    pd.testing.assert_frame_equal(tables[1], tables[args.workers])
    serial, parallel = statistics.median(times[1]), statistics.median(times[args.workers])
    speedup = serial / parallel
    goal = 1.7
    print(f"--workers 1           median {serial:6.1f} s  "
          f"({serial / args.points:.2f} s per point; "
          f"CPU {statistics.median(cpu_serial) / args.points:.2f} s per point)")  # fmt: skip
    print(f"--workers {args.workers} (Dask)    median {parallel:6.1f} s  "
          f"({parallel / args.points:.2f} s per point)")  # fmt: skip
    print(
        f"speed-up {speedup:.2f}x (goal {goal}x: {'met' if speedup >= goal else 'MISSED'}); "
        "tables identical"
    )
    sys.exit(0)


if __name__ == "__main__":
    main()
