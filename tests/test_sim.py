"""Behaviour of the simulator: what a user relies on when they read a simulated trace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from brokerlab.core.analysis import analyze
from brokerlab.core.scenario import Scenario, load_scenario, parse_scenario
from brokerlab.core.trace import FaultWindow, Trace
from brokerlab.sim import simulate
from brokerlab.sim.engine import DRAIN_TICK
from brokerlab.sim.presets import resolve

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
MS = 1e-3
US = 1.01e-6  # the trace keeps microseconds; allow one rounding step


def make(**sections: Any) -> Scenario:
    """A small scenario: 200 evenly spaced messages at 100/s, one consumer, 1 ms processing."""
    data: dict[str, Any] = {
        "name": "test",
        "producers": {"rate": "100/s", "messages": 200, "arrival": "constant"},
        # An ideal broker (no performance profile): the timings below are exact known answers.
        "broker": {"kind": "redis-streams", "profile": "none"},
        "consumers": {"count": 1, "processing": "1ms"},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return parse_scenario(data)


def run(scenario: Scenario, seed: int = 1) -> Trace:
    return simulate(scenario, seed).trace


def joined(trace: Trace) -> pd.DataFrame:
    """Deliveries with their send columns (key, seq, t_intended, t_sent)."""
    sends = trace.sends[["msg_id", "producer", "seq", "key", "t_intended", "t_sent", "t_acked"]]
    return trace.deliveries.merge(sends, on="msg_id", how="left", validate="many_to_one")


def max_held(deliveries: pd.DataFrame) -> int:
    """Most messages held at once (received, processing not finished) by the given deliveries."""
    times = np.concatenate([deliveries["t_delivered"], deliveries["t_done"]])
    steps = np.concatenate([np.ones(len(deliveries)), -np.ones(len(deliveries))])
    order = np.lexsort((steps, times))  # at equal times, a finish frees its slot first
    return int(np.cumsum(steps[order]).max())


def out_of_order(frame: pd.DataFrame, by: str) -> int:
    """Messages of a key that come (by column ``by``) after a later message of that key."""
    ordered = frame.sort_values([by, "seq"], kind="stable")
    return int((ordered.groupby("key")["seq"].diff() < 0).sum())


# ---------------------------------------------------------------------------- determinism


def busy_scenario() -> Scenario:
    """Every random part on at once: arrivals, delays, service, processing, keys, redelivery."""
    return make(
        producers={"rate": "2000/s", "messages": 5000, "arrival": "poisson", "keys": 10},
        broker={
            "kind": "nats-jetstream",
            "service_time": {
                "publish": {"dist": "exponential", "mean": "0.1ms"},
                "deliver": {"dist": "uniform", "min": "0ms", "max": "0.1ms"},
            },
            "ack_timeout": "6ms",
        },
        consumers={
            "count": 3,
            "prefetch": 4,
            "processing": {"dist": "lognormal", "median": "1ms", "p99": "8ms"},
        },
        network={"delay": {"dist": "exponential", "mean": "0.3ms"}},
    )


def test_same_seed_gives_identical_trace() -> None:
    """Same scenario and seed -> identical sends, deliveries and timeline."""
    a, b = run(busy_scenario(), seed=5), run(busy_scenario(), seed=5)
    assert (a.deliveries["delivery_no"] > 1).any(), "the scenario should exercise redelivery"
    pd.testing.assert_frame_equal(a.sends, b.sends)
    pd.testing.assert_frame_equal(a.deliveries, b.deliveries)
    pd.testing.assert_frame_equal(a.timeline, b.timeline)


def test_different_seeds_give_different_traces() -> None:
    """Another seed draws other arrivals and processing times."""
    a, b = run(busy_scenario(), seed=5), run(busy_scenario(), seed=6)
    assert not a.sends["t_intended"].equals(b.sends["t_intended"])
    assert not a.deliveries["t_done"].equals(b.deliveries["t_done"])


# ---------------------------------------------------------------------------- sends


def test_every_planned_message_is_sent_once_on_time_and_acked() -> None:
    """Open loop: one sends row per message, t_sent = t_intended, outcome acked, 1 attempt."""
    sends = run(busy_scenario()).sends
    assert len(sends) == 5000 and sends["msg_id"].is_unique
    assert sends["msg_id"].iloc[0] == "0:0"
    assert (sends["t_sent"] == sends["t_intended"]).all()
    assert (sends["outcome"] == "acked").all() and (sends["attempts"] == 1).all()
    assert (sends["t_acked"] > sends["t_sent"]).all()


def test_publish_ack_counts_both_network_hops_and_service() -> None:
    """t_acked - t_sent = delay to broker + publish service + delay back."""
    sends = run(make(network={"delay": "2ms"}, broker={"service_time": {"publish": "0.5ms"}})).sends
    publish = sends["t_acked"] - sends["t_sent"]
    np.testing.assert_allclose(publish, 4.5 * MS, atol=US)


def test_delivery_and_completion_follow_every_hop() -> None:
    """First delivery after net + publish + deliver service + net; done after processing and
    the ack's round trip (ack: after): the harness sets t_done once the ack's reply is back."""
    trace = run(
        make(
            network={"delay": "2ms"},
            broker={"service_time": {"publish": "0.5ms", "deliver": "0.3ms"}},
            consumers={"processing": "1ms"},
        )
    )
    rows = joined(trace)
    np.testing.assert_allclose(rows["t_delivered"] - rows["t_intended"], 4.8 * MS, atol=US)
    np.testing.assert_allclose(rows["t_done"] - rows["t_delivered"], (1 + 2 * 2) * MS, atol=US)


def test_sync_confirm_waits_for_each_ack_before_the_next_send() -> None:
    """confirm: sync -> t_sent = max(t_intended, previous t_acked), so a slow ack delays sends."""
    sends = run(
        make(producers={"rate": "1000/s", "confirm": "sync"}, network={"delay": "5ms"})
    ).sends
    t_sent, t_acked, t_intended = (sends[c].to_numpy() for c in ("t_sent", "t_acked", "t_intended"))
    np.testing.assert_allclose(t_sent[1:], np.maximum(t_intended[1:], t_acked[:-1]), atol=US)
    assert t_sent[-1] - t_intended[-1] > 1.5  # 200 sends 10 ms apart instead of 1 ms


def test_fire_and_forget_publish_has_no_broker_ack() -> None:
    """NATS core: outcome acked (the call succeeded) but t_acked is NaN; nothing redelivered."""
    result = simulate(make(broker={"kind": "nats"}), 1)
    sends, deliveries = result.trace.sends, result.trace.deliveries
    assert (sends["outcome"] == "acked").all() and sends["t_acked"].isna().all()
    assert (deliveries["delivery_no"] == 1).all() and len(deliveries) == len(sends)
    assert result.info["model"] == "pubsub"


# ---------------------------------------------------------------------------- capacity


@pytest.mark.parametrize(("rate", "grows"), [("1500/s", True), ("500/s", False)])
def test_offered_rate_above_consumer_capacity_grows_backlog_and_latency(
    rate: str, grows: bool
) -> None:
    """Above 1,000/s of 1 ms processing the backlog and completion time keep growing."""
    scenario = make(producers={"rate": rate, "messages": 3000, "arrival": "poisson"})
    trace = run(scenario)
    rows = joined(trace)
    completion = (rows["t_done"] - rows["t_intended"]).to_numpy()
    quarter = len(completion) // 4
    early, late = completion[:quarter].mean(), completion[-quarter:].mean()
    sending = trace.timeline[trace.timeline["t_end"] <= trace.sends["t_sent"].max()]
    backlog = sending["backlog"].to_numpy()
    if grows:
        assert late > 5 * early and late > 0.2
        assert backlog[-5:].mean() > 10 * max(backlog[:5].mean(), 1)
    else:
        assert late < 3 * MS and backlog.max() < 20


@pytest.mark.parametrize(("servers", "saturated"), [(1, True), (2, False)])
def test_broker_service_time_limits_throughput_per_server(servers: int, saturated: bool) -> None:
    """1 ms publish service per message: one server cannot take 1,500/s, two can."""
    scenario = make(
        producers={"rate": "1500/s", "messages": 3000},
        broker={"service_time": {"publish": "1ms"}, "servers": servers},
        consumers={"processing": "0.1ms"},
    )
    sends = run(scenario).sends
    publish = (sends["t_acked"] - sends["t_sent"]).to_numpy()
    assert bool(publish.max() > 0.5) is saturated
    assert publish.min() == pytest.approx(1 * MS, abs=US)


def test_run_ends_after_the_drain_timeout_even_with_a_backlog() -> None:
    """A run always ends: nothing is received later than the last send plus drain_timeout."""
    scenario = make(producers={"rate": "2000/s", "messages": 2000}, drain_timeout="0.1s")
    trace = run(scenario)
    end = trace.sends["t_intended"].max() + 0.1
    assert trace.deliveries["t_delivered"].max() <= end
    assert trace.deliveries["msg_id"].nunique() < len(trace.sends)


# ---------------------------------------------------------------------------- storage limits


def test_log_max_length_trims_entries_never_delivered() -> None:
    """MAXLEN 50 with a slow consumer: old undelivered entries vanish; the newest 50 survive."""
    scenario = make(
        producers={"rate": "1000/s", "messages": 1000},
        broker={"max_length": 50},
        consumers={"processing": "10ms"},
    )
    result = simulate(scenario, 1)
    sends, deliveries = result.trace.sends, result.trace.deliveries
    delivered = set(deliveries["msg_id"])
    lost = len(sends) - len(delivered)
    assert lost > 500 and result.info["trimmed"] == lost
    assert set(sends["msg_id"].iloc[-50:]) <= delivered


def test_queue_max_length_drops_oldest_ready_messages() -> None:
    """RabbitMQ-like queue: past max_length ready messages, the oldest ready one is dropped."""
    scenario = make(
        producers={"rate": "1000/s", "messages": 1000},
        broker={"kind": "rabbitmq", "max_length": 50},
        consumers={"processing": "10ms"},
    )
    result = simulate(scenario, 1)
    sends, deliveries = result.trace.sends, result.trace.deliveries
    lost = len(sends) - deliveries["msg_id"].nunique()
    assert result.info["model"] == "queue"
    assert lost > 500 and result.info["overflowed"] == lost
    assert set(sends["msg_id"].iloc[-50:]) <= set(deliveries["msg_id"])


def test_retention_drops_entries_older_than_the_limit() -> None:
    """Retention 50 ms: no entry is delivered older than that; the rest expire unread."""
    scenario = make(
        producers={"rate": "1000/s", "messages": 500},
        broker={"retention": "50ms"},
        consumers={"processing": "10ms"},
    )
    result = simulate(scenario, 1)
    rows = joined(result.trace)
    assert ((rows["t_delivered"] - rows["t_sent"]) <= 0.05 + US).all()
    lost = len(result.trace.sends) - len(rows)
    assert lost > 100 and result.info["expired"] == lost


# ---------------------------------------------------------------------------- acks


@pytest.mark.parametrize("kind", ["redis-streams", "nats-jetstream", "sqs"])
def test_unacked_delivery_is_redelivered_after_ack_timeout(kind: str) -> None:
    """Processing 30 ms > ack timeout 20 ms: the idle consumer gets the message again at +20 ms."""
    scenario = make(
        producers={"rate": "2/s", "messages": 10},
        broker={"kind": kind, "ack_timeout": "20ms"},
        consumers={"count": 2, "processing": "30ms"},
    )
    deliveries = run(scenario).deliveries
    assert len(deliveries) == 20
    first = deliveries[deliveries["delivery_no"] == 1].set_index("msg_id")
    second = deliveries[deliveries["delivery_no"] == 2].set_index("msg_id").loc[first.index]
    np.testing.assert_allclose(second["t_delivered"] - first["t_delivered"], 20 * MS, atol=US)
    assert (second["consumer"] != first["consumer"]).all()


@pytest.mark.parametrize(
    ("ack", "ack_timeout"), [("after", "100ms"), ("before", "20ms"), ("none", "20ms")]
)
def test_no_redelivery_when_acked_in_time_or_not_tracked(ack: str, ack_timeout: str) -> None:
    """Acked within the timeout, acked on receipt (before), or no acks (none): one delivery each."""
    scenario = make(
        producers={"rate": "2/s", "messages": 10},
        broker={"ack_timeout": ack_timeout},
        consumers={"count": 2, "processing": "30ms", "ack": ack},
    )
    deliveries = run(scenario).deliveries
    assert len(deliveries) == 10 and (deliveries["delivery_no"] == 1).all()


@pytest.mark.parametrize(("max_deliveries", "expected"), [(3, 3), (0, 4)])
def test_max_deliveries_caps_redelivery(max_deliveries: int, expected: int) -> None:
    """With max_deliveries 3 a message is delivered 3 times, then dead-lettered."""
    scenario = make(
        producers={"rate": "2/s", "messages": 10},
        broker={"ack_timeout": "20ms", "max_deliveries": max_deliveries},
        consumers={"count": 4, "processing": "100ms"},
    )
    result = simulate(scenario, 1)
    per_message = result.trace.deliveries.groupby("msg_id")["delivery_no"].max()
    assert (per_message == expected).all()
    assert result.info["dead_lettered"] == (10 if max_deliveries else 0)


def test_max_ack_pending_limits_unacked_deliveries_of_the_group() -> None:
    """JetStream MaxAckPending 2: four consumers, yet never more than 2 messages held at once."""
    scenario = make(
        producers={"rate": "10000/s", "messages": 200},
        broker={"kind": "nats-jetstream", "max_ack_pending": 2},
        consumers={"count": 4, "prefetch": 10, "processing": "1ms"},
    )
    deliveries = run(scenario).deliveries
    assert deliveries["msg_id"].nunique() == 200
    assert max_held(deliveries) == 2


# ---------------------------------------------------------------------------- prefetch


def test_prefetch_one_takes_the_next_message_only_when_free() -> None:
    """Prefetch 1: each delivery to a consumer comes at or after it finished the previous one."""
    scenario = make(producers={"rate": "5000/s", "messages": 500}, consumers={"count": 2})
    deliveries = run(scenario).deliveries
    for _, mine in deliveries.groupby("consumer"):
        mine = mine.sort_values("t_delivered")
        assert (mine["t_delivered"].to_numpy()[1:] >= mine["t_done"].to_numpy()[:-1]).all()
    assert max_held(deliveries) == 2


@pytest.mark.parametrize(
    ("prefetch", "ack", "seconds"),
    # 1 ms work + the ack's 10 ms round trip, awaited before the next message (as the harness
    # does), whatever the prefetch; without acks prefetch 20 overlaps the fetch round trips.
    [(1, "after", 200 * 11 * MS), (20, "after", 200 * 11 * MS), (20, "none", 0.3)],
)
def test_prefetch_bounds_held_messages_and_hides_fetch_round_trips(
    prefetch: int, ack: str, seconds: float
) -> None:
    """With 5 ms each way, prefetch bounds what a consumer holds; only the fetch's round trip
    is hidden by a larger prefetch, not an ack the consumer waits for."""
    scenario = make(
        producers={"rate": "100000/s", "messages": 200},
        consumers={"prefetch": prefetch, "ack": ack},
        network={"delay": "5ms"},
    )
    deliveries = run(scenario).deliveries
    assert max_held(deliveries) <= prefetch
    span = deliveries["t_done"].max()
    if ack == "after":
        assert max_held(deliveries) == prefetch
        assert span == pytest.approx(seconds, rel=0.01)
    else:
        assert span < seconds


# ---------------------------------------------------------------------------- ordering


def ordering_scenario(kind: str, consumers: int, partitions: int = 1) -> Scenario:
    return make(
        producers={"rate": "600/s", "messages": 3000, "arrival": "poisson", "keys": 20},
        broker={"kind": kind, "partitions": partitions},
        consumers={
            "count": consumers,
            "prefetch": 5,
            "processing": {"dist": "exponential", "mean": "1ms"},
        },
        network={"delay": {"dist": "exponential", "mean": "1ms"}},
    )


@pytest.mark.parametrize(
    ("kind", "consumers", "partitions"), [("redis-streams", 1, 1), ("kafka", 3, 6)]
)
def test_per_key_order_holds_with_one_consumer_or_partitions(
    kind: str, consumers: int, partitions: int
) -> None:
    """One consumer, or key -> partition -> consumer: every key is received and done in order."""
    rows = joined(run(ordering_scenario(kind, consumers, partitions)))
    assert len(rows) == 3000
    assert out_of_order(rows, "t_delivered") == 0
    assert out_of_order(rows, "t_done") == 0
    assert (rows.groupby("key")["consumer"].nunique() == 1).all()
    assert rows["consumer"].nunique() == consumers


@pytest.mark.parametrize(("partitions", "busy"), [(1, 1), (3, 3), (6, 4)])
def test_a_partition_is_read_by_one_consumer_of_the_group(partitions: int, busy: int) -> None:
    """Kafka groups: each partition goes to exactly one consumer, the rest sit idle. Four
    consumers of 5 ms on one partition deliver 1 / 5 ms = 200/s (one consumer), not 400/s."""
    scenario = make(
        producers={"rate": "400/s", "messages": 2000, "keys": 64},
        broker={"kind": "kafka", "partitions": partitions},
        consumers={"count": 4, "processing": "5ms"},
    )
    trace = run(scenario)
    rows = joined(trace)
    assert len(rows) == 2000
    assert rows["consumer"].nunique() == busy
    assert (rows.groupby("key")["consumer"].nunique() == 1).all()
    analysis = analyze(trace, scenario, target="sim", seed=1, duration_s=5.0)
    delivered = analysis.throughput.delivered
    if partitions == 1:
        # message k is handed over at k x 5 ms: 2000 / (1999 x 5 ms)
        assert delivered == pytest.approx(2000 / (1999 * 0.005), rel=1e-3)
    else:
        assert delivered == pytest.approx(400, rel=0.01)


def test_keyless_messages_go_round_robin_over_partitions() -> None:
    """Without keys a producer spreads messages evenly over the partitions."""
    scenario = make(
        producers={"rate": "400/s", "messages": 1200},
        broker={"kind": "kafka", "partitions": 3},
        consumers={"count": 3},
    )
    counts = run(scenario).deliveries["consumer"].value_counts().tolist()
    assert counts == [400, 400, 400]


@pytest.mark.parametrize(
    ("kind", "profile", "broker"),
    [
        # shipped profiles whose broker steps are random on parallel servers
        ("eventstoredb", "default", {}),
        ("sqs", "default", {}),
        # an ideal broker with random delivery and publish work on four servers
        (
            "redis-streams",
            "none",
            {
                "servers": 4,
                "service_time": {
                    "publish": {"dist": "exponential", "mean": "0.5ms"},
                    "deliver": {"dist": "exponential", "mean": "1ms"},
                },
            },
        ),
    ],
)
def test_one_consumer_receives_a_stream_in_order_near_the_ceiling(
    kind: str, profile: str, broker: dict[str, Any]
) -> None:
    """One producer, one consumer fetching 10 at a time: a fetch reply (and a producer's
    publishes) keep log order however the broker's parallel servers finish their work. Before
    the servers' work was released in order, these runs reported 100 to 220 messages out of
    order (by publish ack), which the real brokers cannot produce."""
    scenario = make(
        producers={"rate": "3000/s", "messages": 3000, "arrival": "poisson", "keys": 10},
        broker={"kind": kind, "profile": profile, **broker},
        consumers={"count": 1, "prefetch": 10, "processing": "0.1ms"},
        network={"delay": {"dist": "exponential", "mean": "1ms"}},
    )
    rows = joined(run(scenario))
    assert len(rows) > 1000
    assert out_of_order(rows, "t_acked") == 0
    assert out_of_order(rows, "t_delivered") == 0
    assert out_of_order(rows, "t_done") == 0


def test_in_order_release_keeps_the_servers_ceiling() -> None:
    """Releasing a consumer's deliveries in order costs no capacity: four servers of 1 ms mean
    still deliver at about 4000/s when saturated (not one server's 1000/s)."""
    scenario = make(
        producers={"rate": "8000/s", "messages": 8000, "arrival": "poisson"},
        broker={
            "servers": 4,
            "service_time": {"deliver": {"dist": "exponential", "mean": "1ms"}},
        },
        consumers={"count": 1, "prefetch": 50, "processing": "0ms"},
    )
    delivered = run(scenario).deliveries["t_delivered"]
    rate = (len(delivered) - 1) / (delivered.max() - delivered.min())
    assert rate == pytest.approx(4000, rel=0.05)


def test_a_link_keeps_order_when_sends_are_held_to_the_same_instant() -> None:
    """TCP order on one link survives float rounding: RabbitMQ's shipped profile at 5000/s used
    to store one message an ulp after later ones held back to the same arrival time."""
    scenario = make(
        producers={"rate": "5000/s", "messages": 4000, "arrival": "poisson", "keys": 10},
        broker={"kind": "rabbitmq", "profile": "default"},
        consumers={"count": 1, "prefetch": 10, "processing": "0ms"},
    )
    rows = joined(run(scenario))
    assert out_of_order(rows, "t_acked") == 0
    assert out_of_order(rows, "t_delivered") == 0


def test_competing_consumers_on_one_stream_finish_keys_out_of_order() -> None:
    """Three consumers sharing one cursor: per-key completion order is not kept (the contrast)."""
    rows = joined(run(ordering_scenario("redis-streams", 3)))
    assert out_of_order(rows, "t_done") > 10


# ---------------------------------------------------------------------------- fire-and-forget


@pytest.mark.parametrize(("pending_limit", "lossy"), [(20, True), (524288, False)])
def test_nats_slow_consumer_drops_messages_past_pending_limit(
    pending_limit: int, lossy: bool
) -> None:
    """NATS core: a consumer 10x too slow keeps at most pending_limit waiting, drops the rest."""
    scenario = make(
        producers={"rate": "1000/s", "messages": 500},
        broker={"kind": "nats", "pending_limit": pending_limit},
        consumers={"processing": "10ms"},
    )
    result = simulate(scenario, 1)
    deliveries = result.trace.deliveries
    assert deliveries["msg_id"].is_unique
    dropped = 500 - len(deliveries)
    assert result.info["slow_consumer_drops"] == dropped
    assert bool(dropped > 400) is lossy
    # waiting = held minus the one in processing
    assert max_held(deliveries) <= pending_limit + 1


def test_nats_queue_group_spreads_messages_over_consumers() -> None:
    """A queue group gives each member an equal share; no message reaches two members."""
    deliveries = run(make(broker={"kind": "nats"}, consumers={"count": 4})).deliveries
    assert deliveries["msg_id"].is_unique
    assert deliveries["consumer"].value_counts().tolist() == [50, 50, 50, 50]


# ---------------------------------------------------------------------------- target contract


def test_faults_are_played_and_reported_as_windows() -> None:
    """Fault entries are played: one window each in TargetResult.faults, no 'not simulated'."""
    scenario = make(faults=[{"at": "1s", "action": "broker-pause", "duration": "0.5s"}])
    result = simulate(scenario, 1)
    assert result.faults == [FaultWindow("broker-pause", "broker", 1.0, 1.5)]
    assert result.warnings == []
    assert "broker-pause:broker" in set(result.trace.timeline["faults"])


def test_run_without_faults_has_no_fault_windows() -> None:
    """No faults: empty fault list and an empty faults column."""
    result = simulate(make(), 1)
    assert result.faults == [] and (result.trace.timeline["faults"] == "").all()


def test_dedup_window_on_a_broker_without_dedup_is_warned_about() -> None:
    """Redis has no publish dedup: a dedup_window is ignored, and the run says so."""
    warnings = simulate(make(broker={"dedup_window": "1min"}), 1).warnings
    assert any("has no publish dedup" in warning for warning in warnings)
    assert (
        simulate(make(broker={"kind": "nats-jetstream", "dedup_window": "1min"}), 1).warnings == []
    )


def test_progress_is_reported_up_to_the_total() -> None:
    """progress(done, total) climbs in about 1% steps and ends at (total, total)."""
    calls: list[tuple[int, int]] = []
    simulate(make(producers={"messages": 1000}), 1, progress=lambda d, t: calls.append((d, t)))
    assert 90 <= len(calls) <= 110
    assert calls[-1] == (1000, 1000)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


@pytest.mark.parametrize(
    ("kind", "model"), [("kafka", "log"), ("sqs", "queue"), ("nats", "pubsub")]
)
def test_info_names_model_preset_and_event_count(kind: str, model: str) -> None:
    """info says which model played which preset and how many events it took."""
    info = simulate(make(broker={"kind": kind}), 1).info
    assert info["model"] == model and info["preset"] == kind
    assert isinstance(info["events"], int) and info["events"] >= 400


def test_preset_defaults_fill_only_fields_the_scenario_left_unset() -> None:
    """SQS brings a 30 s visibility timeout, but a scenario's own ack_timeout wins."""
    assert resolve(make(broker={"kind": "sqs"}).broker).broker.ack_timeout == 30.0
    mine = resolve(make(broker={"kind": "sqs", "ack_timeout": "5s"}).broker)
    assert mine.broker.ack_timeout == 5.0
    assert resolve(make(broker={"kind": "eventstoredb"}).broker).broker.max_deliveries == 10
    assert not resolve(make(broker={"kind": "kafka"}).broker).redelivery
    assert resolve(make(broker={"kind": "kafka", "ack_timeout": "1s"}).broker).redelivery


def test_sync_producer_far_behind_reports_unsent_messages() -> None:
    """A sync producer that cannot finish by the end leaves 'failed' unsent rows and a warning."""
    scenario = make(
        producers={"rate": "1000/s", "messages": 2000, "confirm": "sync"},
        network={"delay": "100ms"},
        drain_timeout="1s",
    )
    result = simulate(scenario, 1)
    sends = result.trace.sends
    unsent = sends["t_sent"].isna()
    assert unsent.sum() > 1900 and result.info["unsent"] == unsent.sum()
    assert (sends.loc[unsent, "outcome"] == "failed").all()
    assert (sends.loc[unsent, "attempts"] == 0).all()
    assert any("never sent" in warning for warning in result.warnings)


# ---------------------------------------------------------------------------- one meaning of
# "delivered" (the consumer's handler takes the message), "done" (processed and acked) and the
# drain's end, the same as the harness counts them


def nats_overload(seconds: int) -> Scenario:
    """300/s constant to one NATS core subscriber taking 5 ms a message (capacity 200/s)."""
    return make(
        producers={"rate": "300/s", "messages": None, "duration": f"{seconds}s"},
        broker={"kind": "nats"},
        consumers={"processing": "5ms"},
        requirements={"throughput": "250/s", "latency": {"end_to_end": {"p99": "100ms"}}},
    )


def test_nats_core_delivers_at_the_consumers_pace_not_the_offered_rate() -> None:
    """A message waiting in the subscriber's buffer is not delivered yet: delivered 200/s, and
    the end-to-end p99 grows with the run (the buffer grows 100/s, drained at 200/s: the last
    of a 10 s run waits about 5 s). It used to read 300/s, p99 0 ms, verdict pass."""
    scenario = nats_overload(10)
    result = simulate(scenario, 1)
    analysis = analyze(result.trace, scenario, target="sim", seed=1, duration_s=10.0)
    metrics = analysis.to_metrics()
    assert metrics["throughput_per_s"]["delivered"] == pytest.approx(200.0, rel=0.01)
    p99 = metrics["latency_ms"]["end_to_end"]["p99"]
    assert p99 == pytest.approx(0.99 * 5000, rel=0.02)
    assert analysis.verdict == "fail"
    short = simulate(nats_overload(5), 1).trace
    e2e = short.deliveries.merge(short.sends, on="msg_id")
    p99_short = np.percentile(e2e["t_delivered"] - e2e["t_intended"], 99) * 1e3
    assert p99 == pytest.approx(2 * p99_short, rel=0.05)


@pytest.mark.parametrize(
    ("ack", "extra"),
    # processing 1 ms; the ack's round trip (2 ms each way) is awaited before processing
    # (before) or before the message counts as done (after); no ack, no wait
    [("after", 4 * MS), ("before", 4 * MS), ("none", 0.0)],
)
def test_t_done_is_processed_and_acked_as_the_harness_records_it(ack: str, extra: float) -> None:
    """t_done - t_delivered = processing + the ack's round trip the consumer waits for."""
    trace = run(make(consumers={"ack": ack}, network={"delay": "2ms"}))
    span = trace.deliveries["t_done"] - trace.deliveries["t_delivered"]
    assert len(span) == 200
    np.testing.assert_allclose(span, 1 * MS + extra, atol=US)
    assert (span >= 1 * MS - US).all()  # never less than the processing time


def test_drain_ends_when_every_acknowledged_message_is_done() -> None:
    """As the harness: the run stops at the first drain check after the last message is done,
    not drain_timeout (30 s) after the last send."""
    result = simulate(make(), 1)
    last_done = result.trace.deliveries["t_done"].max()
    assert last_done <= result.info["end_s"] <= last_done + DRAIN_TICK + US
    assert result.info["end_s"] < 2.1


def test_drain_waits_the_whole_timeout_for_a_message_that_never_completes() -> None:
    """A message dropped by a slow NATS subscriber is never done: the drain runs to its end."""
    scenario = make(
        producers={"rate": "1000/s"},
        broker={"kind": "nats", "pending_limit": 5},
        consumers={"processing": "5ms"},
        drain_timeout="3s",
    )
    result = simulate(scenario, 1)
    assert result.info["slow_consumer_drops"] > 0
    last_intended = result.trace.sends["t_intended"].max()
    assert result.info["end_s"] == pytest.approx(last_intended + 3.0)


def test_quickstart_with_seed_7_is_pinned() -> None:
    """The same scenario and seed give the same figures across refactors of the engine: these
    are the figures of the simulator before its fault layer became collaborators."""
    ideal = load_scenario(SCENARIOS / "quickstart.yaml").with_(**{"broker.profile": "none"})
    trace = simulate(ideal, 7).trace
    rows = trace.deliveries.merge(trace.sends, on="msg_id")
    assert len(trace.sends) == len(rows) == 4805
    assert (rows["t_done"] - rows["t_intended"]).mean() == pytest.approx(
        1.35813631633715e-3, rel=1e-12
    )
    assert rows["t_done"].max() == pytest.approx(10.001225, abs=1e-9)
    assert rows["t_delivered"].sum() == pytest.approx(24439.116136, abs=1e-6)
