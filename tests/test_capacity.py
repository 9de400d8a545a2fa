"""Capacity answers checked against queueing theory on the (ideal) simulator.

- M/M/1 (μ = 1000/s): completion p99 = ln(100) / (μ − λ), so "p99 ≤ X" holds up to
  λ* = μ − ln(100)/X.
- M/M/c: the Erlang-C mean completion decides the fewest consumers.
- Partitions as independent M/M/1 queues (a key's partition has one consumer): each partition
  gets λ/P, so "mean ≤ X" needs λ/P ≤ μ − 1/X.
- Catch-up after all consumers are down for T at λ (fluid model): the backlog λT drains at μ − λ;
  with a max length L the backlog is cut to L, the rest is dropped.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from brokerlab.app.capacity import (
    CAPACITY_FILE,
    Evidence,
    _answer,
    _find_rate,
    _seed_evidence,
    find_capacity,
)
from brokerlab.app.sweep import Outcome, Point, Task
from brokerlab.core.scenario import parse_scenario

BIN = Path(sys.executable).parent
MU = 1000.0  # 1 ms mean exponential processing


def scenario(**changes: object) -> object:
    data: dict = {
        "name": "theory",
        "seed": 1,
        "producers": {"rate": "500/s", "messages": 30000},
        "broker": {"kind": "redis-streams", "profile": "none"},  # ideal: queueing theory
        "consumers": {"count": 1, "processing": {"dist": "exponential", "mean": "1ms"}},
    }
    for key, value in changes.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_scenario(data)


def erlang_c_mean(c: int, lam: float, mu: float) -> float:
    """Mean time in an M/M/c system (seconds)."""
    a = lam / mu
    tail = a**c / math.factorial(c) / (1 - a / c)
    waiting = tail / (sum(a**k / math.factorial(k) for k in range(c)) + tail)
    return waiting / (c * mu - lam) + 1 / mu


def test_mm1_highest_rate_matches_the_p99_formula(tmp_path: Path) -> None:
    bound = 0.020
    edge = MU - math.log(100) / bound  # 769.7/s
    result = find_capacity(
        scenario(requirements={"latency": {"completion": {"p99": "20ms"}}}),
        "rate",
        out=tmp_path,
        seeds=3,
        workers=1,
    )
    assert result.value == pytest.approx(edge, rel=0.04)
    assert result.extra["lower"] <= edge * 1.02 and result.extra["upper"] > result.value
    saved = json.loads((tmp_path / CAPACITY_FILE).read_text())
    assert saved["find"] == "rate" and saved["target"] == "sim"
    assert saved["value"] == result.value
    # the answer passed on every seed; the lowest failing rate failed on at least one
    answer = [p for p in saved["points"] if p["value"] == saved["value"]]
    assert answer and all(s["ok"] for s in answer[-1]["seeds"]) and len(answer[-1]["seeds"]) == 3
    above = [p for p in saved["points"] if p["value"] == saved["upper"]]
    assert not above[-1]["ok"]
    for point in saved["points"]:
        for seed in point["seeds"]:
            assert (tmp_path / seed["run"] / "metrics.json").is_file()
    assert "between" in saved["answer"] and "/s" in saved["answer"]


def test_mmc_fewest_consumers_is_decided_by_erlang_c(tmp_path: Path) -> None:
    lam, bound = 3200.0, 0.0014
    theory = next(c for c in range(4, 20) if erlang_c_mean(c, lam, MU) <= bound)
    assert theory == 5  # 1.160 ms with 5; 1.746 ms with 4
    result = find_capacity(
        scenario(
            producers={"rate": "3200/s", "messages": 20000},
            requirements={"latency": {"completion": {"mean": "1.4ms"}}},
        ),
        "consumers",
        out=tmp_path,
        seeds=2,
        workers=1,
    )
    assert result.value == theory
    saved = json.loads((tmp_path / CAPACITY_FILE).read_text())
    assert saved["value"] == 5 and isinstance(saved["value"], int)
    by_value = {p["value"]: p["ok"] for p in saved["points"]}
    assert by_value[4] is False and by_value[5] is True
    assert "fewest consumers" in saved["answer"]


def test_fewest_partitions_treats_each_as_its_own_queue(tmp_path: Path) -> None:
    """Kafka-like: 8 consumers, keys hashed to partitions; mean ≤ 2.5 ms needs λ/P ≤ 600/s."""
    lam, bound = 3200.0, 0.0025
    theory = math.ceil(lam / (MU - 1 / bound))
    assert theory == 6
    result = find_capacity(
        scenario(
            producers={"rate": "3200/s", "messages": 20000, "keys": 1000},
            broker={"kind": "kafka", "partitions": 2},
            consumers={"count": 8},
            requirements={"latency": {"completion": {"mean": "2.5ms"}}},
        ),
        "partitions",
        out=tmp_path,
        seeds=2,
        workers=1,
    )
    assert result.value == theory


def md1_mean(lam: float, service: float) -> float:
    """Mean time in an M/D/1 system (seconds): D + ρD / (2(1 − ρ))."""
    rho = lam * service
    return math.inf if rho >= 1 else service + rho * service / (2 * (1 - rho))


def test_fewest_partitions_counts_one_consumer_per_partition(tmp_path: Path) -> None:
    """Six consumers of 5 ms constant at 400/s, keys spread over partitions: each partition is
    an M/D/1 queue with one consumer, so one partition (whatever the consumer count) serves at
    most 200/s; the fewest partitions is the smallest k ≤ 6 with mean(400/k) ≤ 7.1 ms."""
    lam, service, bound = 400.0, 0.005, 0.0071
    theory = next(
        k for k in range(1, 7) if lam / k < 1 / service and md1_mean(lam / k, service) <= bound
    )
    assert theory == 5  # 6.67 ms with 5 partitions; 7.5 ms with 4; 2 or 1 cannot keep up
    result = find_capacity(
        scenario(
            producers={"rate": "400/s", "messages": 40000, "keys": 1000},
            broker={"kind": "kafka", "partitions": 1},
            consumers={"count": 6, "processing": "5ms"},
            requirements={"latency": {"completion": {"mean": "7.1ms"}}},
        ),
        "partitions",
        out=tmp_path,
        seeds=2,
        workers=1,
    )
    assert result.value == theory
    by_value = {
        p["value"]: p["ok"] for p in json.loads((tmp_path / CAPACITY_FILE).read_text())["points"]
    }
    assert by_value[1] is False and by_value[4] is False and by_value[5] is True


def test_catch_up_after_an_outage_matches_the_fluid_model(tmp_path: Path) -> None:
    """All consumers down 10 s at 500/s: 5,000 messages drain at 1000 − 500 = 500/s: 10 s."""
    lam, outage = 500.0, 10.0
    result = find_capacity(scenario(), "catch-up", outage=outage, out=tmp_path, seeds=2, workers=1)
    assert result.value == pytest.approx(lam * outage / (MU - lam), rel=0.15)
    saved = json.loads((tmp_path / CAPACITY_FILE).read_text())
    assert saved["find"] == "catch-up" and saved["dropped"] == 0
    assert all(p["peak_lag"] == pytest.approx(lam * outage, rel=0.1) for p in saved["per_seed"])
    assert "nothing was dropped" in saved["answer"]
    assert (tmp_path / "figures" / "catch-up-s1.png").is_file()


def test_catch_up_says_what_max_length_dropped(tmp_path: Path) -> None:
    """With max length 1,000 the backlog is cut to 1,000 (drains in 2 s); ~4,000 are dropped."""
    result = find_capacity(
        scenario(broker={"kind": "redis-streams", "max_length": 1000}),
        "catch-up",
        outage=10.0,
        out=tmp_path,
        seeds=1,
        workers=1,
    )
    assert result.value == pytest.approx(1000 / 500, rel=0.25)
    assert result.extra["dropped"] == pytest.approx(4000, rel=0.05)
    assert "dropped" in result.answer and "max length" in result.answer


def _outcome(verdict: str, delivered: float = 100.0) -> Outcome:
    sc = scenario()
    metrics = {
        "verdict": verdict,
        "requirements": [{"name": "max_lost", "bound": 0, "measured": 0, "ok": True}],
        "throughput_per_s": {"offered": 100.0, "sent": 100.0, "delivered": delivered},
        "latency_ms": {
            k: {"mean": 1.0, "p50": 1.0, "p99": 2.0} for k in ("end_to_end", "completion")
        },
    }
    return Outcome(Task(Point(0, sc, {}), "sim", 1), metrics=metrics)


def test_inconclusive_and_falling_behind_do_not_meet_the_requirements(tmp_path: Path) -> None:
    ok, entry = _seed_evidence(_outcome("pass"), 0.95, tmp_path)
    assert ok and entry["why"] == []
    ok, entry = _seed_evidence(_outcome("inconclusive"), 0.95, tmp_path)
    assert not ok and "inconclusive" in entry["reasons"]
    assert any("counted as not meeting" in w for w in entry["why"])
    ok, entry = _seed_evidence(_outcome("pass", delivered=90.0), 0.95, tmp_path)
    assert not ok and entry["reasons"] == ["does not keep up"]
    ok, _ = _seed_evidence(_outcome("pass", delivered=90.0), 0.0, tmp_path)
    assert ok  # --keep-up 0: requirements only


class _World:
    """A stand-in for the search's runs: a broker that meets every requirement up to 30,000/s,
    seen through a lab whose own client is the limit from ``lab_limit`` on (its runs there are
    inconclusive) or, with ``measured=True``, whose runs there fail a latency bound outright."""

    def __init__(self, lab_limit: float, measured: bool = False) -> None:
        self.scenario = scenario(producers={"rate": "1000/s"})
        self.seeds = [1]
        self.cache: dict = {}
        self.points: list = []
        self.lab_limit, self.measured = lab_limit, measured

    def evaluate(self, value: float, step: str, seeds: object = None) -> bool:
        if value <= min(self.lab_limit, 30_000):
            entry = {"seed": 1, "ok": True, "reasons": [], "why": []}
        elif self.measured:
            why = ["end_to_end p99: measured 180 vs bound 100"]
            entry = {"seed": 1, "ok": False, "reasons": ["end_to_end p99 missed"], "why": why}
        else:
            why = ["verdict inconclusive (end_to_end p99: not judged: the lab's client was the "
                   "limit): counted as not meeting the requirements"]  # fmt: skip
            reasons = ["inconclusive", "does not keep up"]
            entry = {"seed": 1, "ok": False, "reasons": reasons, "why": why}
        self.cache[(value, 1)] = (entry["ok"], entry)
        self.points.append(Evidence(value, entry["ok"], [entry], step))
        return entry["ok"]


def test_an_edge_the_lab_could_not_tell_is_answered_as_a_lower_bound() -> None:
    """Known answer: runs beyond 12,000/s are inconclusive (the lab's client the limit), not
    failed; the search still answers the highest rate shown to meet everything (12,000/s,
    within the 5% bisection), but as a lower bound: "at least", the edge unknown, and why."""
    world = _World(lab_limit=12_000)
    value, detail, extra = _find_rate(world, 0.05, 12)  # type: ignore[arg-type]
    assert 12_000 * 0.95 <= value <= 12_000
    assert extra["edge"] == "unknown" and extra["upper"] > 12_000
    assert detail.startswith("a lower bound") and "lab's client was the limit" in detail
    lower = extra["edge"] == "unknown"
    answer = _answer(world.scenario, "rate", "nats", value, "/s", detail, None, lower)  # type: ignore[arg-type]
    assert f"at least {value:,.6g}/s" in answer
    # The same edge measured as a latency miss is the edge: no lower bound.
    measured = _World(lab_limit=12_000, measured=True)
    value, detail, extra = _find_rate(measured, 0.05, 12)  # type: ignore[arg-type]
    assert 12_000 * 0.95 <= value <= 12_000
    assert "edge" not in extra and not detail.startswith("a lower bound")
    assert "at least" not in _answer(measured.scenario, "rate", "nats", value, "/s", detail, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--find", "catch-up"], "--outage"),
        (["--find", "rate", "--outage", "5s"], "--outage"),
        (["--find", "catch-up", "--outage", "soon"], "--outage"),
        (["--find", "partitions"], "partitions"),
        (["--find", "rate", "--target", "sqs"], "--target"),
    ],
)
def test_bad_questions_exit_2_and_write_nothing(tmp_path: Path, args: list, says: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(scenario().model_dump(mode="json")))
    out = tmp_path / "out"
    done = subprocess.run(
        [str(BIN / "brokerlab"), "capacity", str(path), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
    assert not out.exists()


def test_cli_prints_the_answer_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    sc = scenario(
        producers={"rate": "3200/s", "messages": 5000},
        consumers={"count": 4},
        requirements={"latency": {"completion": {"mean": "1.4ms"}}},
    )
    path.write_text(json.dumps(sc.model_dump(mode="json")))
    done = subprocess.run(
        [str(BIN / "brokerlab"), "capacity", str(path), "--find", "consumers", "--seeds", "1",
         "--workers", "1", "--out", str(tmp_path / "out"), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.strip().splitlines()
    assert first.startswith("theory on sim: fewest consumers") and ": 5 (" in first
    assert second.endswith(CAPACITY_FILE)


def test_a_search_on_a_local_cluster_agrees_with_the_serial_one(tmp_path: Path) -> None:
    """The seeds of each step run in parallel on Dask; the answer and evidence are the same."""
    sc = scenario(
        producers={"rate": "3200/s", "messages": 5000},
        requirements={"latency": {"completion": {"mean": "1.4ms"}}},
    )
    serial = find_capacity(sc, "consumers", out=tmp_path / "serial", seeds=2, workers=1)
    local = find_capacity(sc, "consumers", out=tmp_path / "local", seeds=2, workers=2)
    assert local.extra["placement"] == "local"
    assert local.value == serial.value == 5
    assert [p.to_dict() for p in local.points] == [p.to_dict() for p in serial.points]


def _run_folder(folder: Path, late: int, late_by: float) -> dict:
    """A 1.5 s run at 8,000/s written as a run folder's trace: each message delivered 1 ms
    after its send, except the last ``late`` ones, ``late_by`` s after the run; its metrics as
    the analysis counts the delivered rate (to the last delivery), passing otherwise."""
    import numpy as np
    import pandas as pd

    count, rate = 12_000, 8_000.0
    t_sent = np.arange(count) / rate
    t_delivered = t_sent + 0.001
    if late:
        t_delivered[-late:] = t_sent[-1] + late_by
    folder.mkdir(parents=True)
    ids = [f"p0-{i}" for i in range(count)]
    pd.DataFrame({"msg_id": ids, "t_sent": t_sent}).to_parquet(folder / "sends.parquet")
    pd.DataFrame({"msg_id": ids, "t_delivered": t_delivered}).to_parquet(
        folder / "deliveries.parquet"
    )
    latency = {"mean": 1.0, "p50": 1.0, "p99": 20.0}
    return {
        "verdict": "pass",
        "requirements": [],
        "throughput_per_s": {"offered": rate, "delivered": count / float(t_delivered.max())},
        "latency_ms": {"end_to_end": latency, "completion": latency},
    }


def test_a_few_stragglers_do_not_make_a_step_that_kept_up_fall_behind(tmp_path: Path) -> None:
    """capacity --find rate's keep-up test: ten late messages of 12,000 (the delivered rate
    reads 89% of the offer) kept up, and the step says why; the last 4% a second late did not."""
    from types import SimpleNamespace

    from brokerlab.app.capacity import _seed_evidence

    def judge(name: str, late: int, late_by: float) -> tuple[bool, dict]:
        folder = tmp_path / name
        metrics = _run_folder(folder, late, late_by)
        outcome = Outcome(SimpleNamespace(seed=1), metrics, folder)  # type: ignore[arg-type]
        return _seed_evidence(outcome, 0.95, tmp_path)

    ok, entry = judge("stragglers", 10, 0.19)
    assert ok and entry["delivered_ratio"] < 0.9
    assert "99% of its messages: kept up" in entry["note"]
    ok, entry = judge("behind", 480, 1.0)
    assert not ok and "does not keep up" in entry["reasons"]
