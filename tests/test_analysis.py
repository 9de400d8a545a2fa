"""The analysis of a whole run: latencies, throughput, requirements, verdict and metrics.json."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from trace_builders import deliveries_table, scenario_with, sends_table, trace_of

from brokerlab.core.analysis import Analysis, analyze, latency_table
from brokerlab.core.trace import DELIVERIES_SCHEMA, SENDS_SCHEMA, Trace, empty

NAN = math.nan


def run(sends, deliveries, scenario=None) -> Analysis:
    """Analyse a hand-built trace under a scenario (default: no requirements but max_lost 0)."""
    return analyze(
        trace_of(sends, deliveries),
        scenario or scenario_with(),
        target="sim",
        seed=7,
        duration_s=1.5,
    )


def clean_run(n: int = 11, delay: float = 0.1):
    """n keyless messages intended every 100 ms, each delivered ``delay`` s later."""
    t = np.arange(n) * 0.1
    sends = sends_table([0] * n, range(n), t_intended=t)
    deliveries = deliveries_table([f"0:{i}" for i in range(n)], t + delay)
    return sends, deliveries


def test_end_to_end_and_completion_count_from_intended_time():
    """end_to_end = first delivery − intended, completion = first done − intended, in ms."""
    sends = sends_table([0, 0], [0, 1], t_intended=[0.0, 1.0], t_sent=[0.002, 1.002])
    deliveries = deliveries_table(
        ["0:0", "0:1", "0:0"],
        [0.010, 1.020, 0.500],
        delivery_no=[1, 1, 2],
        t_done=[NAN, 1.025, 0.600],
    )
    latency = run(sends, deliveries).latency
    assert latency["end_to_end"].max == 20.0
    assert latency["end_to_end"].min == 10.0
    assert latency["completion"].max == 600.0  # the first attempt died; the redelivery finished
    assert latency["completion"].min == 25.0
    assert latency["publish_delay"].mean == 2.0


def test_publish_latency_ignores_fire_and_forget_sends():
    """Sends without t_acked (fire-and-forget, failed) are left out of publish latency."""
    sends = sends_table([0, 0, 0], [0, 1, 2], t_sent=[0.0, 0.1, 0.2], t_acked=[0.003, NAN, NAN])
    latency = run(sends, deliveries_table(["0:0", "0:1", "0:2"], [0.1, 0.2, 0.3])).latency
    assert latency["publish"].count == 1
    assert latency["publish"].max == 3.0


def test_warmup_is_left_out_of_percentiles_but_not_checks():
    """Messages intended before warm-up ends are still checked but not in latency stats."""
    sends = sends_table([0, 0, 0], [0, 1, 2], t_intended=[0.0, 0.5, 1.5])
    deliveries = deliveries_table(["0:0", "0:2"], [5.0, 1.51])  # the slow one is in warm-up
    analysis = run(sends, deliveries, scenario_with(warmup="1s"))
    assert analysis.checks.lost == 1  # 0:1, intended during warm-up, still counts as lost
    assert analysis.latency["end_to_end"].count == 1
    assert analysis.latency["end_to_end"].max == 10.0


def test_throughput_follows_its_definition():
    """sent = n / (last send − first intended); delivered = unique / (last first delivery − it)."""
    sends, deliveries = clean_run(n=11, delay=0.1)  # intended 0.0 .. 1.0, delivered 0.1 .. 1.1
    throughput = run(sends, deliveries, scenario_with(rate="10/s")).throughput
    assert throughput.offered == 10.0
    assert throughput.sent == pytest.approx(11 / 1.0)
    assert throughput.delivered == pytest.approx(11 / 1.1)


def test_throughput_of_an_instant_window_is_undefined():
    """One message sent at its intended time has no window to divide by: None, not inf."""
    sends = sends_table([0], [0], t_intended=[0.2])
    throughput = run(sends, empty(DELIVERIES_SCHEMA)).throughput
    assert throughput.sent is None
    assert throughput.delivered == 0.0


def test_requirements_met_give_a_pass():
    """Every stated requirement is listed with bound and measured value, and all ok: pass."""
    sends, deliveries = clean_run(n=11, delay=0.1)
    scenario = scenario_with(
        {
            "throughput": "9/s",
            "latency": {"end_to_end": {"p99": "150ms", "max": "1s"}},
            "max_lost": 0,
            "max_duplicates": 0,
            "ordering": "per-key",
        }
    )
    analysis = run(sends, deliveries, scenario)
    assert [r.to_dict() for r in analysis.requirements] == [
        {"name": "throughput", "bound": 9.0, "measured": pytest.approx(10.0), "ok": True},
        {"name": "end_to_end p99", "bound": 150.0, "measured": 100.0, "ok": True},
        {"name": "end_to_end max", "bound": 1000.0, "measured": 100.0, "ok": True},
        {"name": "max_lost", "bound": 0, "measured": 0, "ok": True},
        {"name": "max_duplicates", "bound": 0, "measured": 0, "ok": True},
        {"name": "ordering per-key", "bound": 0, "measured": 0, "ok": True},
    ]
    assert analysis.verdict == "pass"


def test_any_requirement_missed_gives_a_fail():
    """One missed bound (p99 over its limit) fails the run; the others still say ok."""
    sends, deliveries = clean_run(n=11, delay=0.1)
    scenario = scenario_with({"latency": {"end_to_end": {"p99": "50ms"}}, "max_lost": 0})
    analysis = run(sends, deliveries, scenario)
    assert [(r.name, r.ok) for r in analysis.requirements] == [
        ("end_to_end p99", False),
        ("max_lost", True),
    ]
    assert analysis.verdict == "fail"


def test_loss_duplicates_and_reordering_are_held_against_their_bounds():
    """max_lost, max_duplicates and per-key ordering compare the checks' counts to the bounds."""
    sends = sends_table([0, 0, 0, 0], [0, 1, 2, 3])
    deliveries = deliveries_table(["0:0", "0:2", "0:1", "0:1"], [0.1, 0.2, 0.3, 0.4])
    scenario = scenario_with({"max_lost": 1, "max_duplicates": 0, "ordering": "per-key"})
    analysis = run(sends, deliveries, scenario)
    assert [(r.name, r.measured, r.ok) for r in analysis.requirements] == [
        ("max_lost", 1, True),
        ("max_duplicates", 1, False),
        ("ordering per-key", 1, False),
    ]
    assert analysis.verdict == "fail"


def test_requirements_without_data_are_not_met():
    """Nothing delivered: throughput 0, latency and count requirements fail rather than pass."""
    sends = sends_table([0, 0], [0, 1])
    scenario = scenario_with(
        {
            "throughput": "1/s",
            "latency": {"end_to_end": {"p99": "1s"}},
            "max_lost": None,
            "max_duplicates": 0,
            "ordering": "per-key",
        }
    )
    analysis = run(sends, empty(DELIVERIES_SCHEMA), scenario)
    assert [(r.name, r.measured, r.ok) for r in analysis.requirements] == [
        ("throughput", 0.0, False),
        ("end_to_end p99", None, False),
        ("max_duplicates", None, False),
        ("ordering per-key", None, False),
    ]
    assert analysis.verdict == "fail"


def test_capabilities_a_run_cannot_measure_do_not_decide_the_verdict():
    """replay and max_message_size are listed with measured and ok None; the run still passes."""
    sends, deliveries = clean_run()
    scenario = scenario_with({"replay": True, "max_message_size": "1MB"})
    analysis = run(sends, deliveries, scenario)
    assert [r.to_dict() for r in analysis.requirements] == [
        {"name": "max_lost", "bound": 0, "measured": 0, "ok": True},
        {"name": "replay", "bound": True, "measured": None, "ok": None},
        {"name": "max_message_size", "bound": 1_000_000, "measured": None, "ok": None},
    ]
    assert analysis.verdict == "pass"


def test_metrics_have_exactly_the_contract_keys_and_are_json():
    """to_metrics() is the metrics.json contract, key for key, and strict JSON (no NaN)."""
    sends, deliveries = clean_run()
    metrics = run(sends, deliveries).to_metrics()
    assert list(metrics) == [
        "target",
        "scenario",
        "seed",
        "duration_s",
        "counts",
        "latency_ms",
        "throughput_per_s",
        "requirements",
        "verdict",
    ]
    assert list(metrics["counts"]) == [
        "sent",
        "acked",
        "delivered",
        "unique",
        "lost",
        "duplicates",
        "out_of_order",
        "redelivered",
        "failed",
        "unknown",
    ]
    assert list(metrics["latency_ms"]) == ["end_to_end", "completion", "publish", "publish_delay"]
    for stats in metrics["latency_ms"].values():
        assert list(stats) == ["mean", "p50", "p90", "p99", "p99_9", "max", "count"]
    assert list(metrics["throughput_per_s"]) == ["offered", "sent", "delivered"]
    assert all(list(r) == ["name", "bound", "measured", "ok"] for r in metrics["requirements"])
    assert (metrics["target"], metrics["scenario"], metrics["seed"]) == ("sim", "known-answers", 7)
    assert metrics["verdict"] == "pass"
    json.dumps(metrics, allow_nan=False)


def test_empty_run_gives_nulls_not_nan():
    """A run with no messages still yields strict JSON: null latencies, zero counts, a fail."""
    metrics = run(empty(SENDS_SCHEMA), empty(DELIVERIES_SCHEMA)).to_metrics()
    assert metrics["latency_ms"]["end_to_end"]["p99"] is None
    assert metrics["latency_ms"]["end_to_end"]["count"] == 0
    assert metrics["counts"]["sent"] == 0
    assert metrics["verdict"] == "fail"  # max_lost 0 has nothing to judge: not met
    json.dumps(metrics, allow_nan=False)


def test_unexpected_ids_are_surfaced_apart_from_counts():
    """Stray ids are not a count in metrics.json but are on the analysis and in its warnings."""
    sends, deliveries = clean_run(n=2)
    strays = deliveries_table(["9:1"], [0.5])
    analysis = run(sends, pd.concat([deliveries, strays], ignore_index=True))
    assert analysis.unexpected == 1
    assert "unexpected" not in analysis.to_metrics()["counts"]
    assert any("9:1" in warning for warning in analysis.warnings)


def test_latency_table_has_a_row_per_kind_and_a_column_per_statistic():
    """The notebook table: kinds as rows, mean … count as columns, NaN where empty."""
    sends = sends_table([0, 0], [0, 1], t_acked=[NAN, NAN])
    table = latency_table(run(sends, deliveries_table(["0:0", "0:1"], [0.1, 0.2])))
    assert list(table.index) == ["end_to_end", "completion", "publish", "publish_delay"]
    assert list(table.columns) == ["mean", "p50", "p90", "p99", "p99_9", "max", "count"]
    assert table.loc["end_to_end", "max"] == 190.0
    assert table.loc["publish", "count"] == 0
    assert math.isnan(table.loc["publish", "p99"])


def test_a_trace_read_back_from_parquet_gives_the_same_metrics(tmp_path):
    """Notebooks analyse runs from disk; the Parquet round trip must not change any figure."""
    sends = sends_table([0, 0, 0], [0, 1, 2], key=[1, 1, 1])
    deliveries = deliveries_table(["0:0", "0:2", "0:1", "5:5"], [0.1, 0.2, 0.3, 0.4])
    trace = trace_of(sends, deliveries)
    trace.write(tmp_path)
    before = analyze(trace, scenario_with(), target="sim", seed=1, duration_s=1.0)
    after = analyze(Trace.read(tmp_path), scenario_with(), target="sim", seed=1, duration_s=1.0)
    assert after.to_metrics() == before.to_metrics()
    assert after.checks == before.checks
