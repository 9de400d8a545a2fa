"""Scenario validation: every mistake a user can make is named with file, field and reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from brokerlab.core.scenario import ScenarioError, load_scenario, parse_scenario, scenario_to_yaml

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"

VALID = """
name: ok
producers: {rate: 100/s, messages: 10}
broker: {kind: redis-streams}
"""


def _with(**changes: object) -> str:
    """A valid scenario with some top-level parts replaced (YAML text)."""
    data = yaml.safe_load(VALID)
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        if value is _DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return yaml.safe_dump(data)


_DELETE = object()

# (id, YAML text, field path expected in the message, words expected in the reason)
BAD_INPUTS = [
    ("empty file", "", "", "empty"),
    ("not yaml", "name: [unclosed\n  - x: {", "", "not valid YAML: line"),
    ("not a mapping", "- just\n- a list\n", "", "expected a mapping"),
    ("unknown top field", _with(colour="blue"), "colour", "unknown field"),
    ("unknown nested field", _with(producers__ratee="5/s"), "producers.ratee", "unknown field"),
    ("missing producers", _with(producers=_DELETE), "producers", "required field is missing"),
    ("missing broker kind", _with(broker={}), "broker.kind", "required field is missing"),
    ("unknown broker kind", _with(broker__kind="kafkaa"), "broker.kind", "unknown broker kind"),
    ("negative rate", _with(producers__rate="-5/s"), "producers.rate", "cannot be negative"),
    ("zero rate", _with(producers__rate="0/s"), "producers.rate", "greater than zero"),
    ("bad rate unit", _with(producers__rate="5/fortnight"), "producers.rate", "not a rate"),
    ("rate as text", _with(producers__rate="fast"), "producers.rate", "not a rate"),
    (
        "bad duration unit",
        _with(broker__ack_timeout="5 parsecs"),
        "broker.ack_timeout",
        "not a duration",
    ),
    ("negative duration", _with(producers__warmup="-1s"), "producers.warmup", "cannot be negative"),
    ("bad size unit", _with(producers__size="2 bananas"), "producers.size", "not a size"),
    ("wrong type count", _with(consumers={"count": "many"}), "consumers.count", "integer"),
    (
        "zero consumers",
        _with(consumers={"count": 0}),
        "consumers.count",
        "greater than or equal to 1",
    ),
    ("boolean rate", _with(producers__rate=True), "producers.rate", "boolean"),
    (
        "both messages and duration",
        _with(producers__duration="10s"),
        "producers",
        "not both",
    ),
    (
        "neither messages nor duration",
        _with(producers__messages=_DELETE),
        "producers",
        "'messages' or 'duration'",
    ),
    ("unknown arrival", _with(producers__arrival="bursty"), "producers.arrival", "unknown arrival"),
    (
        "on-off without off",
        _with(producers__arrival={"process": "on-off", "on": "1s"}),
        "producers.arrival.off",
        "required field is missing",
    ),
    (
        "unknown distribution",
        _with(consumers={"processing": {"dist": "gamma", "mean": "1ms"}}),
        "consumers.processing",
        "unknown dist",
    ),
    (
        "distribution without dist",
        _with(consumers={"processing": {"mean": "1ms"}}),
        "consumers.processing",
        "needs 'dist'",
    ),
    (
        "lognormal tail below median",
        _with(consumers={"processing": {"dist": "lognormal", "median": "5ms", "p99": "1ms"}}),
        "consumers.processing",
        "p99 must be at least the median",
    ),
    ("bad ack mode", _with(consumers={"ack": "sometimes"}), "consumers.ack", "'after'"),
    (
        "bad persistence",
        _with(broker__persistence="forever"),
        "broker.persistence.mode",
        "'none'",
    ),
    (
        "unknown fault action",
        _with(faults=[{"at": "1s", "action": "meteor"}]),
        "faults[0].action",
        "unknown fault action",
    ),
    (
        "fault on a missing consumer",
        _with(faults=[{"at": "1s", "action": "consumer-crash", "target": "consumer-3"}]),
        "",
        "does not exist",
    ),
    (
        "unknown latency percentile",
        _with(requirements={"latency": {"end_to_end": {"p42": "5ms"}}}),
        "requirements.latency",
        "unknown percentile",
    ),
    (
        "unknown latency kind",
        _with(requirements={"latency": {"roundtrip": {"p99": "5ms"}}}),
        "requirements.latency",
        "unknown latency",
    ),
    (
        "negative max_lost",
        _with(requirements={"max_lost": -1}),
        "requirements.max_lost",
        "greater than or equal to 0",
    ),
]


@pytest.mark.parametrize(
    ("text", "field", "reason"), [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_names_file_field_and_reason(
    tmp_path: Path, text: str, field: str, reason: str
) -> None:
    """Each kind of mistake gives a ScenarioError naming the file, the field path and why."""
    path = tmp_path / "scenario.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    message = caught.value.render()
    assert str(path) in message
    lines = [line for line in message.splitlines() if reason.lower() in line.lower()]
    assert lines, f"no line mentions {reason!r} in:\n{message}"
    if field:
        assert any(f": {field}:" in line or f": {field}." in line for line in lines), message


def test_at_least_twenty_distinct_mistakes_are_covered() -> None:
    """The suite keeps covering at least 20 different bad inputs."""
    assert len({case[0] for case in BAD_INPUTS}) >= 20


def test_every_problem_is_reported_at_once() -> None:
    """Several mistakes in one file are all listed, not just the first."""
    data = yaml.safe_load(VALID)
    data["producers"]["rate"] = "-1/s"
    data["broker"]["kind"] = "nope"
    data["extra"] = 1
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(data, "x.yaml")
    fields = [field for field, _ in caught.value.problems]
    assert {"producers.rate", "broker.kind", "extra"} <= set(fields)


def test_missing_file_and_folder_are_user_errors(tmp_path: Path) -> None:
    """A path that is missing or a folder is reported, not raised as a Python error."""
    with pytest.raises(ScenarioError, match="no such file"):
        load_scenario(tmp_path / "nope.yaml")
    with pytest.raises(ScenarioError, match="folder"):
        load_scenario(tmp_path)


@pytest.mark.parametrize("path", sorted(SCENARIOS.rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_scenarios_are_valid_and_round_trip(path: Path) -> None:
    """Every scenario in scenarios/ validates, and the stored 'as run' copy reads back equal."""
    scenario = load_scenario(path)
    assert parse_scenario(yaml.safe_load(scenario_to_yaml(scenario))) == scenario


def test_units_are_converted_to_base_units() -> None:
    """5ms is 0.005 s, 2kB is 2000 bytes, 3/ms is 3000 per second."""
    data = yaml.safe_load(VALID)
    data["producers"].update(rate="3/ms", size="2kB", warmup="5ms")
    scenario = parse_scenario(data)
    assert scenario.producers.rate == 3000
    assert scenario.producers.size.mean == 2000
    assert scenario.producers.warmup == pytest.approx(0.005)


def test_validate_command_exit_codes(tmp_path: Path) -> None:
    """`brokerlab validate` exits 0 for good files and 2 with every problem for bad ones."""
    good = tmp_path / "good.yaml"
    good.write_text(VALID, encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(_with(producers__rate="-5/s", broker__kind="x"), encoding="utf-8")
    command = [sys.executable, "-m", "brokerlab.cli", "validate"]
    ok = subprocess.run([*command, str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    failed = subprocess.run([*command, str(good), str(bad)], capture_output=True, text=True)
    assert failed.returncode == 2
    assert "Traceback" not in failed.stderr
    assert f"{bad}: producers.rate:" in failed.stderr
    assert f"{bad}: broker.kind:" in failed.stderr


def test_bare_on_off_keys_mean_the_burst_fields(tmp_path: Path) -> None:
    """YAML reads `on:`/`off:` as booleans; the on-off arrival still gets its durations."""
    path = tmp_path / "bursts.yaml"
    path.write_text(
        VALID.replace(
            "{rate: 100/s,", "{arrival: {process: on-off, on: 2s, off: 3s}, rate: 100/s,"
        ),
        encoding="utf-8",
    )
    arrival = load_scenario(path).producers.arrival
    assert (arrival.on, arrival.off) == (2.0, 3.0)
