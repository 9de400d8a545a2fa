"""Choosing a broker: candidates are run or reused, judged on runs and capabilities, ranked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from brokerlab.app.runner import RunOptions
from brokerlab.app.select import SelectionError, margin, rank, select
from brokerlab.core.scenario import parse_scenario

USE_CASE = {
    "name": "events",
    "producers": {"rate": "400/s", "messages": 600, "keys": 8},
    "broker": {"kind": "redis-streams"},
    "consumers": {"count": 1, "processing": {"dist": "exponential", "mean": "500us"}},
    "requirements": {
        "throughput": "300/s",
        "latency": {"end_to_end": {"p99": "500ms"}},
        "max_lost": 0,
        "replay": True,
    },
}


def test_margin_is_relative_headroom() -> None:
    """Ceilings and floors give positive headroom when met, negative when missed."""
    assert margin("end_to_end p99", 10.0, 5.0) == pytest.approx(0.5)
    assert margin("end_to_end p99", 10.0, 15.0) == pytest.approx(-0.5)
    assert margin("throughput", 100.0, 150.0) == pytest.approx(0.5)
    assert margin("throughput", 100.0, 50.0) == pytest.approx(-0.5)
    assert margin("max_lost", 0, 0) is None
    assert margin("max_lost", 0, 3) == -3.0
    assert margin("replay", True, None) is None


def test_rank_puts_fewer_failures_first_then_more_headroom() -> None:
    """A passing candidate ranks above a failing one; among equals, more headroom wins."""
    rows = [
        ("a", "x", True, 0.1),
        ("a", "y", True, 0.2),
        ("b", "x", True, 0.6),
        ("b", "y", True, 0.7),
        ("c", "x", False, -0.2),
        ("d", "x", True, 0.1),  # same tightest bound as a, more headroom elsewhere
        ("d", "y", True, 0.9),
    ]
    evidence = pd.DataFrame(rows, columns=["candidate", "requirement", "ok", "margin"])
    runs = {c: {"target": "sim", "run": c, "reused": False} for c in ("c", "a", "b", "d")}
    ranking = rank(evidence, runs)
    assert list(ranking["candidate"]) == ["b", "d", "a", "c"]
    assert list(ranking["verdict"]) == ["pass", "pass", "pass", "fail"]
    assert ranking.loc[3, "failed_requirements"] == "x"


def test_select_ranks_with_evidence_and_reuses_runs(tmp_path: Path) -> None:
    """Sim-only selection ranks replay-capable brokers first, cites evidence, then reuses runs."""
    scenario = parse_scenario(USE_CASE)
    options = RunOptions(results_dir=tmp_path)
    candidates = ["nats", "kafka", "redis-streams"]
    first = select(scenario, candidates, options, real=False)
    ranking = first.ranking
    assert set(ranking["candidate"]) == set(candidates)
    assert ranking.iloc[-1]["candidate"] == "nats"  # no replay, no durability
    assert "replay" in ranking.iloc[-1]["failed_requirements"]
    assert ranking.iloc[0]["verdict"] == "pass"
    nats_replay = first.evidence.query("candidate == 'nats' and requirement == 'replay'")
    assert not nats_replay["ok"].iloc[0] and nats_replay["evidence"].iloc[0].startswith("https://")
    measured = first.evidence.query("kind == 'run'")
    assert (measured["evidence"].map(lambda p: Path(p, "metrics.json").is_file())).all()
    for name in ("ranking.csv", "evidence.csv", "selection.json", "run.json"):
        assert (first.path / name).is_file()

    second = select(scenario, candidates, RunOptions(results_dir=tmp_path), real=False)
    assert second.ranking["reused"].all()
    assert list(second.ranking["candidate"]) == list(ranking["candidate"])


def test_unknown_candidate_is_a_user_error(tmp_path: Path) -> None:
    """A candidate that is no broker kind is refused before anything runs."""
    with pytest.raises(SelectionError, match="kafkaa"):
        select(parse_scenario(USE_CASE), ["kafkaa"], RunOptions(results_dir=tmp_path))
    assert not any(tmp_path.iterdir())


def test_select_command_prints_ranking(tmp_path: Path) -> None:
    """`brokerlab select --sim-only` prints the ranking and the selection folder."""
    import yaml

    path = tmp_path / "events.yaml"
    path.write_text(yaml.safe_dump(USE_CASE), encoding="utf-8")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "brokerlab.cli", "select", str(path), "--sim-only", "-q"),
            *("--candidates", "kafka,sqs", "--results-dir", str(tmp_path / "results")),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "ranking" in done.stdout and "selection:" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "brokerlab.cli", "select", str(path), "--candidates", "mq"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "mq" in bad.stderr
