"""The harness's own cost, side by side with native ceilings on the same broker process.

For each real target: the adapter's highest sustained rates (open loop far above capacity, so the
harness sends flat out) against a native client loop on the same server, 3 repetitions each,
medians and ratios (the "burst" ceilings: everything offered at once); then each target's
sustained ceiling (the highest Poisson rate one process keeps up with while it publishes and
consumes at once, found by a short search); then end-to-end latency at 25/50/75% of that
sustained ceiling.

    python bench/bench_brokers.py                  # brokers the lab starts itself
    python bench/bench_brokers.py --machine        # the machine's Redis 6379 / NATS 4222
    python bench/bench_brokers.py --profile nats   # cProfile one adapter ceiling run
    python bench/bench_brokers.py --targets redis-streams --no-latency   # burst ceilings only
    python bench/bench_brokers.py --sweep          # where one process stops keeping up

Goals: Redis >= 50% of ``redis-benchmark -P 16`` XADD, NATS >= 90% of a bare nats-py
publish/subscribe loop, JetStream >= 90% of a bare ``publish_async`` loop. Each adapter row is
measured in one process and, where :data:`WORKER_ROWS` says, also with several worker processes
(adapters/workers.py: as many producers and consumers as workers, one of each per process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brokerlab.adapters.registry import run_real_async
from brokerlab.app.calibrate import (
    KEPT_UP,
    SUSTAINED_DELAY_P99,
    SUSTAINED_E2E_P99,
    sustained_requirements,
)
from brokerlab.core.scenario import Scenario, parse_scenario

REPEATS = 3
CEILING_MESSAGES = 100_000
PAYLOAD = 32  # bytes: the lab's 28-byte header plus a little, close to redis-benchmark's "f v"
LATENCY_FRACTIONS = (0.25, 0.50, 0.75)
LATENCY_SECONDS = 3.0
#: The sustained ceiling: the highest Poisson rate at which one process (the latency points'
#: producer and consumer) keeps up for SUSTAINED_SECONDS. "Keeps up" means all of: delivered
#: rate at least SUSTAINED_DELIVERED of the offered rate, p99 end-to-end latency under
#: SUSTAINED_E2E_P99, p99 publish delay under SUSTAINED_DELAY_P99 (seconds).
SUSTAINED_SECONDS = 2.0
SUSTAINED_DELIVERED = KEPT_UP  # calibrate's "keeps up", the one the lab's ceilings use
#: The search (``brokerlab capacity --find rate``) starts at this fraction of the burst delivered
#: ceiling, doubles until a run fails (halves while the start fails), then bisects until the
#: bracket is within SUSTAINED_TOLERANCE (3 bisections after a doubling).
SUSTAINED_START = 0.2
SUSTAINED_TOLERANCE = 0.125
SUSTAINED_MAX_STEPS = 4
GOALS = {"redis-streams": 0.5, "nats": 0.9, "nats-jetstream": 0.9}
#: Targets whose ceilings are also measured with this many worker processes (the reference
#: machine has 2 cores, which the broker shares).
WORKER_ROWS = {"redis-streams": 2, "nats": 2, "nats-jetstream": 2}
#: Offered rates of the ``--sweep`` (per target), around each target's ``single_process_rate``.
SWEEP_RATES = {
    "redis-streams": (10_000, 20_000, 40_000, 80_000),
    "nats": (30_000, 60_000, 120_000),
    "nats-jetstream": (4_000, 8_000, 16_000),
}
SWEEP_SECONDS = 2.0
#: Functions ``--profile`` lists (by own time).
PROFILE_ROWS = 30


def bench_consumers(target: str) -> dict[str, Any]:
    """One consumer fetching up to 256 at a time: the same for ceilings and latency points, so
    "75% of the ceiling" means 75% of what this very setup delivers."""
    consumers: dict[str, Any] = {"count": 1, "prefetch": 256, "processing": "0s"}
    if target == "nats":
        consumers["ack"] = "none"
    return consumers


def ceiling_scenario(target: str, messages: int = CEILING_MESSAGES, workers: int = 1) -> Scenario:
    """Offered far above any ceiling: the harness sends everything as fast as it can.

    With workers, one producer and one consumer per worker process, so every process sends and
    receives flat out.
    """
    consumers = {**bench_consumers(target), "count": workers}
    return parse_scenario(
        {
            "name": f"ceiling-{target}",
            "producers": {
                "count": workers,
                "rate": "5000000/s",
                "messages": messages,
                "arrival": "constant",
                "size": f"{PAYLOAD}B",
            },
            "broker": {"kind": target, "storage": "memory"},
            "consumers": consumers,
            "drain_timeout": "60s",
        }
    )


def latency_scenario(target: str, rate: float, seconds: float = LATENCY_SECONDS) -> Scenario:
    """Poisson load at a fraction of the ceiling, no processing time."""
    return parse_scenario(
        {
            "name": f"latency-{target}",
            "producers": {
                "rate": f"{rate:.0f}/s",
                "duration": f"{seconds:g}s",
                "size": f"{PAYLOAD}B",
            },
            "broker": {"kind": target, "storage": "memory"},
            "consumers": bench_consumers(target),
            "drain_timeout": "30s",
        }
    )


def adapter_rates(target: str, url: str, workers: int = 1) -> tuple[float, float]:
    """(publish rate, delivered rate) of one flat-out adapter run, messages per second."""
    scenario = ceiling_scenario(target, workers=workers)
    result = asyncio.run(run_real_async(scenario, target, 1, url=url, workers=workers))
    sends, deliveries = result.trace.sends, result.trace.deliveries
    start = sends["t_sent"].min()
    done = sends["t_acked"] if sends["t_acked"].notna().any() else sends["t_sent"]
    published = len(sends) / (done.max() - start)
    delivered = deliveries["msg_id"].nunique() / (deliveries["t_delivered"].max() - start)
    return published, delivered


# --------------------------------------------------------------------------- native ceilings


def redis_benchmark(port: int, host: str = "127.0.0.1") -> float:
    """``redis-benchmark -P 16 -n 200000`` running XADD: requests per second."""
    binary = shutil.which("redis-benchmark") or "/usr/bin/redis-benchmark"
    key = f"brokerlab-bench-{time.monotonic_ns()}"
    command = [binary, "-h", host, "-p", str(port), "-P", "16", "-n", "200000", "-q"]
    output = subprocess.run(
        [*command, "xadd", key, "*", "f", "v"], capture_output=True, text=True, check=True
    ).stdout
    subprocess.run([binary.replace("benchmark", "cli"), "-h", host, "-p", str(port), "del", key],
                   capture_output=True, check=False)  # fmt: skip
    match = re.findall(r"([\d.]+) requests per second", output)
    return float(match[-1])


async def bare_nats_pubsub(url: str, messages: int = CEILING_MESSAGES) -> float:
    """A bare nats-py publish loop and a callback subscriber: delivered messages per second."""
    import nats

    subject = f"brokerlab.bench.{time.monotonic_ns()}"
    publisher, subscriber = await nats.connect(url), await nats.connect(url)
    received, finished = 0, asyncio.Event()
    last = 0.0

    async def on_message(_msg: Any) -> None:
        nonlocal received, last
        received += 1
        if received == messages:
            last = time.monotonic()
            finished.set()

    await subscriber.subscribe(subject, cb=on_message, pending_msgs_limit=messages * 2)
    await subscriber.flush()
    payload = bytes(PAYLOAD)
    start = time.monotonic()
    for _ in range(messages):
        await publisher.publish(subject, payload)
    await publisher.flush()
    async with asyncio.timeout(60):
        await finished.wait()
    await publisher.close()
    await subscriber.close()
    return messages / (last - start)


async def bare_jetstream_publish(url: str, messages: int = CEILING_MESSAGES) -> float:
    """A bare ``publish_async`` loop into a memory stream: acked publishes per second."""
    import nats
    from nats.js.api import StorageType, StreamConfig

    client = await nats.connect(url)
    js = client.jetstream(publish_async_max_pending=8192)
    name = f"BROKERLAB_BENCH_{time.monotonic_ns()}"
    subject = f"brokerlab.bench.{name}"
    await js.add_stream(StreamConfig(name=name, subjects=[subject], storage=StorageType.MEMORY))
    payload = bytes(PAYLOAD)
    try:
        start = time.monotonic()
        futures = [await js.publish_async(subject, payload) for _ in range(messages)]
        async with asyncio.timeout(60):
            await asyncio.gather(*futures)
        return messages / (time.monotonic() - start)
    finally:
        await js.delete_stream(name)
        await client.close()


async def bare_jetstream_inbox(url: str, messages: int = CEILING_MESSAGES) -> float:
    """The adapter's way of publishing, bare: core publishes with one reply subject each, one
    inbox subscription counting PubAcks, at most ``harness.MAX_IN_FLIGHT`` outstanding. A
    reference, not a goal: it shows the harness's own cost on the adapter's client path."""
    import nats
    from nats.js.api import StorageType, StreamConfig

    from brokerlab.adapters.harness import MAX_IN_FLIGHT

    client = await nats.connect(url)
    js = client.jetstream()
    name = f"BROKERLAB_BENCH_{time.monotonic_ns()}"
    subject = f"brokerlab.bench.{name}"
    await js.add_stream(StreamConfig(name=name, subjects=[subject], storage=StorageType.MEMORY))
    prefix = f"{client.new_inbox()}."
    acked, room, finished = 0, asyncio.Event(), asyncio.Event()

    async def on_ack(_msg: Any) -> None:
        nonlocal acked
        acked += 1
        room.set()
        if acked == messages:
            finished.set()

    await client.subscribe(f"{prefix}*", cb=on_ack, pending_msgs_limit=MAX_IN_FLIGHT * 4)
    payload = bytes(PAYLOAD)
    try:
        start = time.monotonic()
        for sent in range(messages):
            while sent - acked >= MAX_IN_FLIGHT:
                room.clear()
                await room.wait()
            await client.publish(subject, payload, reply=f"{prefix}{sent}")
        async with asyncio.timeout(60):
            await finished.wait()
        return messages / (time.monotonic() - start)
    finally:
        await js.delete_stream(name)
        await client.close()


#: Extra native loops printed for reference (no goal), per target.
REFERENCES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "nats-jetstream": ("bare publish + reply inbox", bare_jetstream_inbox),
}


# --------------------------------------------------------------------------- brokers


@contextlib.contextmanager
def brokers(machine: bool) -> Iterator[dict[str, str]]:
    """URLs per target: the machine's services, or embedded servers started for the bench."""
    if machine:
        yield {
            "redis-streams": "redis://127.0.0.1:6379",
            "nats": "nats://127.0.0.1:4222",
            "nats-jetstream": "nats://127.0.0.1:4222",
        }
        return
    from brokerlab.adapters.embedded import embedded_for

    scenario = ceiling_scenario("redis-streams")
    with (
        tempfile.TemporaryDirectory(prefix="brokerlab-bench-") as workdir,
        embedded_for("redis-streams", scenario.broker, Path(workdir)) as redis_server,
        embedded_for("nats", scenario.broker, Path(workdir)) as nats_server,
    ):
        print(f"embedded: {redis_server.info.get('version')} at {redis_server.url}, "
              f"{nats_server.info.get('version')} at {nats_server.url}")  # fmt: skip
        yield {
            "redis-streams": redis_server.url,
            "nats": nats_server.url,
            "nats-jetstream": nats_server.url,
        }


# --------------------------------------------------------------------------- report


def _median(measure: Callable[[], float]) -> tuple[float, list[float]]:
    values = [measure() for _ in range(REPEATS)]
    return statistics.median(values), values


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:,.0f}" for v in values)


def ceilings(urls: dict[str, str]) -> dict[str, float]:
    """Print adapter vs native ceilings; return each target's median single-process delivered
    ceiling (the latency points are single-process runs)."""
    delivered_ceiling: dict[str, float] = {}
    natives: dict[str, tuple[str, Callable[[], float]]] = {
        "redis-streams": (
            "redis-benchmark -P 16 XADD",
            lambda: redis_benchmark(int(urls["redis-streams"].rsplit(":", 1)[1])),
        ),
        "nats": ("bare nats-py pub/sub", lambda: asyncio.run(bare_nats_pubsub(urls["nats"]))),
        "nats-jetstream": (
            "bare nats-py publish_async",
            lambda: asyncio.run(bare_jetstream_publish(urls["nats-jetstream"])),
        ),
    }
    print(f"\n== ceilings ({CEILING_MESSAGES:,} messages of {PAYLOAD} B, {REPEATS} runs, median)")
    for target, (label, native) in natives.items():
        if target not in urls:
            continue
        native_median, native_values = _median(native)
        goal = GOALS[target]
        print(f"{target}:")
        print(f"  native  {label:<30} {native_median:>10,.0f}/s   [{_fmt(native_values)}]")
        reference_median = None
        if target in REFERENCES:
            ref_label, ref_loop = REFERENCES[target]
            url = urls[target]
            reference_median, ref_values = _median(
                lambda loop=ref_loop, url=url: asyncio.run(loop(url))
            )
            print(f"  ref     {ref_label:<30} {reference_median:>10,.0f}/s   [{_fmt(ref_values)}]")
        for workers in sorted({1, WORKER_ROWS.get(target, 1)}):
            runs = [adapter_rates(target, urls[target], workers) for _ in range(REPEATS)]
            published = [r[0] for r in runs]
            delivered = [r[1] for r in runs]
            pub_median, del_median = statistics.median(published), statistics.median(delivered)
            if workers == 1:
                delivered_ceiling[target] = del_median
            # What each goal compares: the rate the native loop measures.
            adapter_value = del_median if target == "nats" else pub_median
            ratio = adapter_value / native_median
            verdict = "met" if ratio >= goal else "MISSED"
            where = "1 process" if workers == 1 else f"{workers} workers"
            print(f"  adapter {where:<11} published  {pub_median:>10,.0f}/s   [{_fmt(published)}]")
            print(f"  adapter {where:<11} delivered  {del_median:>10,.0f}/s   [{_fmt(delivered)}]")
            print(f"    ratio {ratio:6.1%} of native (goal {goal:.0%}: {verdict})")
            if reference_median:
                print(f"    ratio {adapter_value / reference_median:6.1%} of ref (no goal)")
    return delivered_ceiling


def poisson_run(target: str, url: str, rate: float, seconds: float, seed: int) -> dict[str, float]:
    """One single-process Poisson run with the bench consumers: rates, latencies (ms), losses."""
    scenario = latency_scenario(target, rate, seconds)
    result = asyncio.run(run_real_async(scenario, target, seed, url=url, workers=1))
    sends, deliveries = result.trace.sends, result.trace.deliveries
    first = deliveries.sort_values("t_delivered").drop_duplicates("msg_id")
    merged = sends.merge(first, on="msg_id")
    e2e = (merged["t_delivered"] - merged["t_intended"]).to_numpy() * 1000
    delay = (sends["t_sent"] - sends["t_intended"]).to_numpy() * 1000
    t0 = sends["t_intended"].min()
    offered = len(sends) / max(sends["t_intended"].max() - t0, 1e-9)
    delivered = len(first) / max(first["t_delivered"].max() - t0, 1e-9) if len(first) else 0.0
    p50, p99, p999 = np.percentile(e2e, [50, 99, 99.9]) if len(e2e) else (np.inf,) * 3
    return {
        "offered": offered,
        "delivered": delivered,
        "p50": float(p50),
        "p99": float(p99),
        "p999": float(p999),
        "delay_p99": float(np.percentile(delay, 99)),
        "lost": float(len(sends) - len(merged)),
    }


def sustained_scenario(target: str, rate: float) -> Scenario:
    """The latency points' load with "keeps up" written as requirements: p99 end-to-end latency
    and p99 publish delay bounds (the delivered share is capacity's ``keep_up``)."""
    data = latency_scenario(target, rate, SUSTAINED_SECONDS).model_dump(mode="json")
    data["requirements"] = sustained_requirements()
    return parse_scenario(data)


def sustained_ceilings(urls: dict[str, str], burst: dict[str, float]) -> dict[str, float]:
    """Each target's sustained ceiling with ``brokerlab capacity --find rate``, every step
    printed; returns them (messages/s).

    The search starts at SUSTAINED_START of the burst delivered ceiling, doubles while runs keep
    up (halves while the start does not), then bisects to SUSTAINED_TOLERANCE. One short run
    per step (one seed), so the figure is a lower bound good to about SUSTAINED_TOLERANCE, and
    noisy on a shared machine.
    """
    from brokerlab.app.capacity import find_capacity
    from brokerlab.app.runner import RunOptions

    print(f"\n== sustained ceiling, 1 process, Poisson, {SUSTAINED_SECONDS:g} s per step, "
          f"same consumers as the latency points (brokerlab capacity --find rate)")  # fmt: skip
    print(f"   keeps up = delivered >= {SUSTAINED_DELIVERED:.0%} of offered, e2e p99 <= "
          f"{SUSTAINED_E2E_P99 * 1000:.0f} ms, publish delay p99 <= "
          f"{SUSTAINED_DELAY_P99 * 1000:.0f} ms; search from {SUSTAINED_START:.0%} of the burst "
          f"delivered ceiling: double, then bisect to {SUSTAINED_TOLERANCE:.1%}")  # fmt: skip
    sustained: dict[str, float] = {}
    for target, url in urls.items():
        if target not in burst:
            continue
        options = RunOptions(
            redis_url=url if target == "redis-streams" else None,
            nats_url=None if target == "redis-streams" else url,
        )
        with tempfile.TemporaryDirectory(prefix="brokerlab-bench-capacity-") as folder:
            result = find_capacity(
                sustained_scenario(target, burst[target] * SUSTAINED_START),
                "rate",
                target=target,
                out=Path(folder),
                seeds=1,
                keep_up=SUSTAINED_DELIVERED,
                tolerance=SUSTAINED_TOLERANCE,
                max_steps=SUSTAINED_MAX_STEPS,
                workers=1,
                options=options,
                on_step=lambda line, target=target: print(f"{target:<16}{line}", flush=True),
            )
        if result.value:
            sustained[target] = float(result.value)
            print(f"{target:<16}sustained ceiling {result.value:,.0f}/s = "
                  f"{result.value / burst[target]:.0%} of the burst delivered ceiling "
                  f"{burst[target]:,.0f}/s")  # fmt: skip
        else:
            print(f"{target:<16}kept up at no rate tried: no latency points ({result.answer})")
    return sustained


def latencies(urls: dict[str, str], ceiling: dict[str, float]) -> None:
    """End-to-end latency percentiles at fractions of each sustained ceiling."""
    print(f"\n== end-to-end latency, Poisson, {LATENCY_SECONDS:g} s per point, same consumers")
    print("   load = fraction of the SUSTAINED ceiling (not of the burst ceilings): "
          + ", ".join(f"{target} {rate:,.0f}/s" for target, rate in ceiling.items()))  # fmt: skip
    print(f"{'target':<16}{'load':>6}{'rate/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
          f"{'delay p99':>11}  lost")  # fmt: skip
    for target, url in urls.items():
        if target not in ceiling:
            continue
        for fraction in LATENCY_FRACTIONS:
            rate = ceiling[target] * fraction
            run = poisson_run(target, url, rate, LATENCY_SECONDS, 2)
            print(f"{target:<16}{fraction:>6.0%}{rate:>10,.0f}{run['p50']:>9.3f}{run['p99']:>9.3f}"
                  f"{run['p999']:>10.3f}{run['delay_p99']:>11.3f}  {run['lost']:.0f}")  # fmt: skip


def sweep(urls: dict[str, str]) -> None:
    """Poisson load at rising rates, one process against two: where one process falls behind.

    Two producers and two consumers either way; "kept up" means p99 publish delay under
    ``harness.BEHIND_P99`` and every message delivered. This is what
    each target record's ``single_process_rate`` (adapters/targets.py) is read from.
    """
    from brokerlab.adapters.harness import BEHIND_P99

    print(f"\n== single process vs 2 workers, Poisson, {SWEEP_SECONDS:g} s per point")
    print(f"{'target':<16}{'rate/s':>9}{'procs':>6}{'delivered/s':>13}{'delay p99':>11}"
          f"{'e2e p99 ms':>12}  kept up")  # fmt: skip
    for target, url in urls.items():
        for rate in SWEEP_RATES[target]:
            for workers in (1, 2):
                base = latency_scenario(target, rate).model_dump(mode="json")
                base["producers"].update(count=2, duration=f"{SWEEP_SECONDS}s")
                base["consumers"]["count"] = 2
                scenario = parse_scenario(base)
                result = asyncio.run(run_real_async(scenario, target, 3, url=url, workers=workers))
                sends, deliveries = result.trace.sends, result.trace.deliveries
                first = deliveries.sort_values("t_delivered").drop_duplicates("msg_id")
                merged = sends.merge(first, on="msg_id")
                e2e = np.percentile((merged["t_delivered"] - merged["t_intended"]) * 1000, 99)
                delay = np.percentile(sends["t_sent"] - sends["t_intended"], 99)
                span = first["t_delivered"].max() - sends["t_intended"].min()
                kept = delay <= BEHIND_P99 and len(merged) == len(sends)
                print(f"{target:<16}{rate:>9,}{workers:>6}{len(first) / span:>13,.0f}"
                      f"{delay * 1000:>9.2f}ms{e2e:>12.2f}  {'yes' if kept else 'NO'}")  # fmt: skip


def profile(target: str, url: str) -> None:
    """cProfile one flat-out adapter run and print where the time goes."""
    profiler = cProfile.Profile()
    profiler.enable()
    published, delivered = adapter_rates(target, url)
    profiler.disable()
    print(f"{target}: published {published:,.0f}/s delivered {delivered:,.0f}/s (under cProfile)")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(PROFILE_ROWS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machine", action="store_true", help="use the machine's services")
    parser.add_argument("--profile", choices=sorted(GOALS), help="profile one target and stop")
    parser.add_argument(
        "--targets", nargs="+", choices=sorted(GOALS), help="measure only these targets"
    )
    parser.add_argument(
        "--no-latency", action="store_true", help="burst ceilings only (no sustained search)"
    )
    parser.add_argument("--sweep", action="store_true", help="only the 1-vs-2-process sweep")
    args = parser.parse_args()
    started = time.monotonic()
    with brokers(args.machine) as urls:
        if args.profile:
            profile(args.profile, urls[args.profile])
            return
        if args.targets:
            urls = {target: url for target, url in urls.items() if target in args.targets}
        if args.sweep:
            sweep(urls)
            print(f"\nbench took {time.monotonic() - started:.0f} s")
            return
        burst = ceilings(urls)
        if not args.no_latency:
            latencies(urls, sustained_ceilings(urls, burst))
    print(f"\nbench took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
