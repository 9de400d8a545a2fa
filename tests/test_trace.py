"""The timeline every target writes: rates, consumer lag and fault windows per interval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from trace_builders import deliveries_table, sends_table

from brokerlab.core.trace import (
    FaultWindow,
    build_timeline,
    first_deliveries,
    make_deliveries,
    make_sends,
)


def _trace(t_sent: list[float], t_delivered: list[float]) -> tuple:
    n = len(t_sent)
    times = np.array(t_sent)
    sends = make_sends(
        np.zeros(n, "int32"),
        np.arange(n),
        np.full(n, -1),
        np.full(n, 100),
        times,
        times,
        times,
        np.array(["acked"] * n),
        np.ones(n, "int16"),
    )
    delivered = np.array(t_delivered)
    deliveries = make_deliveries(
        sends["msg_id"].to_numpy()[: len(delivered)],
        np.zeros(len(delivered), "int32"),
        np.ones(len(delivered), "int32"),
        delivered,
        delivered + 0.01,
    )
    return sends, deliveries


def test_backlog_counts_sent_but_not_yet_received() -> None:
    """Lag at an interval's end is messages sent so far minus those a consumer has received."""
    sends, deliveries = _trace([0.1, 0.2, 0.3, 1.1], [0.15, 1.5, 1.6])
    timeline = build_timeline(sends, deliveries, interval=1.0)
    assert list(timeline["sent"]) == [3, 1]
    assert list(timeline["delivered"]) == [1, 2]
    assert list(timeline["backlog"]) == [2, 1]
    assert list(timeline["sent_per_s"]) == [3.0, 1.0]


def test_fault_windows_mark_their_intervals() -> None:
    """A fault marks every interval it overlaps; an instant one marks the interval it falls in."""
    sends, deliveries = _trace([0.0, 1.0, 2.0], [0.1, 1.1, 2.1])
    windows = [
        FaultWindow("broker-pause", "broker", 0.6, 1.2),
        FaultWindow("connection-reset", "all", 2.0, 2.0),
    ]
    timeline = build_timeline(sends, deliveries, windows, interval=0.5)
    marks = dict(zip(timeline["t_start"], timeline["faults"], strict=True))
    assert marks[0.0] == "" and marks[0.5] == "broker-pause:broker"
    assert marks[1.0] == "broker-pause:broker" and marks[1.5] == ""
    assert marks[2.0] == "connection-reset:all"


def test_backlog_counts_each_message_once_whatever_its_copies() -> None:
    """A retried publish stored twice is delivered twice with delivery_no 1 (two broker copies);
    it leaves the backlog once, at its first delivery, and so does a redelivered message.

    Four messages sent in the first second; by t = 1 s only ``0:0`` was received (twice, as two
    copies) and ``0:1`` once: two are still waiting. Counting every ``delivery_no == 1`` row
    (the old figure) said one.
    """
    sends = sends_table([0, 0, 0, 0], [0, 1, 2, 3], t_sent=[0.1, 0.2, 0.3, 0.4])
    deliveries = deliveries_table(
        ["0:0", "0:0", "0:1", "0:1", "0:2", "0:3"],
        [0.5, 0.6, 0.7, 1.2, 1.5, 1.6],
        delivery_no=[1, 1, 1, 2, 1, 1],
    )
    timeline = build_timeline(sends, deliveries, interval=1.0)
    assert list(timeline["backlog"]) == [2, 0]
    assert list(timeline["delivered"]) == [3, 3]  # the rate still counts every delivery row


def test_backlog_ignores_deliveries_of_ids_never_sent() -> None:
    """A stray delivery (an id nobody sent) does not make the backlog look smaller."""
    sends = sends_table([0, 0], [0, 1], t_sent=[0.1, 0.2])
    deliveries = deliveries_table(["0:0", "9:9"], [0.3, 0.4])
    timeline = build_timeline(sends, deliveries, interval=1.0)
    assert list(timeline["backlog"]) == [1]


def test_first_deliveries_is_the_earliest_receipt_per_sent_message() -> None:
    """One entry per sends row: the earliest t_delivered of its rows, NaN when never received."""
    sends = sends_table([0, 0, 0], [0, 1, 2])
    deliveries = deliveries_table(["0:1", "0:0", "0:1"], [0.9, 0.4, 0.3], delivery_no=[1, 1, 2])
    np.testing.assert_array_equal(first_deliveries(sends, deliveries), [0.4, 0.3, np.nan])


def test_msg_ids_are_producer_colon_seq() -> None:
    """Ids are joined in Arrow; they must read exactly as ``producer:seq`` in decimal."""
    from brokerlab.core.trace import msg_ids

    producers = np.array([0, 1, 12, -1, 2_147_483_647], dtype="int32")
    seqs = np.array([0, 5, 123_456_789_012, 7, -3], dtype="int64")
    assert list(msg_ids(producers, seqs)) == [
        "0:0",
        "1:5",
        "12:123456789012",
        "-1:7",
        "2147483647:-3",
    ]
    assert len(msg_ids(producers[:0], seqs[:0])) == 0
    sends = make_sends(
        producers, seqs, np.full(5, -1), np.full(5, 10), *([np.zeros(5)] * 3),
        np.array(["acked"] * 5), np.ones(5, dtype="int16"),
    )  # fmt: skip
    assert str(sends["msg_id"].dtype) == "string"
    assert sends["msg_id"].tolist()[2] == "12:123456789012"


def test_a_run_whose_trace_cannot_be_written_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trace is written on a thread while it is analysed; a failure there is the run's
    failure, raised in the caller, and nothing half-written is left behind."""
    from brokerlab.app import runner
    from brokerlab.core.scenario import parse_scenario
    from brokerlab.core.trace import Trace

    def broken(self: Trace, folder: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(Trace, "write", broken)
    scenario = parse_scenario(
        {
            "name": "tiny",
            "producers": {"rate": "100/s", "messages": 50},
            "broker": {"kind": "redis-streams", "profile": "none"},
            "consumers": {"processing": "1ms"},
        }
    )
    out = tmp_path / "run"
    with pytest.raises(OSError, match="disk full"):
        runner.run_scenario(scenario, "sim", runner.RunOptions(out=out, results_dir=tmp_path))
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []
