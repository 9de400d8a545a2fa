"""The load harness: plays a scenario's load plan against a real broker and records the trace.

Everything all brokers share lives here once; a broker adapter (:class:`BrokerAdapter`) only says
how to publish a batch, fetch a batch and ack. One module per job, each importing only those
above it in this list (no cycles):

================  ===============================================================================
``clock``         the run's one monotonic clock, microsecond waits, ending tasks
``payload``       message payloads: the lab's ids in a fixed header, padding to the size
``redaction``     credentials never leave the harness (redacted URLs, scrubbed text)
``adapter``       the adapter interface (:class:`BrokerAdapter`, :data:`Received`, run names)
``recording``     the sends and deliveries tables, cheap per message
``producers``     open-loop producers: acks, retries, publish timeouts, crashes
``consumers``     competing consumers: fetch, process, ack, crashes
``run``           :func:`play`: setup, start, send, drain, teardown, the trace; crews
================  ===============================================================================

Every public name is importable from ``brokerlab.adapters.harness`` itself, as before the split.
"""

from __future__ import annotations

from brokerlab.adapters.harness.adapter import (
    CLOSE_TIMEOUT,
    FETCH_BACKOFF,
    FETCH_BACKOFF_MAX,
    FETCH_GRACE,
    FETCH_WAIT,
    SETUP_TIMEOUT,
    AdapterFactory,
    BrokerAdapter,
    PublishRejected,
    PublishResults,
    Received,
    RunNames,
    close_adapter,
)
from brokerlab.adapters.harness.clock import SPIN_WINDOW, TICK, now, sleep_until, stop_tasks
from brokerlab.adapters.harness.consumers import ConsumerGroup
from brokerlab.adapters.harness.payload import (
    HEADER,
    decode_payload,
    encode_payload,
    payload_struct,
)
from brokerlab.adapters.harness.producers import MAX_BATCH, MAX_IN_FLIGHT, ProducerGroup
from brokerlab.adapters.harness.recording import (
    ACKED,
    FAILED,
    UNKNOWN,
    VECTOR_MIN,
    DeliveryLog,
    SendLog,
    producer_major,
)
from brokerlab.adapters.harness.redaction import (
    RealBrokerError,
    Scrubber,
    redact_url,
    url_secrets,
)
from brokerlab.adapters.harness.run import (
    BEHIND_P99,
    START_LEAD,
    Crew,
    CrewReport,
    FaultPlayer,
    LocalCrew,
    RunClients,
    hard_deadline,
    play,
    run_harness,
    send_budget,
)

__all__ = [
    "ACKED",
    "BEHIND_P99",
    "CLOSE_TIMEOUT",
    "FAILED",
    "FETCH_BACKOFF",
    "FETCH_BACKOFF_MAX",
    "FETCH_GRACE",
    "FETCH_WAIT",
    "HEADER",
    "MAX_BATCH",
    "MAX_IN_FLIGHT",
    "SETUP_TIMEOUT",
    "SPIN_WINDOW",
    "START_LEAD",
    "TICK",
    "UNKNOWN",
    "VECTOR_MIN",
    "AdapterFactory",
    "BrokerAdapter",
    "ConsumerGroup",
    "Crew",
    "CrewReport",
    "DeliveryLog",
    "FaultPlayer",
    "LocalCrew",
    "ProducerGroup",
    "PublishRejected",
    "PublishResults",
    "RealBrokerError",
    "Received",
    "RunClients",
    "RunNames",
    "Scrubber",
    "SendLog",
    "close_adapter",
    "decode_payload",
    "encode_payload",
    "hard_deadline",
    "now",
    "payload_struct",
    "play",
    "producer_major",
    "redact_url",
    "run_harness",
    "send_budget",
    "sleep_until",
    "stop_tasks",
    "url_secrets",
]
