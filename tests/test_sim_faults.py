"""The simulator's fault timeline: what each fault does to a broker's delivery guarantees.

Each scenario keeps a backlog at the moment of the fault (two consumers at about 500/s against
1,000/s offered), so a fault that loses stored messages has something to lose.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from brokerlab.core.analysis import analyze
from brokerlab.core.checks import DeliveryCheck, check_delivery
from brokerlab.core.scenario import Scenario, parse_scenario
from brokerlab.core.trace import FaultWindow, TargetResult
from brokerlab.sim import simulate
from brokerlab.sim.faulted import AckStateWrites

KILL = {"at": "1.5s", "action": "broker-kill", "duration": "0.5s"}
PAUSE = {"at": "1s", "action": "broker-pause", "duration": "1s"}
PARTITION = {"at": "1s", "action": "partition", "target": "all", "duration": "1s"}
CONSUMER_CRASH = {
    "at": "1s",
    "action": "consumer-crash",
    "target": "consumer-0",
    "duration": "0.5s",
}
#: retries that give up before a 1 s pause ends: every message sent then is republished
RETRY_SAME_ID = {"retry": "same-id", "publish_timeout": "200ms"}


def make(broker: dict[str, Any], *faults: dict[str, Any], **sections: Any) -> Scenario:
    """3,000 Poisson messages at 1,000/s; two consumers (mean 4 ms, prefetch 5); 1 ms hops."""
    data: dict[str, Any] = {
        "name": "faults",
        "producers": {"rate": "1000/s", "messages": 3000, "arrival": "poisson"},
        "broker": {"ack_timeout": "1s", "profile": "none", **broker},
        "consumers": {
            "count": 2,
            "prefetch": 5,
            "processing": {"dist": "exponential", "mean": "4ms"},
        },
        "network": {"delay": "1ms"},
        "faults": list(faults),
    }
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    return parse_scenario(data)


def check(scenario: Scenario, seed: int = 1) -> DeliveryCheck:
    result = simulate(scenario, seed)
    return check_delivery(result.trace.sends, result.trace.deliveries)


# ---------------------------------------------------------------------------- broker kill


def test_redis_without_persistence_loses_acknowledged_messages_on_kill() -> None:
    """Redis without AOF: a kill loses the backlog and the group; publishes while down fail."""
    scenario = make({"kind": "redis-streams"}, KILL)
    result = simulate(scenario, 1)
    analysis = analyze(result.trace, scenario, target="sim", seed=1, duration_s=3.0)
    counts = analysis.checks.counts()
    assert counts["lost"] > 300
    assert counts["failed"] > 300  # refused while down, retry none
    assert counts["duplicates"] == 0  # pending entries vanished with the group
    assert analysis.verdict == "fail"  # the default requirement allows no loss


@pytest.mark.parametrize(
    "persistence", ["always", {"mode": "periodic", "interval": "1s"}], ids=["always", "everysec"]
)
def test_redis_aof_keeps_acknowledged_messages_through_a_process_kill(persistence: Any) -> None:
    """AOF always, and everysec without power loss (page cache survives): nothing acked is lost."""
    checks = check(make({"kind": "redis-streams", "persistence": persistence}, KILL))
    assert checks.lost == 0
    assert checks.redelivered > 0  # deliveries unacked at the kill come back after ack_timeout


def test_redis_aof_everysec_with_power_loss_loses_about_the_last_interval() -> None:
    """AOF everysec + power loss: writes after the last sync (1.0 s; kill at 1.5 s) are lost."""
    scenario = make(
        {"kind": "redis-streams", "persistence": {"mode": "periodic", "interval": "1s"}},
        {**KILL, "power_loss": True},
    )
    checks = check(scenario)
    assert 0 < checks.lost <= 1.2 * 1000 * 0.5  # at most the 0.5 s written since the sync


def test_kill_makes_publishes_in_flight_unknown_and_retries_land_as_duplicates() -> None:
    """5 ms hops: publishes stored just before the kill lose their ack; the retry is stored too."""
    scenario = make(
        {"kind": "redis-streams", "persistence": "always"},
        KILL,
        network={"delay": "5ms"},
        producers={"retry": "same-id", "max_attempts": 10},
    )
    result = simulate(scenario, 1)
    sends = result.trace.sends
    checks = check_delivery(sends, result.trace.deliveries)
    assert checks.lost == 0 and checks.failed == 0
    assert checks.duplicates > checks.redelivered  # copies of retried publishes, delivery_no 1
    retried = sends[sends["attempts"] > 1]
    assert len(retried) > 300 and (retried["t_acked"] > 2.0).all()  # acked after the restart


def test_kill_without_retry_gives_unknown_for_publishes_in_flight() -> None:
    """No retry: publishes without an ack at the kill are unknown, refused ones failed."""
    scenario = make(
        {"kind": "redis-streams", "persistence": "always"}, KILL, network={"delay": "5ms"}
    )
    sends = simulate(scenario, 1).trace.sends
    unknown, failed = sends[sends["outcome"] == "unknown"], sends[sends["outcome"] == "failed"]
    assert 0 < len(unknown) < 20 and (unknown["t_sent"] < 1.5).all()
    assert (failed["t_sent"] >= 1.5).all() and (failed["attempts"] == 1).all()
    assert sends.loc[sends["outcome"] != "acked", "t_acked"].isna().all()


def test_jetstream_file_sync_always_loses_nothing_on_kill() -> None:
    """JetStream file storage, sync always: nothing acknowledged is lost, even on power loss."""
    scenario = make(
        {"kind": "nats-jetstream", "persistence": "always"}, {**KILL, "power_loss": True}
    )
    assert check(scenario).lost == 0


@pytest.mark.parametrize(("power_loss", "lossy"), [(False, False), (True, True)])
def test_jetstream_file_default_sync_loses_only_on_power_loss(
    power_loss: bool, lossy: bool
) -> None:
    """JetStream file storage syncs every 2 min: a kill keeps everything, a power loss does not."""
    checks = check(make({"kind": "nats-jetstream"}, {**KILL, "power_loss": power_loss}))
    assert (checks.lost > 0) is lossy


def test_jetstream_memory_storage_loses_everything_on_kill() -> None:
    """JetStream memory storage: stream and consumer state are gone after a restart."""
    checks = check(make({"kind": "nats-jetstream", "storage": "memory"}, KILL))
    assert checks.lost > 300 and checks.redelivered == 0


def _steady_consumer(kind: str, kill_at: float, **broker: Any) -> Scenario:
    """One consumer acking every 7 ms exactly (a backlog, no costs), killed at ``kill_at``."""
    return parse_scenario(
        {
            "name": "ack-state",
            "producers": {"count": 1, "rate": "1000/s", "arrival": "constant", "duration": "1s"},
            "broker": {"kind": kind, "profile": "none", "ack_timeout": "1s", **broker},
            "consumers": {"count": 1, "processing": "7ms", "prefetch": 1, "ack": "after"},
            "faults": [{"at": f"{kill_at}s", "action": "broker-kill", "duration": "0.2s"}],
            "drain_timeout": "60s",
        }
    )


@pytest.mark.parametrize("kill_at", [0.6, 0.65])
def test_a_jetstream_kill_loses_the_acks_its_store_had_not_written(kill_at: float) -> None:
    """JetStream writes a consumer's ack state at most every 100 ms: the first ack (7 ms) is
    written at once, then 107 ms, 207 ms, ... A kill at 600 ms loses the acks after 507 ms
    (511, 518, ..., 595 ms: 13), at 650 ms those after 607 ms (609 ... 648: 6); each of those
    messages comes again, plus the one the consumer held unacked at the kill. Redis writes
    XACK with the ack: only the held one comes again."""
    lost_acks = {0.6: 13, 0.65: 6}[kill_at]
    result = simulate(_steady_consumer("nats-jetstream", kill_at), 1)
    deliveries = result.trace.deliveries
    assert len(deliveries) - deliveries["msg_id"].nunique() == lost_acks + 1
    again = deliveries[deliveries["delivery_no"] > 1]
    assert len(again) == lost_acks + 1
    redis = simulate(_steady_consumer("redis-streams", kill_at, persistence="periodic"), 1)
    deliveries = redis.trace.deliveries
    assert len(deliveries) - deliveries["msg_id"].nunique() == 1


def test_ack_state_writes_follow_the_brokers_flush_loop() -> None:
    """At most one write per interval: an ack after a quiet interval is written at once, the
    acks within the interval wait for the delayed write, which holds every ack before it."""
    writes = AckStateWrites(0.1)
    writes.ack(1.0, 1)  # quiet before: written at once
    writes.ack(1.05, 2)  # waits for the write at 1.1
    writes.ack(1.12, 3)  # after that write: waits for 1.2
    assert writes.lost(1.15) == [3]
    writes.ack(2.0, 4)  # quiet again after the kill: written at once
    assert writes.lost(2.01) == []
    writes.ack(2.05, 5)
    assert writes.lost(2.2) == []  # the write at 2.1 held it


def test_nats_core_kill_buffers_publishes_in_the_client_until_the_restart() -> None:
    """NATS core stores nothing, but nats-py buffers publishes while it reconnects (measured on
    a real kill: every publish one attempt, in order, none failed): a publish while the broker
    is down returns at once (t_sent is its call) and goes out after the restart; nothing fails,
    nothing is redelivered or duplicated."""
    result = simulate(make({"kind": "nats"}, KILL), 1)
    sends, deliveries = result.trace.sends, result.trace.deliveries
    checks = check_delivery(sends, deliveries)
    assert checks.failed == 0 and checks.duplicates == 0 and checks.redelivered == 0
    down = sends[(sends["t_intended"] >= 1.5) & (sends["t_intended"] < 2.0)]
    assert len(down) > 400
    assert (down["attempts"] == 1).all()
    assert np.allclose(down["t_sent"], down["t_intended"])
    got = deliveries[deliveries["msg_id"].isin(down["msg_id"])]
    assert len(got) == len(down) and (got["t_delivered"] >= 2.0).all()


def test_a_producer_that_crashes_while_buffering_loses_what_it_buffered() -> None:
    """The broker is down from 1.5 s to 2 s and the producer crashes at 1.7 s: what it buffered
    since 1.5 s dies with it (its calls had returned: acked, never delivered), what it
    publishes after its restart at 1.8 s is buffered again and delivered."""
    crash = {"at": "1.7s", "action": "producer-crash", "target": "producer-0", "duration": "0.1s"}
    result = simulate(make({"kind": "nats"}, KILL, crash), 1)
    sends, deliveries = result.trace.sends, result.trace.deliveries
    delivered = set(deliveries["msg_id"])
    gone = sends[(sends["t_intended"] >= 1.5) & (sends["t_intended"] < 1.69)]
    assert len(gone) > 100 and (gone["outcome"] == "acked").all()
    assert not delivered & set(gone["msg_id"])
    later = sends[(sends["t_intended"] >= 1.81) & (sends["t_intended"] < 2.0)]
    assert len(later) > 100 and set(later["msg_id"]) <= delivered


# ---------------------------------------------------------------------------- consumer crash


def test_nats_core_consumer_crash_loses_messages_without_duplicates() -> None:
    """NATS core, one subscriber: what it held and what came while it was down is lost."""
    result = simulate(make({"kind": "nats"}, CONSUMER_CRASH, consumers={"count": 1}), 1)
    checks = check_delivery(result.trace.sends, result.trace.deliveries)
    assert checks.lost > 300 and checks.duplicates == 0
    assert result.info["no_interest"] > 0


def test_nats_core_crash_counts_only_the_batch_in_hand_as_delivered() -> None:
    """What a crashed subscriber's client library still buffered was never handed to its handler:
    not delivered, lost. Only the batch its handler had taken (at most prefetch 5) shows as
    delivered and never done, as in the harness. (It used to show the whole buffer, hundreds.)"""
    result = simulate(make({"kind": "nats"}, CONSUMER_CRASH, consumers={"count": 1}), 1)
    deliveries = result.trace.deliveries
    died = deliveries[deliveries["t_done"].isna()]
    assert 1 <= len(died) <= 5 and (died["t_delivered"] < 1.0).all()
    assert (deliveries["t_done"].notna() | (deliveries["t_delivered"] < 1.0)).all()


@pytest.mark.parametrize("kind", ["nats-jetstream", "redis-streams", "rabbitmq", "kafka"])
def test_acked_brokers_redeliver_what_a_crashed_consumer_held(kind: str) -> None:
    """Consumer crash on a log or queue: no loss; its unacked deliveries come back (redelivered)."""
    result = simulate(make({"kind": kind}, CONSUMER_CRASH), 1)
    deliveries = result.trace.deliveries
    checks = check_delivery(result.trace.sends, deliveries)
    assert checks.lost == 0 and checks.redelivered > 0
    died = deliveries[(deliveries["consumer"] == 0) & deliveries["t_done"].isna()]
    assert len(died) > 0 and (died["t_delivered"] < 1.0).all()  # held at the crash, never done


# ---------------------------------------------------------------------------- pause and partition


def test_broker_pause_with_retries_duplicates_on_redis() -> None:
    """Pause past publish_timeout, retry same-id: Redis has no dedup, the copies are delivered."""
    checks = check(make({"kind": "redis-streams"}, PAUSE, producers=RETRY_SAME_ID))
    assert checks.duplicates > 300 and checks.lost == 0
    assert checks.recovered > 0  # gave up (unknown), yet delivered
    # Redeliveries are only what the consumers held when the pause began (2 x prefetch 5): they
    # wait for their acks' replies until the resume, past those deliveries' 1 s ack timeout.
    assert checks.redelivered <= 2 * 5


def test_broker_pause_with_retries_is_deduplicated_by_jetstream_msg_id() -> None:
    """The same retries against JetStream with a dedup window: no message is stored twice
    (each has one first delivery); the few duplicates are redeliveries of what the consumers
    held when the pause began (as on Redis)."""
    scenario = make(
        {"kind": "nats-jetstream", "dedup_window": "2min"}, PAUSE, producers=RETRY_SAME_ID
    )
    result = simulate(scenario, 1)
    checks = check_delivery(result.trace.sends, result.trace.deliveries)
    deliveries = result.trace.deliveries
    copies = deliveries[deliveries["delivery_no"] == 1].groupby("msg_id").size()
    assert copies.max() == 1 and checks.lost == 0
    assert checks.duplicates <= 2 * 5
    assert result.info["deduplicated"] > 300


def test_new_id_retries_are_not_deduplicated() -> None:
    """retry new-id gives each attempt a new dedup id: JetStream stores every copy."""
    producers = {**RETRY_SAME_ID, "retry": "new-id"}
    scenario = make({"kind": "nats-jetstream", "dedup_window": "2min"}, PAUSE, producers=producers)
    assert check(scenario).duplicates > 300


def test_partition_gives_unknown_publishes_and_no_loss_on_jetstream() -> None:
    """A 1 s partition: publishes time out (unknown), are delivered after it heals; none lost."""
    scenario = make({"kind": "nats-jetstream"}, PARTITION, producers={"publish_timeout": "200ms"})
    result = simulate(scenario, 1)
    checks = check_delivery(result.trace.sends, result.trace.deliveries)
    assert checks.unknown > 300 and checks.recovered == checks.unknown and checks.lost == 0
    first = result.trace.deliveries.groupby("msg_id")["t_delivered"].min()
    assert not ((first > 1.0 + 0.01) & (first < 2.0)).any()  # nothing got through the cut


def test_partitioned_consumers_get_redeliveries_after_ack_timeout() -> None:
    """Consumers cut off longer than ack_timeout: held acks come late, entries are redelivered."""
    scenario = make(
        {"kind": "redis-streams", "ack_timeout": "300ms"}, {**PARTITION, "target": "consumers"}
    )
    checks = check(scenario)
    assert checks.lost == 0 and checks.redelivered > 0


def test_nats_core_loses_messages_routed_to_a_partitioned_consumer() -> None:
    """NATS core: a cut-off subscriber's messages are dropped; a cut-off publisher's arrive late."""
    consumers = check(make({"kind": "nats"}, {**PARTITION, "target": "consumers"}))
    producers = check(make({"kind": "nats"}, {**PARTITION, "target": "producers"}))
    assert consumers.lost > 500 and consumers.duplicates == 0
    assert producers.lost == 0


# ---------------------------------------------------------------------------- network faults


def test_connection_reset_loses_fire_and_forget_messages_in_flight() -> None:
    """NATS core: messages on the wire when connections reset are lost, a handful at 1,000/s."""
    reset = {"at": "1s", "action": "connection-reset", "target": "all"}
    checks = check(make({"kind": "nats"}, reset))
    assert 0 < checks.lost < 20


def test_connection_reset_on_redis_redelivers_and_loses_nothing() -> None:
    """Redis: deliveries in flight at a reset stay pending and come back after ack_timeout."""
    reset = {"at": "1s", "action": "connection-reset", "target": "all"}
    checks = check(make({"kind": "redis-streams"}, reset, producers={"retry": "same-id"}))
    assert checks.lost == 0 and checks.redelivered > 0 and checks.failed == 0


def test_latency_fault_adds_delay_to_publishes_during_the_window() -> None:
    """latency 50 ms ± 10 ms on all hops: a round trip inside the window takes 80 ms or more."""
    latency = {"at": "1s", "action": "latency", "target": "all", "duration": "0.5s"}
    scenario = make({"kind": "redis-streams"}, {**latency, "delay": "50ms", "jitter": "10ms"})
    sends = simulate(scenario, 1).trace.sends
    publish = sends["t_acked"] - sends["t_sent"]
    inside = publish[(sends["t_sent"] >= 1.0) & (sends["t_sent"] < 1.4)]  # both hops inside
    outside = publish[sends["t_sent"] < 0.9]
    assert inside.min() > 0.08 - 1e-6 and inside.median() < 0.13
    assert outside.max() == pytest.approx(0.002, abs=1e-5)


def test_bandwidth_limit_serialises_publishes() -> None:
    """100 kB/s for 256 B messages (390/s) at 1,000/s: publish latency climbs in the window."""
    bandwidth = {"at": "1s", "action": "bandwidth", "target": "producers", "duration": "0.5s"}
    scenario = make({"kind": "redis-streams"}, {**bandwidth, "bandwidth": "100000/s"})
    sends = simulate(scenario, 1).trace.sends
    publish = (sends["t_acked"] - sends["t_sent"]).to_numpy()
    window = ((sends["t_sent"] >= 1.0) & (sends["t_sent"] < 1.5)).to_numpy()
    assert publish[window].max() > 0.2 and publish[~window & (sends["t_sent"] < 0.9)].max() < 0.003
    assert check_delivery(sends, simulate(scenario, 1).trace.deliveries).lost == 0


# ---------------------------------------------------------------------------- client faults


def test_producer_crash_sends_intended_messages_late_on_restart() -> None:
    """Messages intended while the producer is down are sent at its restart (publish_delay gap)."""
    crash = {"at": "1s", "action": "producer-crash", "target": "producer-0", "duration": "0.5s"}
    sends = simulate(make({"kind": "redis-streams"}, crash), 1).trace.sends
    late = sends[(sends["t_intended"] >= 1.0) & (sends["t_intended"] < 1.5)]
    assert len(late) > 300
    np.testing.assert_allclose(late["t_sent"], 1.5)
    assert (late["outcome"] == "acked").all()
    unknown = sends[sends["outcome"] == "unknown"]
    assert len(unknown) > 0 and (unknown["t_sent"] < 1.0).all()  # in flight at the crash


def test_slow_consumer_grows_the_backlog_during_its_window() -> None:
    """Processing × 10 from 0.5 s to 1 s at 300/s: the timeline's backlog climbs, then drains."""
    slow = {"at": "0.5s", "action": "slow-consumer", "target": "consumers", "duration": "0.5s"}
    scenario = make({"kind": "redis-streams"}, {**slow, "factor": 10}, producers={"rate": "300/s"})
    timeline = simulate(scenario, 1).trace.timeline.set_index("t_start")["backlog"]
    before, during, after = timeline.loc[0.4], timeline.loc[0.9], timeline.loc[2.0]
    assert during > 50 > before and after < during


# ---------------------------------------------------------------------------- target contract


def test_fault_windows_are_reported_and_marked_in_the_timeline() -> None:
    """TargetResult.faults has one window per entry; the timeline's faults column names them."""
    result: TargetResult = simulate(
        make({"kind": "redis-streams"}, KILL, PAUSE | {"at": "2.5s"}), 1
    )
    assert result.faults == [
        FaultWindow("broker-kill", "broker", 1.5, 2.0),
        FaultWindow("broker-pause", "broker", 2.5, 3.5),
    ]
    timeline = result.trace.timeline
    marked = timeline[timeline["faults"] != ""]
    assert set(marked["faults"]) == {"broker-kill:broker", "broker-pause:broker"}
    assert marked["t_start"].min() == pytest.approx(1.5) and marked["t_end"].max() == pytest.approx(
        3.5
    )
    assert not any("not simulated" in warning for warning in result.warnings)


def test_fault_fields_the_simulator_cannot_play_are_warned_about() -> None:
    """power_loss on a pause and a consumer target for a producer crash: ignored, with a warning."""
    crash = {"at": "1s", "action": "producer-crash", "target": "all", "duration": "0.1s"}
    result = simulate(make({"kind": "redis-streams"}, PAUSE | {"power_loss": True}, crash), 1)
    assert any("faults[0]" in w and "power_loss" in w for w in result.warnings)
    assert any("faults[1]" in w and "consumers in 'all' ignored" in w for w in result.warnings)


def test_same_seed_gives_identical_faulted_trace() -> None:
    """Faults (including jitter draws) are deterministic for a seed."""
    latency = {"at": "0.5s", "action": "latency", "target": "all", "duration": "1s"}
    faults = [KILL, {**latency, "delay": "5ms", "jitter": "4ms"}, CONSUMER_CRASH]
    scenario = make({"kind": "nats-jetstream"}, *faults, producers={"retry": "same-id"})
    a, b = simulate(scenario, 7).trace, simulate(scenario, 7).trace
    assert (a.deliveries["delivery_no"] > 1).any()
    pd.testing.assert_frame_equal(a.sends, b.sends)
    pd.testing.assert_frame_equal(a.deliveries, b.deliveries)
    pd.testing.assert_frame_equal(a.timeline, b.timeline)


@pytest.mark.parametrize("kind", ["redis-streams", "nats-jetstream", "nats", "rabbitmq", "kafka"])
def test_a_fault_that_touches_nothing_leaves_the_trace_as_without_faults(kind: str) -> None:
    """The faulted message path is the engine's: a fault after the run changes no row."""
    broker = {"kind": kind, "partitions": 3}
    random = {"delay": {"dist": "exponential", "mean": "1ms"}}
    after_the_run = {"at": "100s", "action": "slow-consumer", "target": "consumers", "factor": 2}
    plain = simulate(make(broker, network=random), 3).trace
    faulted = simulate(make(broker, after_the_run, network=random), 3).trace
    pd.testing.assert_frame_equal(plain.sends, faulted.sends)
    pd.testing.assert_frame_equal(plain.deliveries, faulted.deliveries)


# ---------------------------------------------------------------------------- kafka rebalance


def kafka_crash(broker: dict[str, str], down: str, seconds: int) -> Scenario:
    """Kafka, 2 partitions, 2 consumers (prefetch 5, 10 ms each: busy 100%, so consumer-0 holds
    messages when it crashes) at 200/s (Poisson) over 8 keys; consumer-0 crashes at 2 s for
    ``down``. Offsets only (no ack timer) unless ``broker`` sets ``ack_timeout``."""
    crash = {"at": "2s", "action": "consumer-crash", "target": "consumer-0", "duration": down}
    data: dict[str, Any] = {
        "name": "rebalance",
        "producers": {"rate": "200/s", "messages": 200 * seconds, "keys": 8},
        "broker": {"kind": "kafka", "partitions": 2, "profile": "none", **broker},
        "consumers": {
            "count": 2,
            "prefetch": 5,
            "processing": "10ms",
        },
        "network": {"delay": "1ms"},
        "faults": [crash],
    }
    return parse_scenario(data)


@pytest.mark.parametrize(
    "ack_timeout", [{}, {"ack_timeout": "1s"}], ids=["offsets", "with-ack-timeout"]
)
def test_kafka_hands_a_crashed_members_partitions_to_the_survivor(
    ack_timeout: dict[str, str],
) -> None:
    """Consumer-0 dies at 2 s and never returns: after the 6 s session timeout the group gives
    partition 0 to consumer-1, which delivers it again from what consumer-0 had not committed
    (redelivered first, then the rest in order): nothing is stuck, nothing lost, per-key order."""
    scenario = kafka_crash(ack_timeout, "60s", 12)
    result = simulate(scenario, 1)
    deliveries = result.trace.deliveries
    rows = deliveries.merge(result.trace.sends[["msg_id", "key", "seq"]], on="msg_id")
    partition0 = rows["key"] % 2 == 0
    survivor = rows["consumer"] == 1
    # Until the session times out (2 s + 6 s) consumer-1 reads partition 1 only.
    assert not (survivor & partition0 & (rows["t_delivered"] < 8.0)).any()
    taken = rows[survivor & partition0]
    assert len(taken) > 0 and taken["t_delivered"].min() < 8.1
    # Everything is delivered and processed: partition 0 is not stuck behind the dead member.
    checks = check_delivery(result.trace.sends, deliveries)
    assert checks.lost == 0 and checks.unprocessed == 0
    assert result.info["drain"]["reason"] == "complete"
    # What consumer-0 held uncommitted at the crash is delivered again, by consumer-1.
    died = rows[(rows["consumer"] == 0) & rows["t_done"].isna()]
    assert len(died) > 0
    again = taken[taken["msg_id"].isin(died["msg_id"])]
    assert set(again["msg_id"]) == set(died["msg_id"])
    assert (again["delivery_no"] >= 2).all()
    # (attempts sent to consumer-0 that never reached it count as redelivered too)
    assert checks.redelivered >= len(died) and checks.duplicates == len(died)
    # Per key, consumer-1's deliveries follow the log (redeliveries first, then new entries).
    ordered = taken.sort_values(["t_delivered", "seq"], kind="stable")
    assert (ordered.groupby("key")["seq"].diff().dropna() > 0).all()
    counts = analyze(result.trace, scenario, target="sim", seed=1, duration_s=12.0)
    assert counts.checks.counts()["out_of_order"] == 0


def test_kafka_gives_the_partitions_back_when_the_member_returns() -> None:
    """Consumer-0 is back at 10 s (after its session expired at 8 s): the group rebalances and
    it reads partition 0 again; consumer-1 never reads partition 0 after the handover."""
    scenario = kafka_crash({}, "8s", 14)
    result = simulate(scenario, 1)
    rows = result.trace.deliveries.merge(result.trace.sends[["msg_id", "key"]], on="msg_id")
    partition0 = rows["key"] % 2 == 0
    late = rows["t_delivered"] > 10.2
    assert (rows[partition0 & late]["consumer"] == 0).all()
    assert (rows[~partition0]["consumer"] == 1).all()
    meanwhile = rows[(rows["consumer"] == 1) & partition0]
    assert len(meanwhile) > 0  # it had partition 0 meanwhile
    # One reader at a time: consumer-1 finished partition 0's last entry before consumer-0 got
    # its first one back (the handover waited for what consumer-1 had fetched).
    back = rows[(rows["consumer"] == 0) & partition0 & (rows["t_delivered"] > 3.0)]
    assert meanwhile["t_done"].max() <= back["t_delivered"].min()
    assert back["t_delivered"].min() < 10.2
    checks = check_delivery(result.trace.sends, result.trace.deliveries)
    assert checks.lost == 0 and checks.unprocessed == 0 and checks.out_of_order == 0


def test_a_crash_shorter_than_the_session_keeps_the_partitions() -> None:
    """Back before its session times out, a member keeps its partitions: no rebalance."""
    scenario = kafka_crash({}, "3s", 8)
    result = simulate(scenario, 1)
    rows = result.trace.deliveries.merge(result.trace.sends[["msg_id", "key"]], on="msg_id")
    assert (rows[rows["key"] % 2 == 0]["consumer"] == 0).all()


def test_a_crash_with_the_ack_in_flight_finishes_the_message_as_the_harness_does() -> None:
    """Known answer: one message at 0 s, 5 ms each hop, 4 ms of processing. It is stored at
    5 ms and delivered at 10 ms, processed by 14 ms; its ack reaches the broker at 19 ms and the
    reply would be back at 24 ms; the consumer crashes at 20 ms. Processing finished (t_done at
    the crash, as the harness records a crash with the ack in flight), the broker applied the
    ack, so the message is neither unprocessed nor delivered again."""
    scenario = parse_scenario(
        {
            "name": "ack-in-flight",
            "producers": {"rate": "1/s", "messages": 1, "arrival": "constant"},
            "broker": {"kind": "redis-streams", "ack_timeout": "1s", "profile": "none"},
            "consumers": {"count": 1, "processing": "4ms", "prefetch": 1, "ack": "after"},
            "network": {"delay": "5ms"},
            "faults": [
                {"at": "20ms", "action": "consumer-crash", "target": "consumer-0", "duration": "1s"}
            ],
            "drain_timeout": "3s",
        }
    )
    result = simulate(scenario, seed=1)
    deliveries = result.trace.deliveries
    assert len(deliveries) == 1
    (row,) = deliveries.itertuples()
    assert row.t_delivered == pytest.approx(0.010)
    assert row.t_done == pytest.approx(0.020)
    checks = check_delivery(result.trace.sends, deliveries)
    assert (checks.lost, checks.unprocessed, checks.redelivered) == (0, 0, 0)
    assert result.info["drain"]["reason"] == "complete"
