"""Scenario validation: every mistake a user can make is named with file, field and reason."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from brokerlab.core.scenario import (
    ScenarioError,
    load_scenario,
    load_yaml,
    parse_scenario,
    scenario_to_yaml,
)

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
    # The 'as run' text is the fingerprint that finds runs to reuse: whichever emitter writes it
    # (libyaml's or PyYAML's own), the text must be the same, or a resumed sweep reruns points.
    assert scenario_to_yaml(scenario) == yaml.safe_dump(
        scenario.model_dump(mode="json"), sort_keys=False
    )


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


def _nested(levels: int) -> str:
    return VALID + "extra: " + "[" * levels + "]" * levels + "\n"


def _laughs() -> str:
    """Billion laughs: nine levels of nine aliases, 9**9 strings once expanded (a few kB)."""
    text = VALID + 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for level in range(1, 10):
        text += f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]\n"
    return text


def _bytes_of(text: str) -> bytes:
    return text.encode("utf-8")


# (id, file content, words of the one-line reason). Each crashed, hung or ran out of memory
# before the loader had limits (a 3,000-level nesting: a 212 kB RecursionError traceback; a
# million-item list: more than a minute of parsing).
HOSTILE_INPUTS: list[tuple[str, Callable[[], bytes], str]] = [
    ("nested 3000 lists", lambda: _bytes_of(_nested(3000)), "nested more than 64 levels"),
    (
        "nested 3000 mappings",
        lambda: _bytes_of(VALID + "extra: " + "{a: " * 3000 + "}" * 3000 + "\n"),
        "nested more than 64 levels",
    ),
    ("50 MB file", lambda: b"# " + b"x" * (50 << 20) + b"\n" + _bytes_of(VALID), "too large"),
    (
        "million-item list",
        lambda: _bytes_of(VALID + "extra: [" + ",".join(["1"] * 1_000_000) + "]\n"),
        "too large",
    ),
    (
        "hundred-thousand-item list",
        lambda: _bytes_of(VALID + "extra: [" + ",".join(["1"] * 100_000) + "]\n"),
        "more than 20000 values",
    ),
    ("billion laughs", lambda: _bytes_of(_laughs()), "alias *l"),
    ("alias inside itself", lambda: _bytes_of(VALID + "extra: &a [1, *a]\n"), "contains it"),
    (
        "binary garbage",
        lambda: random.Random(8).randbytes(4096),
        "UTF-8",
    ),
    ("latin-1 text", lambda: "name: café\n".encode("latin-1") + _bytes_of(VALID[1:]), "UTF-8"),
    ("control characters", lambda: b"name: x\x00\x01\x02\n", "unacceptable character"),
    ("month 13", lambda: _bytes_of(VALID + "seed: 2026-13-45\n"), "month must be in 1..12"),
    ("5000-digit integer", lambda: _bytes_of(VALID + "seed: " + "7" * 5000 + "\n"), "digits"),
    ("two documents", lambda: _bytes_of(VALID + "---\n" + VALID), "single document"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("content", "reason"), [case[1:] for case in HOSTILE_INPUTS], ids=[c[0] for c in HOSTILE_INPUTS]
)
def test_hostile_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, content: Callable[[], bytes], reason: str
) -> None:
    """`validate` and `run` refuse each hostile file with exit 2 and one line naming the file;
    `run` leaves no results folder behind."""
    path = tmp_path / "hostile.yaml"
    path.write_bytes(content())
    results_dir = tmp_path / "results"
    command = [sys.executable, "-m", "brokerlab.cli"]
    for args in (["validate", str(path)], ["run", str(path), "--results-dir", str(results_dir)]):
        done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2, (args[0], done.stderr[:500])
        assert len(lines) == 1, (args[0], done.stderr[:500])
        assert lines[0].startswith(f"{path}: "), lines[0]
        assert reason.lower() in lines[0].lower(), lines[0]
        assert len(lines[0]) < 300, lines[0]
    assert not results_dir.exists() or not any(results_dir.iterdir())


def test_limits_leave_room_for_real_scenarios(tmp_path: Path) -> None:
    """Anchors and aliases within the budget, and an empirical distribution of 10,000 measured
    values, load as before: the limits refuse only what no scenario needs."""
    values = ", ".join(f"{(i % 97) / 10:.1f}ms" for i in range(10_000))
    path = tmp_path / "measured.yaml"
    path.write_text(
        "name: &name measured\ndescription: *name\n"
        "producers: {rate: 100/s, messages: 10}\nbroker: {kind: redis-streams}\n"
        f"consumers: {{processing: {{dist: empirical, values: [{values}]}}}}\n",
        encoding="utf-8",
    )
    scenario = load_scenario(path)
    assert scenario.description == "measured"
    assert len(scenario.consumers.processing.values) == 10_000


def test_limits_are_checked_in_the_loader_not_only_the_cli() -> None:
    """Code that parses scenario text (notebooks, select, matrix) gets the same bounded loader."""
    with pytest.raises(yaml.YAMLError, match="nested more than 64 levels"):
        load_yaml(_nested(3000))
    with pytest.raises(yaml.YAMLError, match="more than 20000 values"):
        load_yaml(_laughs())
    assert load_yaml(_nested(10))["extra"] == [[[[[[[[[[]]]]]]]]]]
