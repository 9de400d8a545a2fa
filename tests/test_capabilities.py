"""The broker capability table and the verdicts judged from it."""

from __future__ import annotations

import pytest

from brokerlab.app.capabilities import BrokerCapabilities, judge, load_capabilities
from brokerlab.core.scenario import Requirements
from brokerlab.core.vocabulary import BROKER_KINDS

VENDOR_DOMAINS = (
    "redis.io",
    "docs.nats.io",
    "kafka.apache.org",
    "www.rabbitmq.com",
    "docs.aws.amazon.com",
    "learn.microsoft.com",
    "docs.kurrent.io",
)
ADAPTED = {"redis-streams", "nats", "nats-jetstream"}


def _verdict(requirements: Requirements, kind: str, name: str):
    """The one verdict called ``name`` for this broker."""
    (verdict,) = [v for v in judge(requirements, kind) if v.name == name]
    return verdict


def test_table_covers_every_broker_kind():
    """Every broker kind the scenario accepts has an entry, and nothing else does."""
    table = load_capabilities()
    assert set(table) == set(BROKER_KINDS)
    assert all(isinstance(entry, BrokerCapabilities) for entry in table.values())


@pytest.mark.parametrize("kind", BROKER_KINDS)
def test_every_fact_cites_an_https_vendor_page(kind):
    """Each fact names a vendor documentation page over https, with a title."""
    for name, fact in load_capabilities()[kind].facts().items():
        url = fact.source.url
        assert url.scheme == "https", (kind, name)
        assert url.host in VENDOR_DOMAINS, (kind, name, url.host)
        assert fact.source.title.strip(), (kind, name)


@pytest.mark.parametrize("kind", BROKER_KINDS)
def test_unverified_facts_say_so(kind):
    """A fact not checked against its page says 'unverified' in its note."""
    for fact in load_capabilities()[kind].facts().values():
        assert fact.verified or "unverified" in fact.note.lower()


@pytest.mark.parametrize("kind", BROKER_KINDS)
def test_sizes_are_positive_and_ordered(kind):
    """Message size limits are positive, and a configurable ceiling is not below the default."""
    size = load_capabilities()[kind].max_message_size
    assert size.value > 0
    if size.configurable_up_to is not None:
        assert size.configurable_up_to >= size.value


def test_only_adapted_brokers_are_real():
    """Brokers with a real adapter are the only ones not marked simulated_only."""
    table = load_capabilities()
    assert {kind for kind, entry in table.items() if not entry.simulated_only} == ADAPTED


def test_replay_fails_on_core_nats_and_passes_on_kafka():
    """Core NATS cannot replay; Kafka can."""
    needs = Requirements(replay=True)
    assert _verdict(needs, "nats", "replay").ok is False
    assert _verdict(needs, "kafka", "replay").ok is True


def test_two_mib_messages_fail_on_sqs_and_pass_on_redis_streams():
    """SQS caps messages at 1 MiB; a Redis stream value may be far larger."""
    needs = Requirements(max_message_size="2MiB")
    assert _verdict(needs, "sqs", "max_message_size").ok is False
    assert _verdict(needs, "redis-streams", "max_message_size").ok is True


def test_per_key_ordering_passes_on_jetstream():
    """JetStream can give per-key order."""
    needs = Requirements(ordering="per-key")
    verdict = _verdict(needs, "nats-jetstream", "ordering per-key")
    assert verdict.ok is True
    assert verdict.source.startswith("https://docs.nats.io/")


def test_no_loss_needs_a_durable_option():
    """Core NATS has no durable storage; Redis has AOF always."""
    needs = Requirements(max_lost=0)
    assert _verdict(needs, "nats", "max_lost").ok is False
    assert _verdict(needs, "redis-streams", "max_lost").ok is True


def test_no_duplicates_with_no_loss_needs_exactly_once():
    """At-most-once cannot meet zero loss and zero duplicates together; exactly-once can."""
    strict = Requirements(max_lost=0, max_duplicates=0)
    assert _verdict(strict, "redis-streams", "max_duplicates").ok is False
    assert _verdict(strict, "nats-jetstream", "max_duplicates").ok is True
    lossy = Requirements(max_lost=None, max_duplicates=0)
    assert _verdict(lossy, "nats", "max_duplicates").ok is True


def test_only_stated_requirements_are_judged():
    """A scenario that allows loss and asks nothing else gets no capability verdicts."""
    assert judge(Requirements(max_lost=None), "kafka") == []


def test_unknown_kind_is_refused():
    """Judging a broker the table does not know is an error, not a silent pass."""
    with pytest.raises(KeyError):
        judge(Requirements(replay=True), "mqtt")


def test_an_unverified_fact_neither_passes_nor_fails():
    """Kafka's delivery fact is unverified: max_duplicates reads unknown (ok None), the table's
    finding kept apart; a verified fact still decides (JetStream's, ok True).
    Before: the unverified finding counted as ok True."""
    strict = Requirements(max_lost=0, max_duplicates=0)
    kafka = _verdict(strict, "kafka", "max_duplicates")
    assert (kafka.verified, kafka.ok, kafka.status, kafka.finding) == (False, None, "unknown", True)
    assert kafka.to_dict()["status"] == "unknown"
    jetstream = _verdict(strict, "nats-jetstream", "max_duplicates")
    assert (jetstream.ok, jetstream.status) == (True, "ok")
    sqs_replay = _verdict(Requirements(replay=True), "sqs", "replay")
    assert (sqs_replay.status, sqs_replay.finding) == ("unknown", False)
