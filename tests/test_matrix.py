"""The guarantee matrix: cells, expectations, controls, falsifiable judgements, sim vs real."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml

from brokerlab.app.matrix import (
    CLEAN_COUNTS,
    COLUMNS,
    RULE_COUNTS,
    Cell,
    MatrixError,
    Observation,
    disagreements,
    drain_cut,
    find_cells,
    judge_cell,
    load_expectations,
    run_matrix,
    still_at_broker,
)
from brokerlab.app.runner import RunOptions
from brokerlab.core.scenario import load_scenario

CELLS = Path(__file__).resolve().parent.parent / "scenarios" / "faults"

#: Cells where the simulator does not yet do what the table (and the real broker) says. Strict:
#: when the simulator is fixed, the test asks to empty this list.
KNOWN_SIM_MISMATCHES: set[tuple[str, str]] = set()

#: The columns matrix.csv had before controls were added: they keep their names and order.
ORIGINAL_COLUMNS = (
    "config",
    "fault",
    "target",
    "lost",
    "duplicates",
    "out_of_order",
    "unknown",
    "redelivered",
    "expected",
    "matches",
    "broker",
    "note",
    "run",
)


def _cell(config: str, fault: str) -> Cell:
    (cell,) = [c for c in find_cells(CELLS) if (c.config, c.fault) == (config, fault)]
    return cell


def _counts(**changes: int) -> dict[str, int]:
    """A clean, drained run's counts (1800 sent, acknowledged and delivered once) with changes."""
    counts = {
        "sent": 1800,
        "acked": 1800,
        "failed": 0,
        "unknown": 0,
        "delivered": 1800,
        "unique": 1800,
        "lost": 0,
        "duplicates": 0,
        "out_of_order": 0,
        "redelivered": 0,
    }
    counts.update(changes)
    return counts


def _window(fault: str) -> tuple[dict[str, object], ...]:
    return ({"action": fault, "target": "broker", "t_start": 2.5, "t_end": 4.0},)


CLEAN = Observation(_counts())


def test_every_config_and_fault_has_a_cell_and_an_expectation() -> None:
    """scenarios/faults covers the whole table: 11 broker configs x 4 faults."""
    table = load_expectations()
    cells = find_cells(CELLS)
    assert {(c.config, c.fault) for c in cells} == {
        (config, fault) for config in table["configs"] for fault in table["faults"]
    }
    for cell in cells:
        scenario = load_scenario(cell.path)
        assert [f.action for f in scenario.faults] == [cell.fault]
        # a backlog at the fault: the consumer is slower than the producer
        assert (
            scenario.producers.rate * scenario.consumers.processing.mean > scenario.consumers.count
        )
        # every cell checks something beyond "the fault fired"
        assert cell.rules(), cell


def test_nats_core_expectations_say_what_nats_core_does() -> None:
    """NATS core loses a crashed consumer's buffer and may lose what is in flight at a kill
    (nats-py buffers its publishes while it reconnects: measured 0 or 1 lost), never redelivers
    and keeps one publisher's order; a short partition is held like TCP holds it (no loss,
    measured); a pause may lose, never duplicates."""
    for fault, lost in (("consumer-crash", "some"), ("broker-kill", "any")):
        cell = _cell("nats-core", fault)
        assert (cell.lost, cell.duplicates, cell.redelivered) == (lost, "none", "none"), fault
        assert cell.out_of_order == "none"
    partition = _cell("nats-core", "partition")
    assert (partition.lost, partition.duplicates, partition.redelivered) == ("none",) * 3
    pause = _cell("nats-core", "broker-pause")
    assert (pause.lost, pause.duplicates) == ("any", "none")


def test_a_fault_caused_effect_matches_and_the_same_effect_without_the_fault_does_not() -> None:
    """'some' needs the effect with the fault and none in the control; 'none' needs 0."""
    kill = _cell("redis-none", "broker-kill")
    assert kill.lost == "some"
    fired = Observation(_counts(lost=125, unique=1675, delivered=1675), _window("broker-kill"))
    judged = judge_cell(kill, fired, CLEAN)
    assert judged.status == "match", judged.reason
    assert "lost 125 vs 0 without the fault" in judged.reason
    # The fault fired but nothing was lost: the table's effect is missing.
    quiet = Observation(_counts(), _window("broker-kill"))
    assert judge_cell(kill, quiet, CLEAN).status == "mismatch"
    assert "lost 0 with the fault, expected some" in judge_cell(kill, quiet, CLEAN).reason
    # The control loses as much: the fault did not cause it.
    leaky = Observation(_counts(lost=90, unique=1710, delivered=1710))
    judged = judge_cell(kill, fired, leaky)
    assert judged.status == "mismatch"
    assert "not caused by the fault" in judged.reason
    # A 'none' rule broken with the fault.
    durable = _cell("redis-aof-always", "broker-kill")
    assert judge_cell(durable, fired, CLEAN).status == "mismatch"
    assert "lost 125 with the fault, expected none" in judge_cell(durable, fired, CLEAN).reason


def test_a_cell_with_its_fault_removed_never_matches() -> None:
    """Removing the fault leaves the control's outcome: no window -> inconclusive; and the
    control's counts under a fault window -> mismatch for every cell that names an effect."""
    for cell in find_cells(CELLS):
        judged = judge_cell(cell, CLEAN, CLEAN)
        assert judged.status == "inconclusive", (cell, judged)
        assert "never fired" in judged.reason
        pretend = replace(CLEAN, windows=_window(cell.fault))
        if "some" in cell.rules().values():
            assert judge_cell(cell, pretend, CLEAN).status == "mismatch", cell


def test_nothing_acknowledged_or_delivered_is_inconclusive_never_ok() -> None:
    """A broker down for the whole run (nothing acknowledged, nothing delivered) proves nothing:
    every cell reads inconclusive with the reason, whatever its rules."""
    down = Observation(
        _counts(acked=0, failed=1800, delivered=0, unique=0), windows=_window("broker-kill")
    )
    for cell in find_cells(CELLS):
        judged = judge_cell(cell, replace(down, windows=_window(cell.fault)), CLEAN)
        assert judged.status == "inconclusive", (cell, judged)
        assert "nothing was acknowledged" in judged.reason
        assert "nothing was delivered" in judged.reason
    crash = _cell("redis-none", "consumer-crash")
    undelivered = Observation(_counts(delivered=0, unique=0), _window("consumer-crash"))
    assert "nothing was delivered" in judge_cell(crash, undelivered, CLEAN).reason


def test_a_fault_that_did_not_start_is_inconclusive() -> None:
    """A recorded window is not enough when a warning says the fault failed to start."""
    pause = _cell("redis-none", "broker-pause")
    ran = Observation(
        _counts(duplicates=150, delivered=1950),
        _window("broker-pause"),
        warnings=("fault 0 (broker-pause) failed to start: no such process",),
    )
    judged = judge_cell(pause, ran, CLEAN)
    assert judged.status == "inconclusive"
    assert "failed to start" in judged.reason
    assert judge_cell(pause, replace(ran, warnings=()), CLEAN).status == "match"


def test_the_control_must_be_usable_and_clean() -> None:
    """A control that failed or acknowledged nothing cannot show causation (inconclusive, or a
    mismatch if a 'none' rule is broken anyway); a control with anomalies is a mismatch."""
    pause = _cell("redis-none", "broker-pause")
    ran = Observation(_counts(duplicates=150, delivered=1950), _window("broker-pause"))
    failed = Observation.failed(RuntimeError("broker did not start"))
    assert judge_cell(pause, ran, failed).status == "inconclusive"
    assert "control failed" in judge_cell(pause, ran, failed).reason
    assert judge_cell(pause, ran, None).status == "inconclusive"
    lossy = replace(ran, counts=_counts(duplicates=150, delivered=1900, unique=1750, lost=50))
    assert judge_cell(pause, lossy, failed).status == "mismatch"
    for key in CLEAN_COUNTS:
        if key in RULE_COUNTS and pause.rules().get(key) == "some":
            continue
        dirty = Observation(_counts(**{key: 3}))
        judged = judge_cell(pause, ran, dirty)
        assert judged.status == "mismatch", key
        assert f"not clean: {key} 3" in judged.reason
    # An analysis without some count (e.g. no `unprocessed`) is read defensively.
    assert judge_cell(pause, ran, CLEAN).status == "match"


def test_nats_core_order_and_redelivery_are_checked() -> None:
    """NATS core never redelivers and keeps one publisher's order: either broken is a mismatch."""
    crash = _cell("nats-core", "consumer-crash")
    lost = _counts(lost=300, unique=1500, delivered=1500)
    assert judge_cell(crash, Observation(lost, _window("consumer-crash")), CLEAN).matches
    for key in ("out_of_order", "redelivered", "duplicates"):
        broken = Observation({**lost, key: 2}, _window("consumer-crash"))
        assert judge_cell(crash, broken, CLEAN).status == "mismatch", key


def test_a_drain_cut_off_while_still_delivering_is_inconclusive() -> None:
    """Messages still arriving when the drain's deadline ends it are late, not provably lost: a
    loaded machine's slow consumer must not read as a broker losing acknowledged messages."""
    sends = pd.DataFrame({"t_sent": [0.0, 5.99], "t_acked": [0.01, 6.0]})
    slow = pd.DataFrame({"t_delivered": [1.0, 25.95]})  # still delivering at 6 s + 20 s
    quiet = pd.DataFrame({"t_delivered": [1.0, 12.7]})  # went quiet long before the deadline
    assert "cut off at about 26.0 s" in drain_cut(sends, slow, 20.0)
    assert drain_cut(sends, quiet, 20.0) == ""
    durable = _cell("redis-aof-always", "broker-kill")
    counts = _counts(lost=401, unique=1399, delivered=1399)
    late = Observation(counts, _window("broker-kill"), drain_cut=drain_cut(sends, slow, 20.0))
    judged = judge_cell(durable, late, CLEAN)
    assert judged.status == "inconclusive"
    assert "401 lost or unprocessed" in judged.reason
    assert judge_cell(durable, replace(late, drain_cut=""), CLEAN).status == "mismatch"


def test_a_drain_that_timed_out_with_entries_at_the_broker_is_not_loss() -> None:
    """The harness's drain record (run.json target_info.drain): timed out with entries still at
    the broker means late, so inconclusive; timed out with nothing there means really lost."""
    late = {"reason": "timeout", "seconds": 20.0, "pending": 120}
    held = {"drain": {**late, "at_broker": {"undelivered": 100, "unacked": 1}}}
    gone = {"drain": {**late, "at_broker": {"undelivered": 0, "unacked": 0}}}
    assert "120 acknowledged messages pending and 101 entries" in still_at_broker(held)
    assert still_at_broker(gone) == ""
    assert still_at_broker({"drain": {"reason": "timeout", "pending": 120}}) == ""  # cannot say
    assert still_at_broker({"drain": {"reason": "complete", "seconds": 1.0, "pending": 0}}) == ""
    assert still_at_broker({}) == ""
    durable = _cell("redis-aof-always", "broker-kill")
    counts = _counts(lost=120, unique=1680, delivered=1680)
    run = Observation(counts, _window("broker-kill"), drain_cut=still_at_broker(held))
    judged = judge_cell(durable, run, CLEAN)
    assert judged.status == "inconclusive" and "101 entries still at the broker" in judged.reason
    lost = Observation(counts, _window("broker-kill"), drain_cut=still_at_broker(gone))
    assert judge_cell(durable, lost, CLEAN).status == "mismatch"


def test_a_file_that_is_no_cell_is_refused(tmp_path: Path) -> None:
    """Only CONFIG--FAULT.yaml names from the expectation table are matrix cells."""
    shutil.copy(CELLS / "nats-core--partition.yaml", tmp_path / "nats-core--meteor.yaml")
    with pytest.raises(MatrixError, match="not a matrix cell"):
        find_cells(tmp_path)
    with pytest.raises(MatrixError, match="no matrix cells"):
        find_cells(tmp_path / "empty")


def test_every_simulated_cell_matches_and_every_control_is_clean(tmp_path: Path) -> None:
    """The whole matrix on the simulator (with its controls): each cell matches the table (but
    the listed known simulator gaps, which must still show), each control is clean, and each
    cell, judged again with its fault removed, no longer matches."""
    result = run_matrix(CELLS, ["sim"], RunOptions(results_dir=tmp_path / "results"))
    records = json.loads((result.path / "matrix.json").read_text())
    assert len(records) == 44
    assert len({r["control_run"] for r in records}) == 11  # one control per config
    by_cell = {(c.config, c.fault): c for c in find_cells(CELLS)}
    for record in records:
        key = (record["config"], record["fault"])
        if key in KNOWN_SIM_MISMATCHES:
            assert record["status"] == "mismatch", (
                f"{key} now matches on the simulator: remove it from KNOWN_SIM_MISMATCHES"
            )
        else:
            assert record["status"] == "match", (key, record["reason"])
        control = Observation.from_folder(record["control_run"])
        assert not control.windows
        assert control.count("acked") == control.count("sent") > 0
        for count in CLEAN_COUNTS:
            assert (control.count(count) or 0) == 0, (key, count)
        # the same cell with its fault removed: inconclusive, never a match
        cell = by_cell[key]
        assert judge_cell(cell, control, control).status == "inconclusive"
        run = Observation.from_folder(record["run"])
        assert run.windows and run.count("acked")
    assert result.tally()["inconclusive"] == 0


def test_matrix_writes_one_record_per_cell_and_target(tmp_path: Path) -> None:
    """A matrix run on both targets writes matrix.csv and matrix.json with the contract's fields
    plus status, reason and the control's counts for each run; real brokers agree with the
    simulator on loss in these cells, and the real controls are clean."""
    cells = tmp_path / "cells"
    cells.mkdir()
    for name in ("redis-aof-always--broker-kill", "nats-core--consumer-crash"):
        # The shipped cells, shortened: the fault still hits a backlog (the consumer is slower
        # than the producer from the start), the real runs and their controls take half as
        # long, and NATS core's drain, which waits for messages it lost until its deadline,
        # still goes quiet seconds before it (45 s in the shipped cell).
        cell = yaml.safe_load((CELLS / f"{name}.yaml").read_text(encoding="utf-8"))
        cell["producers"]["duration"] = "3s"
        cell["faults"][0]["at"] = "1200ms"
        cell["drain_timeout"] = "15s"
        (cells / f"{name}.yaml").write_text(yaml.safe_dump(cell), encoding="utf-8")
    result = run_matrix(cells, ["sim", "real"], RunOptions(results_dir=tmp_path / "results"))
    records = json.loads((result.path / "matrix.json").read_text())
    assert len(records) == 4
    for record in records:
        assert set(COLUMNS) <= set(record)
        assert record["target"] in ("sim", "real")
        assert isinstance(record["matches"], bool)
        assert record["matches"] == (record["status"] == "match")
        assert record["status"] in ("match", "mismatch", "inconclusive")
        assert record["reason"]
        assert record["lost"] is not None, record["note"]
        assert Path(record["run"], "metrics.json").is_file()
        assert Path(record["control_run"], "metrics.json").is_file()
        # Never a contradiction of the table; a real run on a loaded machine may be unable to
        # tell (its consumer still draining at the deadline), and then says so.
        assert record["status"] != "mismatch", record["reason"]
        if record["status"] == "match" or record["target"] == "sim":
            assert record["status"] == "match", record["reason"]
            assert record["control_lost"] == 0 and record["control_duplicates"] == 0, record
        else:
            assert "may only be late" in record["reason"], record["reason"]
    frame = pd.read_csv(result.path / "matrix.csv")
    assert list(frame.columns) == list(COLUMNS)
    assert tuple(frame.columns[: len(ORIGINAL_COLUMNS)]) == ORIGINAL_COLUMNS
    real = {(r["config"], r["fault"]): r for r in records if r["target"] == "real"}
    durable = real[("redis-aof-always", "broker-kill")]
    if durable["status"] == "match":
        assert durable["lost"] == 0
    crash = real[("nats-core", "consumer-crash")]
    assert crash["lost"] > 0
    assert set(result.grid().index) == {"redis-aof-always", "nats-core"}
    # The simulator agrees with the real broker on loss (none vs some) in these cells.
    for (config, fault), record in real.items():
        if record["status"] != "match":
            continue
        (sim,) = [
            r for r in records if (r["config"], r["fault"], r["target"]) == (config, fault, "sim")
        ]
        assert (sim["lost"] > 0) == (record["lost"] > 0), (config, fault, sim, record)


@pytest.mark.slow
def test_kafka_partition_cell_plays_on_the_real_broker(tmp_path: Path) -> None:
    """kafka-tansu x partition on the lab's Tansu: the partition is played (every client's
    connections cross the fault proxy the broker advertises), the cell matches the table (no
    loss, no duplicates), its control is clean, and the simulator agrees."""
    cells = tmp_path / "cells"
    cells.mkdir()
    shutil.copy(CELLS / "kafka-tansu--partition.yaml", cells)
    result = run_matrix(cells, ["sim", "real"], RunOptions(results_dir=tmp_path / "results"))
    records = {r["target"]: r for r in json.loads((result.path / "matrix.json").read_text())}
    real = records["real"]
    assert real["status"] == "match", real["reason"]
    assert real["fault_window"] and real["lost"] == 0 and real["duplicates"] == 0
    assert real["acked"] == real["delivered"] > 0
    assert real["control_lost"] == 0 and real["control_duplicates"] == 0
    run = json.loads(Path(real["run"], "run.json").read_text())
    routed = run["target_info"]["faults"]["routed_connections"]
    assert {"control", "producer-0", "consumer-0"} <= set(routed), routed
    assert records["sim"]["status"] == "match", records["sim"]["reason"]
    assert disagreements(result.records).empty


def test_disagreements_compare_none_versus_some() -> None:
    """Sim and real disagree when one lost (or duplicated) messages and the other did not;
    an inconclusive run is no evidence either way."""
    records = pd.DataFrame(
        [
            {"config": "a", "fault": "k", "target": "sim", "lost": 0, "duplicates": 2, "note": ""},
            {"config": "a", "fault": "k", "target": "real", "lost": 3, "duplicates": 1, "note": ""},
            {"config": "b", "fault": "k", "target": "sim", "lost": 5, "duplicates": 0, "note": ""},
            {"config": "b", "fault": "k", "target": "real", "lost": 9, "duplicates": 0, "note": ""},
        ]
    )
    differ = disagreements(records)
    assert list(differ["config"]) == ["a"]
    records["status"] = ["match", "inconclusive", "match", "match"]
    assert disagreements(records).empty


def test_matrix_command_shows_a_cell_without_its_fault_as_inconclusive(tmp_path: Path) -> None:
    """End to end on the simulator: the same cell with its fault deleted from the file is
    inconclusive ('never fired'), not a match; the command lists it with its reason."""
    cells = tmp_path / "cells"
    cells.mkdir()
    shutil.copy(CELLS / "redis-none--broker-kill.yaml", cells / "redis-none--broker-kill.yaml")
    text = (CELLS / "redis-none--broker-pause.yaml").read_text(encoding="utf-8")
    cut = text.index("faults:")
    end = text.index("requirements:")
    (cells / "redis-none--broker-pause.yaml").write_text(text[:cut] + text[end:], "utf-8")
    command = [sys.executable, "-m", "brokerlab.cli", "matrix", "--cells", str(cells)]
    done = subprocess.run(
        [*command, "--targets", "sim", "--results-dir", str(tmp_path / "results")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())
    assert "1 of 2 runs match the expectation table, 0 mismatch, 1 inconclusive" in out
    assert "inconclusive: redis-none x broker-pause on sim: the broker-pause never fired" in out
    (folder,) = (tmp_path / "results").iterdir()
    frame = pd.read_csv(folder / "matrix.csv")
    assert dict(zip(frame["fault"], frame["status"], strict=True)) == {
        "broker-kill": "match",
        "broker-pause": "inconclusive",
    }


def test_lost_is_judged_with_the_unprocessed() -> None:
    """Messages a crashed consumer took and never processed, never redelivered, are lost to the
    business: a 'none' loss rule breaks on them, a 'some' rule is met by them."""
    durable = _cell("jetstream-file", "consumer-crash")
    taken = Observation(_counts(redelivered=1, unprocessed=4), _window("consumer-crash"))
    judged = judge_cell(durable, taken, CLEAN)
    assert judged.status == "mismatch"
    assert "lost 0 (+4 unprocessed) with the fault, expected none" in judged.reason
    crash = _cell("nats-core", "consumer-crash")
    held = Observation(_counts(unprocessed=1), _window("consumer-crash"))
    assert judge_cell(crash, held, CLEAN).matches


def test_a_crash_between_messages_cannot_show_redelivery() -> None:
    """A consumer crash that caught the consumer holding nothing gives the broker nothing to
    redeliver: inconclusive. One that took a message the broker never gave back is a mismatch."""
    crash = _cell("jetstream-memory", "consumer-crash")
    assert crash.redelivered == "some"
    empty_handed = Observation(_counts(), _window("consumer-crash"), cut_short=0)
    judged = judge_cell(crash, empty_handed, CLEAN)
    assert judged.status == "inconclusive"
    assert "holding no message" in judged.reason
    kept = Observation(_counts(unprocessed=1), _window("consumer-crash"), cut_short=1)
    assert judge_cell(crash, kept, CLEAN).status == "mismatch"
    redone = Observation(_counts(redelivered=1), _window("consumer-crash"), cut_short=0)
    assert judge_cell(crash, redone, CLEAN).matches
