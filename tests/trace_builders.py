"""Hand-built traces for known-answer tests of the analysis (small, explicit, readable)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from brokerlab.core.scenario import Scenario, parse_scenario
from brokerlab.core.trace import NO_KEY, TIMELINE_SCHEMA, Trace, empty, make_deliveries, make_sends


def sends_table(
    producer: Sequence[int],
    seq: Sequence[int],
    *,
    key: Sequence[int] | None = None,
    t_intended: Sequence[float] | None = None,
    t_sent: Sequence[float] | None = None,
    t_acked: Sequence[float] | None = None,
    outcome: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Sends with defaults: keyless, intended every 10 ms, sent on time, acked 1 ms later."""
    n = len(producer)
    intended = np.arange(n) * 0.01 if t_intended is None else np.asarray(t_intended, dtype=float)
    sent = intended if t_sent is None else np.asarray(t_sent, dtype=float)
    acked = sent + 0.001 if t_acked is None else np.asarray(t_acked, dtype=float)
    return make_sends(
        producer=np.asarray(producer, dtype="int32"),
        seq=np.asarray(seq, dtype="int64"),
        key=np.full(n, NO_KEY) if key is None else np.asarray(key, dtype="int64"),
        size=np.full(n, 100),
        t_intended=intended,
        t_sent=sent,
        t_acked=acked,
        outcome=np.asarray(["acked"] * n if outcome is None else outcome),
        attempts=np.ones(n, dtype="int16"),
    )


def deliveries_table(
    msg_id: Sequence[str],
    t_delivered: Sequence[float],
    *,
    delivery_no: Sequence[int] | None = None,
    t_done: Sequence[float] | None = None,
) -> pd.DataFrame:
    """Deliveries with defaults: first attempts, processing done 1 ms after delivery."""
    n = len(msg_id)
    delivered = np.asarray(t_delivered, dtype=float)
    return make_deliveries(
        msg_id=np.asarray(msg_id, dtype=object),
        consumer=np.zeros(n, dtype="int32"),
        delivery_no=np.ones(n, dtype="int32")
        if delivery_no is None
        else np.asarray(delivery_no, dtype="int32"),
        t_delivered=delivered,
        t_done=delivered + 0.001 if t_done is None else np.asarray(t_done, dtype=float),
    )


def trace_of(sends: pd.DataFrame, deliveries: pd.DataFrame) -> Trace:
    """A trace with an empty timeline (the analysis does not read it)."""
    return Trace(sends=sends, deliveries=deliveries, timeline=empty(TIMELINE_SCHEMA))


def scenario_with(
    requirements: dict | None = None, *, warmup: str = "0s", rate: str = "100/s"
) -> Scenario:
    """A minimal valid scenario carrying the given requirements."""
    return parse_scenario(
        {
            "name": "known-answers",
            "producers": {"rate": rate, "messages": 10, "warmup": warmup},
            "broker": {"kind": "nats"},
            "requirements": requirements or {},
        }
    )
