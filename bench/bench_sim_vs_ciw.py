"""Benchmark: the lab's simulator against Ciw on the same M/M/1 model (scenarios/mm1.yaml).

Prints messages (customers) per second for each, their ratio (goal: lab >= 5x Ciw), the wall
time of the full 500,000-message ``simulate`` (trace DataFrames included), the time to also write
the trace as Parquet, and the peak memory of a 1,000,000-message run measured in a fresh
subprocess. Ciw is much slower, so it simulates fewer customers: compare rates, not times.
Lab and Ciw runs alternate, so load from other work hits both alike; the ratio is given from
wall times and from CPU times (this process's, which other load changes far less).

Run: ``python bench/bench_sim_vs_ciw.py [--repeats 5] [--ciw-customers 20000]``
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ciw
import numpy as np

from brokerlab.core.scenario import Scenario, load_scenario
from brokerlab.sim import simulate

ROOT = Path(__file__).resolve().parents[1]
MM1 = ROOT / "scenarios" / "mm1.yaml"


def with_messages(scenario: Scenario, messages: int) -> Scenario:
    producers = scenario.producers.model_copy(update={"messages": messages})
    return scenario.model_copy(update={"producers": producers})


def lab_once(scenario: Scenario, seed: int) -> tuple[float, float, float]:
    """Wall and CPU time of one ``simulate`` (trace included) and its mean completion time."""
    start, cpu = time.perf_counter(), time.process_time()
    trace = simulate(scenario, seed).trace
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    sends = trace.sends.set_index("msg_id")["t_intended"]
    deliveries = trace.deliveries
    done = deliveries["t_done"].to_numpy() - sends.loc[deliveries["msg_id"]].to_numpy()
    return elapsed, cpu, float(done.mean())


def ciw_once(customers: int, seed: int) -> tuple[float, float, float]:
    """Wall and CPU time of Ciw on M/M/1 (800/s arrivals, 1,000/s service) and its mean
    sojourn time."""
    start, cpu = time.perf_counter(), time.process_time()
    network = ciw.create_network(
        arrival_distributions=[ciw.dists.Exponential(rate=800.0)],
        service_distributions=[ciw.dists.Exponential(rate=1000.0)],
        number_of_servers=[1],
    )
    ciw.seed(seed)
    simulation = ciw.Simulation(network)
    simulation.simulate_until_max_customers(customers, method="Complete")
    records = simulation.get_all_records()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    sojourn = np.array([r.exit_date - r.arrival_date for r in records])
    return elapsed, cpu, float(sojourn.mean())


# VmHWM (peak resident set) belongs to the process's fresh address space; ru_maxrss would not
# do: Linux carries it over from the parent through fork and exec.
PEAK_SCRIPT = """
import re, sys, time
from brokerlab.core.scenario import load_scenario
from brokerlab.sim import simulate
def hwm():
    status = open("/proc/self/status").read()
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
before = hwm()
scenario = load_scenario(sys.argv[1])
producers = scenario.producers.model_copy(update={"messages": int(sys.argv[2])})
scenario = scenario.model_copy(update={"producers": producers})
start = time.perf_counter()
result = simulate(scenario, 1)
elapsed = time.perf_counter() - start
peak = hwm()
print(before, peak, elapsed, len(result.trace.deliveries))
"""


def peak_memory(messages: int) -> tuple[float, float, float]:
    """Peak RSS (MiB) of a fresh process running ``messages``, its peak after imports, and time."""
    out = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(MM1), str(messages)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    before, peak, elapsed = int(out[0]) / 1024, int(out[1]) / 1024, float(out[2])
    return peak, before, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ciw-customers", type=int, default=20_000)
    parser.add_argument("--memory-messages", type=int, default=1_000_000)
    args = parser.parse_args()

    scenario = load_scenario(MM1)
    messages = scenario.producers.total_messages
    print(f"M/M/1 (rho 0.8, theory mean sojourn 5.000 ms); {args.repeats} repetitions, median")
    print(f"lab: {messages:,} messages per run (scenarios/mm1.yaml, trace DataFrames included)")
    print(f"ciw: {args.ciw_customers:,} customers per run (fewer: Ciw is slower; compare rates)")
    print()

    lab, ciw_runs = [], []
    for seed in range(1, args.repeats + 1):  # alternating: load changes hit both alike
        lab.append(lab_once(scenario, seed))
        ciw_runs.append(ciw_once(args.ciw_customers, seed))
    print(f"{'':4} {'median s':>9} {'per second':>12} {'CPU s':>7} {'per CPU s':>10} "
          f"{'mean sojourn ms':>16}")  # fmt: skip
    ratios = []
    for name, runs, count in (("lab", lab, messages), ("ciw", ciw_runs, args.ciw_customers)):
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        ratios.append((count / wall, count / cpu))
        print(f"{name:4} {wall:9.2f} {count / wall:12,.0f} {cpu:7.2f} {count / cpu:10,.0f} "
              f"{1e3 * runs[0][2]:16.3f}")  # fmt: skip
    (lab_wall, lab_cpu), (ciw_wall, ciw_cpu) = ratios
    print(f"ratio lab / ciw: {lab_wall / ciw_wall:.1f}x wall, {lab_cpu / ciw_cpu:.1f}x CPU "
          f"(goal >= 5x); load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print()

    print(f"full simulate, {messages:,} messages, seed 1: {lab[0][0]:.2f} s (goal well under 6 s)")
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        simulate(scenario, 1).trace.write(folder)
        print(f"simulate + write Parquet: {time.perf_counter() - start:.2f} s")
    peak, before, elapsed = peak_memory(args.memory_messages)
    print(
        f"peak memory, {args.memory_messages:,} messages: {peak:,.0f} MiB max RSS "
        f"({before:,.0f} MiB after imports; goal < 1 GiB); simulate took {elapsed:.2f} s"
    )
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(this benchmark process peaked at {own:,.0f} MiB)")


if __name__ == "__main__":
    main()
