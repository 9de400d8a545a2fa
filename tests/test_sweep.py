"""Sweeps: the grid of points, the table's contract, reuse of runs, failures, and the same numbers
whether points run in this process, on a LocalCluster or on a cluster of separate processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from brokerlab.app.runner import RunOptions
from brokerlab.app.sweep import (
    SWEEP_CSV,
    SWEEP_PARQUET,
    SweepError,
    build_points,
    load_sweep_file,
    parse_vary,
    run_sweep,
    summarize,
    t95,
)
from brokerlab.core.scenario import parse_scenario

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def small(messages: int = 3000, **consumers: object) -> object:
    """M/M/1-like, short: 1 ms exponential processing, a p99 bound that high load breaks."""
    return parse_scenario(
        {
            "name": "small",
            "seed": 7,
            "producers": {"rate": "400/s", "messages": messages},
            "broker": {"kind": "redis-streams", "profile": "none"},  # ideal: known answers
            "consumers": {"processing": {"dist": "exponential", "mean": "1ms"}, **consumers},
            "requirements": {"latency": {"completion": {"p99": "25ms"}}},
        }
    )


def brokerlab(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "brokerlab"), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_vary_values_become_a_grid_in_base_units() -> None:
    """A range fills in N values from its ends in the field's units; lists keep their order;
    two axes make every combination; whole-number fields stay whole."""
    rate = parse_vary("producers.rate=200/s..800/s:4")
    count = parse_vary("consumers.count=1,3")
    mean = parse_vary("consumers.processing.mean=500us,2ms")
    points = build_points(small(), [rate, count, mean])
    assert len(points) == 4 * 2 * 2
    assert [p.columns["producers.rate"] for p in points[::4]] == [200.0, 400.0, 600.0, 800.0]
    assert {p.columns["consumers.count"] for p in points} == {1, 3}
    assert {p.columns["consumers.processing.mean"] for p in points} == {0.0005, 0.002}
    last = points[-1].scenario
    assert (last.producers.rate, last.consumers.count) == (800.0, 3)
    assert last.consumers.processing.mean == 0.002
    assert last.consumers.processing.dist == "exponential"  # the shape is kept
    counts = build_points(small(), [parse_vary("consumers.count=1..4:3")])
    assert [p.columns["consumers.count"] for p in counts] == [1, 2, 4]


@pytest.mark.parametrize(
    ("vary", "says"),
    [
        ("producers.rat=1,2", "producers.rat: no such field"),
        ("producers.rate=-5/s", "producers.rate"),
        ("consumers.count=0", "consumers.count"),
        ("consumers.count", "expected PATH=V1,V2"),
        ("producers.rate=1/s..2/s:1", "at least 2 values"),
        ("faults[0].at=1s", "the list has 0 entries"),
    ],
)
def test_bad_vary_exits_2_naming_the_flag_and_writes_nothing(
    tmp_path: Path, vary: str, says: str
) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(json.dumps(small().model_dump(mode="json")))
    out = tmp_path / "out"
    done = brokerlab("sweep", str(scenario), "--vary", vary, "--out", str(out), "--workers", "1")
    assert done.returncode == 2, done.stderr
    assert "--vary" in done.stderr and says in done.stderr
    assert not out.exists()


def test_sweep_writes_the_table_and_run_folders_and_reuses_them(tmp_path: Path) -> None:
    """One row per point × seed; columns named by the contract; every run an ordinary folder;
    running again reuses every run, and a removed run is the only one played again."""
    out = tmp_path / "sweep"
    axes = [parse_vary("producers.rate=300/s,900/s")]
    result = run_sweep(small(), axes, seeds=2, out=out, workers=1)
    table = pd.read_csv(out / SWEEP_CSV)
    assert list(table.columns[:3]) == ["producers.rate", "seed", "target"]
    assert list(table.columns[-3:]) == ["verdict", "run", "error"]
    for column in (
        "latency_ms.completion.mean",
        "latency_ms.end_to_end.p99",
        "throughput_per_s.delivered",
        "counts.lost",
    ):
        assert column in table.columns
    assert table[["producers.rate", "seed"]].values.tolist() == [
        [300.0, 7],
        [300.0, 8],
        [900.0, 7],
        [900.0, 8],
    ]
    assert set(table["target"]) == {"sim"} and table["error"].isna().all()
    # 900/s on a 1,000/s consumer breaks a 25 ms p99; 300/s does not
    assert table["verdict"].tolist() == ["pass", "pass", "fail", "fail"]
    for row in table.to_dict("records"):
        metrics = json.loads((out / row["run"] / "metrics.json").read_text())
        assert metrics["seed"] == row["seed"]
        assert metrics["latency_ms"]["completion"]["p99"] == row["latency_ms.completion.p99"]
        assert metrics["throughput_per_s"]["offered"] == row["producers.rate"]
        assert metrics["counts"]["sent"] == 3000
        assert (out / row["run"] / "sends.parquet").is_file()
    parquet = pd.read_parquet(out / SWEEP_PARQUET)
    pd.testing.assert_frame_equal(
        parquet.drop(columns=["verdict", "run", "error"]),
        table.drop(columns=["verdict", "run", "error"]),
        check_dtype=False,
    )
    again = run_sweep(small(), axes, seeds=2, out=out, workers=1)
    assert again.reused == 4
    pd.testing.assert_frame_equal(again.table, result.table)
    import shutil

    shutil.rmtree(out / table["run"][3])
    third = run_sweep(small(), axes, seeds=2, out=out, workers=1)
    assert third.reused == 3
    pd.testing.assert_frame_equal(third.table, result.table)


def test_summary_states_a_confidence_interval_across_seeds() -> None:
    """Known answer: values 1, 2, 3 have mean 2 and a 95% half-width t(2) * 1 / sqrt(3)."""
    table = pd.DataFrame(
        {
            "producers.rate": [1.0, 1.0, 1.0],
            "target": ["sim"] * 3,
            "seed": [1, 2, 3],
            "verdict": ["pass", "fail", "pass"],
            "error": [None, None, None],
            "latency_ms.end_to_end.p99": [1.0, 2.0, 3.0],
        }
    )
    (row,) = summarize(table, ["producers.rate"]).to_dict("records")
    assert row["seeds"] == 3 and row["passed"] == 2
    assert row["latency_ms.end_to_end.p99"] == pytest.approx(2.0)
    assert row["latency_ms.end_to_end.p99 ±95%"] == pytest.approx(4.303 / 3**0.5, rel=1e-4)
    assert t95(2) == 12.706 and t95(100) == 1.96


def test_a_failing_point_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    """A real target whose broker cannot be reached fails its runs; the simulator's still run."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "sweep"
    result = run_sweep(
        small(1000),
        [parse_vary("producers.rate=300/s,600/s")],
        targets=["sim", "redis-streams"],
        out=out,
        workers=1,
        options=RunOptions(redis_url=f"redis://127.0.0.1:{port}"),
    )
    table = result.table
    assert len(table) == 4 and result.failed == 2
    real = table[table["target"] == "redis-streams"]
    assert real["error"].notna().all() and real["run"].isna().all()
    assert real["latency_ms.completion.p99"].isna().all()
    sim = table[table["target"] == "sim"]
    assert sim["error"].isna().all() and (sim["verdict"] == "pass").all()
    assert pd.read_csv(out / SWEEP_CSV)["error"].notna().sum() == 2


def test_sweep_file_says_the_same_as_flags(tmp_path: Path) -> None:
    """A sweep file names the scenario (relative to itself), the axes, seeds and targets; the
    CLI runs it and prints means with confidence intervals."""
    (tmp_path / "s.yaml").write_text(json.dumps(small(1000).model_dump(mode="json")))
    spec = tmp_path / "rates.yaml"
    spec.write_text(
        "scenario: s.yaml\nvary:\n  producers.rate: [300/s, 600/s]\n"
        "  consumers.count: 1..2:2\nseeds: 2\ntargets: [sim]\n"
    )
    loaded = load_sweep_file(spec)
    assert [a.path for a in loaded.axes] == ["producers.rate", "consumers.count"]
    out = tmp_path / "out"
    done = brokerlab("sweep", str(spec), "--workers", "1", "--out", str(out), "-q")
    assert done.returncode == 0, done.stderr
    assert "±" in done.stdout and "8 runs (0 reused, 0 failed)" in done.stdout
    table = pd.read_csv(out / SWEEP_CSV)
    assert list(table.columns[:4]) == ["producers.rate", "consumers.count", "seed", "target"]
    assert len(table) == 2 * 2 * 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenario: s.yaml\nvary: {producers.rate: [1/s]}\nseed: 3\n")
    with pytest.raises(SweepError, match="seed: unknown field"):
        load_sweep_file(bad)


def _comparable(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=["run"])


def test_local_cluster_gives_the_serial_numbers(tmp_path: Path) -> None:
    """Two local Dask workers play the points; every number equals the serial sweep's."""
    axes = [parse_vary("producers.rate=300/s..900/s:3"), parse_vary("consumers.count=1,2")]
    serial = run_sweep(small(), axes, seeds=2, out=tmp_path / "serial", workers=1)
    local = run_sweep(small(), axes, seeds=2, out=tmp_path / "local", workers=2)
    assert local.placement.kind == "local" and local.placement.workers == 2
    pd.testing.assert_frame_equal(_comparable(local.table), _comparable(serial.table))
    # the folders hold the same traces too
    for a, b in zip(serial.table["run"], local.table["run"], strict=True):
        assert a == b
        left = pd.read_parquet(tmp_path / "serial" / a / "deliveries.parquet")
        right = pd.read_parquet(tmp_path / "local" / b / "deliveries.parquet")
        pd.testing.assert_frame_equal(left, right)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_cluster_of_separate_processes_gives_the_serial_numbers(tmp_path: Path) -> None:
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1: the sweep's points run
    there (nothing shared but the network), and the table equals the serial one."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    common = ["--no-dashboard"]
    processes = [
        subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), *common],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path,
        )
    ]
    try:
        for name in ("w1", "w2"):
            workdir = tmp_path / name
            workdir.mkdir()
            processes.append(
                subprocess.Popen(
                    [
                        str(BIN / "dask"),
                        "worker",
                        address,
                        "--nworkers",
                        "1",
                        "--nthreads",
                        "1",
                        "--host",
                        "127.0.0.1",
                        "--name",
                        name,
                        "--local-directory",
                        str(workdir),
                        *common,
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    cwd=workdir,
                )
            )
        from dask.distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            assert len(client.scheduler_info()["workers"]) == 2
        axes = [parse_vary("producers.rate=300/s..900/s:3"), parse_vary("consumers.count=1,2")]
        serial = run_sweep(small(), axes, seeds=2, out=tmp_path / "serial", workers=1)
        cluster = run_sweep(small(), axes, seeds=2, out=tmp_path / "cluster", scheduler=address)
        assert cluster.placement.kind == "cluster"
        pd.testing.assert_frame_equal(_comparable(cluster.table), _comparable(serial.table))
        # the workers wrote nothing of the sweep: this process wrote every folder
        assert not list((tmp_path / "w1").rglob("metrics.json"))
        assert len(list((tmp_path / "cluster" / "runs").glob("*/metrics.json"))) == 12
        # $DASK_SCHEDULER_ADDRESS reaches the same cluster from the command line
        scenario = tmp_path / "s.yaml"
        scenario.write_text(json.dumps(small(1000).model_dump(mode="json")))
        done = subprocess.run(
            [str(BIN / "brokerlab"), "sweep", str(scenario), "--vary", "producers.rate=300/s",
             "--out", str(tmp_path / "env"), "-q"],
            env={**env, "DASK_SCHEDULER_ADDRESS": address},
            capture_output=True,
            text=True,
            timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"on the Dask cluster at {address}" in done.stdout
    finally:
        for process in reversed(processes):
            process.terminate()
        deadline = time.monotonic() + 30
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_unreachable_scheduler_is_a_usage_error(tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(json.dumps(small(500).model_dump(mode="json")))
    port = _free_port()
    done = brokerlab(
        "sweep", str(scenario), "--vary", "producers.rate=300/s",
        "--scheduler", f"tcp://127.0.0.1:{port}", "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--scheduler" in done.stderr
    both = brokerlab(
        "sweep", str(scenario), "--vary", "producers.rate=300/s", "--workers", "2",
        "--scheduler", f"tcp://127.0.0.1:{port}",
    )  # fmt: skip
    assert both.returncode == 2 and "give one" in both.stderr


def test_report_of_a_two_dimensional_sweep(tmp_path: Path) -> None:
    """`brokerlab report SWEEP_DIR` writes one self-contained page with the latency, delivered
    and pass/fail figures inline, their PNG/SVG files, and every run linked."""
    out = tmp_path / "sweep"
    axes = [parse_vary("producers.rate=300/s,600/s,950/s"), parse_vary("consumers.count=1,2")]
    run_sweep(small(4000), axes, seeds=2, out=out, workers=1)
    done = brokerlab("report", str(out))
    assert done.returncode == 0, done.stderr
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("<svg") == 3
    assert "<script" not in page and "src=" not in page  # nothing to fetch
    assert "±" in page and "knee" in page
    names = sorted(p.name for p in (out / "figures").iterdir())
    assert names == sorted(
        f"{n}.{e}" for n in ("latency", "delivered", "pass-map-sim") for e in ("png", "svg")
    )
    for run in pd.read_csv(out / SWEEP_CSV)["run"]:
        assert f"href='{run}/'" in page
    # 950/s on one consumer fails the 25 ms p99, two consumers pass everywhere
    assert "0/2" in page and "2/2" in page


def test_knee_of_a_hockey_stick() -> None:
    from brokerlab.app.sweep_figures import knee

    rates = [100, 200, 300, 400, 500, 600, 700, 800, 900]
    p99 = [1 / (1000 - r) for r in rates]  # M/M/1 shape
    assert rates[knee(rates, p99)] in (700, 800)
    assert knee([1, 2, 3], [1, 2, 3]) is None  # a straight line has no knee
    assert knee([1, 2], [1, 5]) is None
