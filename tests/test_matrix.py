"""The guarantee matrix: cells, expectations, records, and sim/real agreement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from brokerlab.app.matrix import (
    COLUMNS,
    MatrixError,
    disagreements,
    find_cells,
    judge,
    load_expectations,
    run_matrix,
)
from brokerlab.app.runner import RunOptions
from brokerlab.core.scenario import load_scenario

CELLS = Path(__file__).resolve().parent.parent / "scenarios" / "faults"


def test_every_config_and_fault_has_a_cell_and_an_expectation() -> None:
    """scenarios/faults covers the whole table: 7 broker configs x 4 faults."""
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


def test_judge_reads_none_some_any() -> None:
    """'none' needs 0, 'some' needs more than 0, 'any' accepts both."""
    (cell,) = [c for c in find_cells(CELLS) if (c.config, c.fault) == ("redis-none", "broker-kill")]
    assert cell.lost == "some"
    assert judge(cell, {"lost": 5, "duplicates": 0})
    assert not judge(cell, {"lost": 0, "duplicates": 0})
    (crash,) = [
        c for c in find_cells(CELLS) if (c.config, c.fault) == ("nats-core", "consumer-crash")
    ]
    assert judge(crash, {"lost": 3, "duplicates": 0})
    assert not judge(crash, {"lost": 3, "duplicates": 1})
    (log_crash,) = [
        c for c in find_cells(CELLS) if (c.config, c.fault) == ("jetstream-file", "consumer-crash")
    ]
    assert judge(log_crash, {"lost": 0, "duplicates": 0, "redelivered": 1})
    assert not judge(log_crash, {"lost": 0, "duplicates": 1, "redelivered": 0})


def test_a_file_that_is_no_cell_is_refused(tmp_path: Path) -> None:
    """Only CONFIG--FAULT.yaml names from the expectation table are matrix cells."""
    shutil.copy(CELLS / "nats-core--partition.yaml", tmp_path / "nats-core--meteor.yaml")
    with pytest.raises(MatrixError, match="not a matrix cell"):
        find_cells(tmp_path)
    with pytest.raises(MatrixError, match="no matrix cells"):
        find_cells(tmp_path / "empty")


def test_matrix_writes_one_record_per_cell_and_target(tmp_path: Path) -> None:
    """A matrix run writes matrix.csv and matrix.json with the contract's fields for each run."""
    cells = tmp_path / "cells"
    cells.mkdir()
    for name in ("redis-aof-always--broker-kill", "nats-core--consumer-crash"):
        shutil.copy(CELLS / f"{name}.yaml", cells / f"{name}.yaml")
    result = run_matrix(cells, ["sim", "real"], RunOptions(results_dir=tmp_path / "results"))
    records = json.loads((result.path / "matrix.json").read_text())
    assert len(records) == 4
    for record in records:
        assert set(COLUMNS) <= set(record)
        assert record["target"] in ("sim", "real")
        assert isinstance(record["matches"], bool)
        assert record["lost"] is not None, record["note"]
        assert Path(record["run"], "metrics.json").is_file()
    frame = pd.read_csv(result.path / "matrix.csv")
    assert list(frame.columns) == list(COLUMNS)
    real = {(r["config"], r["fault"]): r for r in records if r["target"] == "real"}
    assert real[("redis-aof-always", "broker-kill")]["lost"] == 0
    assert real[("nats-core", "consumer-crash")]["lost"] > 0
    assert set(result.grid().index) == {"redis-aof-always", "nats-core"}
    # The simulator agrees with the real broker on loss (none vs some) in these cells.
    for (config, fault), record in real.items():
        (sim,) = [
            r for r in records if (r["config"], r["fault"], r["target"]) == (config, fault, "sim")
        ]
        assert (sim["lost"] > 0) == (record["lost"] > 0), (config, fault, sim, record)


def test_disagreements_compare_none_versus_some() -> None:
    """Sim and real disagree when one lost (or duplicated) messages and the other did not."""
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
