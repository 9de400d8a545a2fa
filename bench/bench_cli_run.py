"""Wall time of the whole `brokerlab run scenarios/mm1.yaml --target sim` against Ciw.

The lab's figure includes everything a user waits for: start-up and imports, the 500,000-message
simulation, the analysis, writing the trace as Parquet, metrics.json and run.json. Side by side,
alternating with it, the same M/M/1 model (800/s arrivals, 1,000/s service) simulated for the
same number of customers by Ciw in a fresh Python process of its own (its import included, its
records collected). Goal: the lab at least 3x faster than Ciw. Prints every run, the medians and
the ratio, and the load average: the machine is shared, so read the ratio, not the seconds.

    python bench/bench_cli_run.py [--repeat 3] [--scenario scenarios/mm1.yaml] [--no-ciw]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Ciw on the M/M/1 reference, as a user would run it: one process, import included.
CIW_SCRIPT = """
import sys
import ciw
network = ciw.create_network(
    arrival_distributions=[ciw.dists.Exponential(rate=800.0)],
    service_distributions=[ciw.dists.Exponential(rate=1000.0)],
    number_of_servers=[1],
)
ciw.seed(1)
simulation = ciw.Simulation(network)
simulation.simulate_until_max_customers(int(sys.argv[1]), method="Complete")
records = simulation.get_all_records()
print(len(records))
"""


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scenario", default=str(ROOT / "scenarios" / "mm1.yaml"))
    parser.add_argument("--no-ciw", action="store_true", help="time the lab only")
    args = parser.parse_args()
    from brokerlab.core.scenario import load_scenario

    customers = load_scenario(args.scenario).producers.total_messages
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    walls: list[float] = []
    ciw_walls: list[float] = []
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(args.repeat):  # alternating: load changes hit both alike
            command = [sys.executable, "-m", "brokerlab.cli", "run", args.scenario, "-q"]
            command += ["--target", "sim", "--out", str(Path(scratch, f"run{index}"))]
            walls.append(timed(command))
            line = f"  {index + 1}: brokerlab run {walls[-1]:6.2f} s"
            if not args.no_ciw:
                ciw_walls.append(timed([sys.executable, "-c", CIW_SCRIPT, str(customers)]))
                line += f"   ciw {customers:,} customers {ciw_walls[-1]:6.2f} s"
            print(line + f"   (load {os.getloadavg()[0]:.1f})", flush=True)
    lab = statistics.median(walls)
    print(f"brokerlab run {Path(args.scenario).name} --target sim: median {lab:.2f} s "
          f"over {args.repeat} runs")  # fmt: skip
    if ciw_walls:
        ciw = statistics.median(ciw_walls)
        print(f"ciw, the same {customers:,} customers (process, import included): median "
              f"{ciw:.2f} s")  # fmt: skip
        print(f"ratio ciw / lab: {ciw / lab:.1f}x (goal >= 3x)")


if __name__ == "__main__":
    main()
