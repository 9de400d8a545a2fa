"""How long the one analysis takes on a large trace (500,000 sends, ~550,000 deliveries).

The trace is synthetic but shaped like a real one: spread-out latencies (almost every
microsecond value distinct), 0.1% lost, 10% redelivered, rows shuffled. Prints the median of
several runs; the machine is shared, so compare figures from one run, not across runs.

    python bench/bench_analysis.py [--messages N] [--repeat K]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from brokerlab.core.analysis import analyze
from brokerlab.core.scenario import parse_scenario
from brokerlab.core.trace import TIMELINE_SCHEMA, Trace, empty, make_deliveries, make_sends


def synthetic_trace(n: int, seed: int = 7) -> Trace:
    """A trace with losses, redeliveries and long-tailed latencies."""
    rng = np.random.default_rng(seed)
    producer = (np.arange(n) % 4).astype("int32")
    seq = (np.arange(n) // 4).astype("int64")
    t_intended = np.sort(rng.uniform(0, 600, n))
    t_sent = t_intended + rng.exponential(0.0002, n)
    t_acked = t_sent + rng.exponential(0.001, n)
    sends = make_sends(
        producer,
        seq,
        rng.integers(0, 16, n),
        np.full(n, 256),
        t_intended,
        t_sent,
        t_acked,
        np.full(n, "acked"),
        np.ones(n, dtype="int16"),
    )
    t_delivered = t_sent + rng.exponential(0.5, n)
    ids = sends["msg_id"].to_numpy(dtype=object)
    keep = rng.random(n) > 0.001
    again = rng.choice(np.flatnonzero(keep), n // 10)
    msg_id = np.concatenate([ids[keep], ids[again]])
    t = np.concatenate([t_delivered[keep], t_delivered[again] + 1.0])
    delivery_no = np.r_[np.ones(keep.sum()), np.full(len(again), 2)].astype("int32")
    deliveries = make_deliveries(msg_id, np.zeros(len(msg_id), "int32"), delivery_no, t, t + 0.001)
    deliveries = deliveries.iloc[rng.permutation(len(deliveries))].reset_index(drop=True)
    return Trace(sends, deliveries, empty(TIMELINE_SCHEMA))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    trace = synthetic_trace(args.messages)
    scenario = parse_scenario(
        {
            "name": "bench",
            "producers": {"rate": "800/s", "messages": args.messages, "warmup": "5s", "keys": 16},
            "broker": {"kind": "nats"},
            "requirements": {
                "latency": {"end_to_end": {"p99": "50ms"}},
                "ordering": "per-key",
                "throughput": "700/s",
            },
        }
    )
    timings = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        analysis = analyze(trace, scenario, target="bench", seed=1, duration_s=600)
        timings.append(time.perf_counter() - started)
    print(f"sends {len(trace.sends):,}  deliveries {len(trace.deliveries):,}")
    print(f"analyze: median {statistics.median(timings):.3f} s over {args.repeat} runs")
    print("counts:", analysis.to_metrics()["counts"])


if __name__ == "__main__":
    main()
