"""Choosing a broker: candidates are run or reused, judged on runs and capabilities, ranked."""

from __future__ import annotations

import subprocess
import sys
from itertools import permutations
from pathlib import Path

import pandas as pd
import pytest

from brokerlab.app.runner import RunOptions
from brokerlab.app.select import (
    SelectionError,
    evidence_rows,
    evidence_table,
    has_profile,
    margin,
    rank,
    select,
)
from brokerlab.core.scenario import parse_scenario

ROOT = Path(__file__).resolve().parent.parent

USE_CASE = {
    "name": "events",
    "producers": {"rate": "400/s", "messages": 600, "keys": 8},
    # an ideal simulated broker: ranked on capabilities, speed "not modelled"
    "broker": {"kind": "redis-streams", "profile": "none"},
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


def _evidence(rows: list[tuple[str, str, str, float | None]]) -> pd.DataFrame:
    """Evidence rows (candidate, requirement, status, margin) as select writes them."""
    return evidence_table(
        [
            {"candidate": c, "requirement": r, "status": status, "margin": m}
            for c, r, status, m in rows
        ]
    )


def _runs(*candidates: str) -> dict[str, dict]:
    return {c: {"target": "sim", "run": c, "reused": False} for c in candidates}


def test_rank_puts_fewer_failures_first_then_more_headroom() -> None:
    """A passing candidate ranks above a failing one; among equals, more headroom wins."""
    rows = [
        ("a", "x", "ok", 0.1),
        ("a", "y", "ok", 0.2),
        ("b", "x", "ok", 0.6),
        ("b", "y", "ok", 0.7),
        ("c", "x", "fail", -0.2),
        ("d", "x", "ok", 0.1),  # same tightest bound as a, more headroom elsewhere
        ("d", "y", "ok", 0.9),
    ]
    ranking = rank(_evidence(rows), _runs("c", "a", "b", "d"))
    assert list(ranking["candidate"]) == ["b", "d", "a", "c"]
    assert list(ranking["rank"]) == [1, 2, 3, 4]
    assert list(ranking["verdict"]) == ["pass", "pass", "pass", "fail"]
    assert ranking.loc[3, "failed_requirements"] == "x"
    assert not ranking["tie"].any()


def test_ties_share_a_rank_and_are_listed_by_name() -> None:
    """Identical evidence is a tie: same rank, tie True, listed by name whatever the input
    order. Before: ranks 1 and 2 in the order the candidates were given."""
    rows = [
        ("zeta", "x", "ok", 0.05),
        ("alpha", "x", "ok", 0.05),
        ("mid", "x", "ok", 0.0504),  # equal at the 0.1 % the tables print
        ("last", "x", "fail", -1.0),
    ]
    ranking = rank(_evidence(rows), _runs("zeta", "last", "mid", "alpha"))
    assert list(zip(ranking["rank"], ranking["candidate"], ranking["tie"], strict=True)) == [
        (1, "alpha", True),
        (1, "mid", True),
        (1, "zeta", True),
        (4, "last", False),
    ]


def test_ranking_never_depends_on_the_listing_order() -> None:
    """Every permutation of the candidates gives the same table, row for row."""
    rows = [
        ("a", "x", "ok", 0.2),
        ("b", "x", "ok", 0.2),
        ("c", "x", "unknown", None),
        ("c", "y", "ok", 0.4),
        ("d", "x", "fail", -0.1),
        ("e", "x", "ok", 0.3),
    ]
    evidence = _evidence(rows)
    tables = [rank(evidence, _runs(*order)) for order in permutations("abcde")]
    for table in tables[1:]:
        pd.testing.assert_frame_equal(table, tables[0])
    assert list(tables[0]["candidate"]) == ["e", "a", "b", "c", "d"]
    assert list(tables[0]["rank"]) == [1, 2, 2, 4, 5]


def test_unknown_requirements_are_not_failures() -> None:
    """An unknown requirement (unverified fact, or a run that could not tell) is no failure: the
    candidate is inconclusive, ranked after those fully judged but before any that fail."""
    rows = [
        ("sure", "x", "ok", 0.1),
        ("unsure", "x", "ok", 0.5),
        ("unsure", "replay", "unknown", None),
        ("bad", "x", "fail", -0.1),
    ]
    ranking = rank(_evidence(rows), _runs("bad", "unsure", "sure"))
    assert list(ranking["candidate"]) == ["sure", "unsure", "bad"]
    unsure = ranking.iloc[1]
    assert (unsure["verdict"], unsure["failed"], unsure["unknown"]) == ("inconclusive", 0, 1)
    assert unsure["unknown_requirements"] == "replay"


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
    # simulated without a performance profile: throughput and latency are not judged
    assert ranking.iloc[0]["verdict"] == "inconclusive"
    assert ranking.iloc[0]["not_modelled"] == "throughput, end_to_end p99"
    nats_replay = first.evidence.query("candidate == 'nats' and requirement == 'replay'")
    assert nats_replay["ok"].iloc[0] is False
    assert nats_replay["evidence"].iloc[0].startswith("https://")
    measured = first.evidence[first.evidence["kind"].str.startswith("run")]
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
    assert "not modelled" in done.stdout and "(every candidate)" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "brokerlab.cli", "select", str(path), "--candidates", "mq"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "mq" in bad.stderr


def _metrics(*requirements: tuple[str, object, object, bool | None]) -> dict:
    """A metrics.json ``requirements`` list as a run writes it: (name, bound, measured, ok)."""
    return {
        "requirements": [
            {"name": n, "bound": b, "measured": m, "ok": ok} for n, b, m, ok in requirements
        ]
    }


def test_one_requirement_is_judged_once() -> None:
    """NATS core losing 3 messages against max_lost: 0 is one failed requirement, not two: the
    run's count and the capability table (no durable option) share one row.
    Before: two rows (run and capability), failed 2."""
    scenario = parse_scenario({**USE_CASE, "requirements": {"max_lost": 0}})
    rows = evidence_rows("nats", _metrics(("max_lost", 0, 3, False)), Path("run"), scenario)
    assert [(r["requirement"], r["status"], r["kind"]) for r in rows] == [
        ("max_lost", "fail", "run + capability")
    ]
    assert rows[0]["measured"] == 3 and rows[0]["capability"] == "durable options: none"
    ranking = rank(evidence_table(rows), {"nats": {"target": "sim", "run": "r", "reused": 0}})
    assert ranking.loc[0, "failed"] == 1


def test_unverified_capability_facts_are_unknown() -> None:
    """SQS's replay fact is unverified: the requirement reads unknown (ok None), with the table's
    finding in the note, and is no failure. Kafka's unverified delivery fact decides nothing
    next to a run that measured no duplicates: ok, with the note."""
    needs = {"replay": True, "max_duplicates": 0, "max_lost": None}
    scenario = parse_scenario({**USE_CASE, "requirements": needs})
    capability_only = _metrics(("replay", True, None, None))
    (replay,) = [
        r
        for r in evidence_rows("sqs", capability_only, Path("run"), scenario)
        if r["requirement"] == "replay"
    ]
    assert (replay["status"], replay["ok"], replay["kind"]) == (
        "unknown",
        None,
        "capability (unverified)",
    )
    assert "unverified (would fail)" in replay["note"]
    runs = {"sqs": {"target": "sim", "run": "r", "reused": False}}
    ranking = rank(evidence_table([replay]), runs)
    assert (ranking.loc[0, "failed"], ranking.loc[0, "verdict"]) == (0, "inconclusive")
    measured = _metrics(("max_duplicates", 0, 0, True), ("replay", True, None, None))
    rows = {r["requirement"]: r for r in evidence_rows("kafka", measured, Path("r"), scenario)}
    assert rows["max_duplicates"]["status"] == "ok"
    assert rows["max_duplicates"]["kind"] == "run + capability (unverified)"
    assert "unverified" in rows["max_duplicates"]["note"]


SPEED = {"throughput": "300/s", "latency": {"end_to_end": {"p99": "500ms"}}, "max_lost": 0}
SPEED_METRICS = _metrics(
    ("throughput", 300.0, 330.0, True),
    ("end_to_end p99", 500.0, 400.0, True),
    ("max_lost", 0, 0, True),
)


def test_simulated_speed_is_not_judged_without_a_profile(monkeypatch) -> None:
    """A simulated candidate whose preset has no performance profile: throughput and latency
    read 'not modelled' and give no margin; the same figures from a real run are judged; a
    preset that carries a profile is judged too."""
    scenario = parse_scenario({**USE_CASE, "requirements": SPEED})
    assert has_profile("kafka") and not has_profile("kafka", "none")  # shipped, turned off
    simulated = evidence_rows("redis-streams", SPEED_METRICS, Path("r"), scenario, "sim")
    assert [(r["requirement"], r["status"], r["margin"]) for r in simulated] == [
        ("throughput", "not modelled", None),
        ("end_to_end p99", "not modelled", None),
        ("max_lost", "ok", None),
    ]
    real = evidence_rows("redis-streams", SPEED_METRICS, Path("r"), scenario, "redis-streams")
    assert [r["status"] for r in real] == ["ok", "ok", "ok"]
    assert real[0]["margin"] == pytest.approx(0.1) and real[1]["margin"] == pytest.approx(0.2)

    import brokerlab.app.select as selection

    profiled = {"redis-streams": {"model": "log", "profile": "default"}}
    monkeypatch.setattr(selection, "presets", lambda: profiled)
    assert has_profile("redis-streams")
    profiled_run = scenario.with_(**{"broker.profile": "auto"})
    judged = evidence_rows("redis-streams", SPEED_METRICS, Path("r"), profiled_run, "sim")
    assert [r["status"] for r in judged] == ["ok", "ok", "ok"]


def test_payments_ranking_is_the_same_whatever_the_candidate_order(tmp_path: Path) -> None:
    """`select payments.yaml --sim-only`: kafka and nats-jetstream simulate identically, so they
    tie, in every listing order, and the notes say speed is not modelled for any candidate.
    Before: kafka ranked 1 when listed first, nats-jetstream ranked 1 when listed first."""
    from brokerlab.core.scenario import load_scenario

    scenario = load_scenario(ROOT / "scenarios" / "usecases" / "payments.yaml").with_(
        **{"broker.profile": "none"}  # ideal brokers: kafka and nats-jetstream tie
    )
    seen = set()
    for order in permutations(["kafka", "nats-jetstream", "redis-streams"]):
        chosen = select(scenario, list(order), RunOptions(results_dir=tmp_path), real=False)
        ranking = chosen.ranking
        seen.add(tuple(zip(ranking["rank"], ranking["candidate"], ranking["tie"], strict=True)))
        assert any("(every candidate)" in note and "not modelled" in note for note in chosen.notes)
        assert list(chosen.evidence["candidate"].drop_duplicates()) == list(ranking["candidate"])
    (only,) = seen
    tied = {candidate for rank_, candidate, tie in only if rank_ == 1}
    assert {"kafka", "nats-jetstream"} <= tied
    assert all(tie for rank_, _, tie in only if rank_ == 1)


def test_simulated_speed_verdicts_name_the_profile_they_rest_on(tmp_path: Path) -> None:
    """A simulated candidate judged on speed says which profile it played and where that profile
    comes from (shipped default with its sources here), in the ranking and beside each speed
    verdict; the ideal broker (profile none) is not judged on speed and names no profile."""
    profiled = parse_scenario({**USE_CASE, "broker": {"kind": "redis-streams"}})
    chosen = select(profiled, ["kafka", "sqs"], RunOptions(results_dir=tmp_path), real=False)
    for candidate in ("kafka", "sqs"):
        (profile,) = chosen.ranking.loc[chosen.ranking["candidate"] == candidate, "profile"]
        assert profile.startswith(f"{candidate}: shipped default ("), profile
        speed = chosen.evidence.query(
            "candidate == @candidate and requirement in ['throughput', 'end_to_end p99']"
        )
        assert len(speed) == 2 and set(speed["status"]) <= {"ok", "fail"}
        assert all(f"predicted with the profile {profile}" in note for note in speed["note"])
        loss = chosen.evidence.query("candidate == @candidate and requirement == 'max_lost'")
        assert "predicted with" not in str(loss["note"].iloc[0])
    ideal = select(
        parse_scenario(USE_CASE), ["kafka"], RunOptions(results_dir=tmp_path / "ideal"), real=False
    )
    assert ideal.ranking["profile"].iloc[0] == "none (ideal broker, no costs)"
    assert ideal.ranking["not_modelled"].iloc[0] == "throughput, end_to_end p99"
