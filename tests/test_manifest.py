"""run.json: one typed manifest that every command writes and every reader reads back.

Outside scripts read run.json directly, so the keys each command wrote before the manifest
existed are pinned here; each command's run.json must also parse back into exactly itself.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from brokerlab.cli import main
from brokerlab.core import results
from brokerlab.core.results import (
    ComparisonManifest,
    ManifestError,
    MatrixManifest,
    RunManifest,
    SelectionManifest,
    parse_manifest,
    read_manifest,
    write_manifest,
)

ROOT = Path(__file__).resolve().parent.parent
CELL = ROOT / "scenarios" / "faults" / "nats-core--consumer-crash.yaml"

SMALL = """\
name: small
producers: {rate: 500/s, messages: 200, keys: 2}
broker: {kind: nats}
consumers: {count: 1, processing: {dist: constant, value: 1ms}}
requirements: {max_lost: 0}
"""

COMMON = {"kind", "run_id", "scenario", "scenario_file", "seed", "started_at", "versions", "host"}
#: Keys each command's run.json carried before the manifest; outside scripts read them.
LEGACY_KEYS = {
    "run": COMMON
    | {
        "scenario_sha256",
        "target",
        "wall_time_s",
        "lab_version",
        "command",
        "target_info",
        "warnings",
        "unexpected",
        "faults",
    },
    "comparison": COMMON | {"targets", "runs", "errors", "verdicts"},
    "selection": COMMON | {"targets", "real", "errors", "verdict"},
    "matrix": COMMON | {"targets", "verdict"},
}
#: Keys the manifest added.
NEW_KEYS = {"run": {"profile"}, "comparison": set(), "selection": set(), "matrix": set()}


def _invoke(*args: str) -> None:
    done = CliRunner().invoke(main, [*args, "-q"])
    assert done.exit_code == 0, done.output


def _round_trip(folder: Path, kind: str) -> dict:
    """run.json of ``folder``: its keys are the contract's and it reads back as itself."""
    raw = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    assert set(raw) == LEGACY_KEYS[kind] | NEW_KEYS[kind], folder
    manifest = read_manifest(folder)
    assert manifest.kind == kind
    assert manifest.model_dump(mode="json") == raw
    return raw


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One folder made by each command that writes run.json (compare runs a real NATS)."""
    tmp = tmp_path_factory.mktemp("made")
    scenario = tmp / "small.yaml"
    scenario.write_text(SMALL, encoding="utf-8")
    cells = tmp / "cells"
    cells.mkdir()
    shutil.copy(CELL, cells / CELL.name)
    where = {name: tmp / name for name in ("run", "comparison", "selection", "matrix")}
    _invoke("run", str(scenario), "--seed", "4", "--out", str(where["run"]))
    _invoke(
        "compare",
        str(scenario),
        "--targets",
        "sim,nats",
        "--no-report",
        "--out",
        str(where["comparison"]),
    )
    _invoke(
        "select",
        str(scenario),
        "--candidates",
        "nats,kafka",
        "--sim-only",
        "--no-reuse",
        "--out",
        str(where["selection"]),
        "--results-dir",
        str(tmp / "results"),
    )
    _invoke(
        "matrix", "--cells", str(cells), "--targets", "sim", "--seed", "2", "--out",
        str(where["matrix"]),
    )  # fmt: skip
    return where


def test_run_writes_a_run_manifest(made: dict[str, Path]) -> None:
    """`run` records target, seed, its scenario's fingerprint and the simulator profile."""
    raw = _round_trip(made["run"], "run")
    manifest = read_manifest(made["run"])
    assert isinstance(manifest, RunManifest)
    assert raw["target"] == "sim" and raw["seed"] == 4 and raw["run_id"] == "run"
    assert re.fullmatch(r"[0-9a-f]{64}", raw["scenario_sha256"])
    # the performance profile the simulator charged (auto: this machine's, else the shipped one)
    assert raw["profile"]["requested"] == "auto" and raw["profile"]["describe"]
    assert raw["lab_version"] == raw["versions"]["brokerlab"]


def test_compare_writes_a_comparison_manifest_and_run_manifests(made: dict[str, Path]) -> None:
    """A comparison lists its targets and runs; each target's run has its own manifest."""
    raw = _round_trip(made["comparison"], "comparison")
    # the simulator runs as a twin of each real target: sim:<kind>, beside it
    assert raw["targets"] == raw["runs"] == ["sim:nats", "nats"]
    assert raw["errors"] == {}
    assert set(raw["verdicts"]) == {"sim:nats", "nats"}
    sim = _round_trip(made["comparison"] / "sim:nats", "run")
    real = _round_trip(made["comparison"] / "nats", "run")
    assert sim["profile"]["kind"] == "nats"
    assert real["profile"] is None  # a real broker is measured, not modelled


def test_select_writes_a_selection_manifest(made: dict[str, Path]) -> None:
    """A selection records its candidates, that it ran on the simulator only, and the winner."""
    raw = _round_trip(made["selection"], "selection")
    assert raw["targets"] == ["nats", "kafka"] and raw["real"] is False
    assert raw["verdict"].startswith("best: ")
    for candidate in ("nats", "kafka"):
        run = _round_trip(made["selection"] / candidate, "run")
        assert run["target"] == "sim" and run["profile"]["requested"] == "auto"


def test_matrix_writes_a_matrix_manifest(made: dict[str, Path]) -> None:
    """A matrix records its cells folder as scenario_file and how many cells matched."""
    raw = _round_trip(made["matrix"], "matrix")
    assert raw["targets"] == ["sim"] and raw["seed"] == 2
    assert raw["scenario_file"].endswith("cells")
    assert re.fullmatch(r"\d+/1 match", raw["verdict"])
    _round_trip(made["matrix"] / "nats-core--consumer-crash" / "sim", "run")


def test_list_reads_every_kind(made: dict[str, Path], tmp_path: Path) -> None:
    """`brokerlab list`'s reader names each folder's kind, target(s) and verdict."""
    for name, folder in made.items():
        shutil.copytree(folder, tmp_path / name)
    listed = {r.run_id: r for r in results.list_runs(tmp_path)}
    assert {name: r.kind for name, r in listed.items()} == {
        "run": "run",
        "comparison": "comparison",
        "selection": "selection",
        "matrix": "matrix",
    }
    assert listed["comparison"].target == "sim:nats,nats"  # nats beside its simulator twin
    assert listed["run"].verdict in ("pass", "fail", "inconclusive")
    assert listed["matrix"].verdict.endswith("match")


# --------------------------------------------------------------------------- known answers

RUN = {
    "kind": "run",
    "run_id": "r",
    "scenario": "s",
    "target": "sim",
    "seed": 1,
    "started_at": "2026-11-29T12:00:00+00:00",
}


def test_write_then_read_is_the_same_manifest(tmp_path: Path) -> None:
    """What write_manifest writes, read_manifest returns unchanged, fault windows included."""
    manifest = ComparisonManifest(
        run_id="c",
        scenario="s",
        targets=["sim", "nats"],
        seed=None,
        started_at="t",
        runs=["sim"],
        errors={"nats": "TargetError: no server"},
    )
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    run = RunManifest.model_validate(
        {
            **RUN,
            "faults": [{"action": "broker-pause", "target": "broker", "t_start": 1, "t_end": 2}],
        }
    )
    write_manifest(tmp_path, run)
    assert read_manifest(tmp_path) == run
    assert read_manifest(tmp_path).faults[0].t_end == 2.0


def test_old_folders_still_read() -> None:
    """No ``kind`` is a single run; an old comparison's ``{target: folder}`` map is a list."""
    assert isinstance(parse_manifest({k: v for k, v in RUN.items() if k != "kind"}), RunManifest)
    old = {**RUN, "kind": "comparison", "targets": ["sim"], "runs": {"sim": "sim"}}
    comparison = parse_manifest(old)
    assert isinstance(comparison, ComparisonManifest) and comparison.runs == ["sim"]
    assert parse_manifest(RUN).profile is None  # written before profiles existed


def test_unknown_keys_are_dropped_on_read_and_refused_on_write() -> None:
    """A later lab's extra key does not stop a read; a command cannot write an unknown key."""
    assert parse_manifest({**RUN, "from_the_future": 1}) == parse_manifest(RUN)
    with pytest.raises(ValidationError, match="from_the_future"):
        RunManifest.model_validate({**RUN, "from_the_future": 1})
    with pytest.raises(ValidationError, match="real"):
        SelectionManifest(run_id="x", scenario="s", targets=[], seed=1, started_at="t", verdict="")
    assert (
        MatrixManifest(
            run_id="m", scenario="matrix", targets=["sim"], seed=None, started_at="t", verdict="0/0"
        ).kind
        == "matrix"
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({**RUN, "kind": "sweep"}, "kind: 'sweep' is not one of run, comparison"),
        ({**RUN, "seed": "many"}, "seed: Input should be a valid integer"),
        ({k: v for k, v in RUN.items() if k != "target"}, "target: Field required"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_a_bad_manifest_names_the_file_and_the_field(
    tmp_path: Path, data: object, reason: str
) -> None:
    """A broken run.json is a ManifestError naming the file and the field, not a traceback."""
    (tmp_path / "run.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ManifestError, match=re.escape(reason)) as caught:
        read_manifest(tmp_path)
    assert str(tmp_path / "run.json") in str(caught.value)


def test_results_readme_documents_every_manifest_field() -> None:
    """results/README.md names every run.json key, so the documentation cannot drift."""
    readme = (ROOT / "results" / "README.md").read_text(encoding="utf-8")
    models = (RunManifest, ComparisonManifest, SelectionManifest, MatrixManifest)
    missing = {f for m in models for f in m.model_fields if f"`{f}`" not in readme}
    assert not missing, f"run.json keys missing from results/README.md: {sorted(missing)}"
