"""The `brokerlab` command as users run it: results folders, exit codes, summaries, listings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from brokerlab.core import results
from brokerlab.core.trace import DELIVERIES_SCHEMA, SENDS_SCHEMA, TIMELINE_SCHEMA
from brokerlab.core.vocabulary import VERDICTS

ROOT = Path(__file__).resolve().parent.parent

SMALL = """
name: small
description: a few hundred messages through the simulator
producers: {rate: 500/s, messages: 400, keys: 4}
broker: {kind: redis-streams}
consumers: {count: 2, processing: {dist: exponential, mean: 1ms}}
requirements:
  latency: {end_to_end: {p99: 1s}}
"""

METRIC_KEYS = {
    "target",
    "scenario",
    "seed",
    "duration_s",
    "counts",
    "latency_ms",
    "throughput_per_s",
    "requirements",
    "verdict",
}


def brokerlab(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the installed console command the way a user does."""
    return subprocess.run(
        [sys.executable, "-m", "brokerlab.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL, encoding="utf-8")
    return path


def test_run_sim_writes_a_complete_results_folder(tmp_path: Path, small: Path) -> None:
    """`run --target sim` writes scenario, trace, metrics and provenance under results/RUN_ID/."""
    done = brokerlab("run", str(small), "--target", "sim", "--seed", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (folder,) = (tmp_path / "results").iterdir()
    assert re.fullmatch(r"\d{8}-\d{6}-small-sim-s3", folder.name)
    names = {p.name for p in folder.iterdir()}
    assert names == {
        "scenario.yaml",
        "sends.parquet",
        "deliveries.parquet",
        "timeline.parquet",
        "metrics.json",
        "run.json",
    }
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics) == METRIC_KEYS
    assert metrics["counts"]["sent"] == 400 and metrics["counts"]["lost"] == 0
    assert metrics["seed"] == 3 and metrics["target"] == "sim"
    run = json.loads((folder / "run.json").read_text())
    assert run["seed"] == 3 and run["wall_time_s"] > 0 and run["host"]["hostname"]
    assert run["versions"]["simpy"] != "not installed"
    sends = pd.read_parquet(folder / "sends.parquet")
    assert list(sends.columns) == list(SENDS_SCHEMA)
    assert list(pd.read_parquet(folder / "deliveries.parquet").columns) == list(DELIVERIES_SCHEMA)
    assert list(pd.read_parquet(folder / "timeline.parquet").columns) == list(TIMELINE_SCHEMA)
    assert "verdict" in done.stdout and "end_to_end" in done.stdout


def test_run_out_dir_is_exact_and_never_overwritten(tmp_path: Path, small: Path) -> None:
    """`--out DIR` writes exactly there; a second run into the same DIR is refused with exit 2."""
    out = tmp_path / "exact"
    first = brokerlab("run", str(small), "--out", str(out), "-q", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = (out / "metrics.json").read_bytes()
    second = brokerlab("run", str(small), "--out", str(out), "-q", cwd=tmp_path)
    assert second.returncode == 2
    assert "never overwrite" in second.stderr
    assert (out / "metrics.json").read_bytes() == before


def test_two_runs_get_two_folders(tmp_path: Path, small: Path) -> None:
    """Runs started in the same second still get their own folders."""
    for _ in range(2):
        assert brokerlab("run", str(small), "-q", cwd=tmp_path).returncode == 0
    assert len(list((tmp_path / "results").iterdir())) == 2


def test_same_seed_same_metrics(tmp_path: Path, small: Path) -> None:
    """The simulator reproduces: the same seed gives identical metrics and traces."""
    for name in ("a", "b"):
        done = brokerlab(
            "run", str(small), "--seed", "9", "--out", str(tmp_path / name), "-q", cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a == b
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "a" / "deliveries.parquet"),
        pd.read_parquet(tmp_path / "b" / "deliveries.parquet"),
    )


def test_bad_scenario_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    """A scenario error is reported with file and field, exit 2, and no results folder appears."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMALL.replace("500/s", "fast"), encoding="utf-8")
    done = brokerlab("run", str(bad), cwd=tmp_path)
    assert done.returncode == 2
    assert f"{bad}: producers.rate:" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "results").exists()


def test_unknown_target_exits_2(tmp_path: Path, small: Path) -> None:
    """A target the lab does not know is a usage error naming the known ones."""
    done = brokerlab("run", str(small), "--target", "kafkaesque", cwd=tmp_path)
    assert done.returncode == 2
    assert "redis-streams" in done.stderr


def test_a_bad_process_count_in_the_environment_exits_2(tmp_path: Path, small: Path) -> None:
    """``BROKERLAB_WORKERS`` decides how many processes play a real run's clients and the
    simulator's twin of it: a value that is no process count is an input error, before
    anything runs or is written."""
    done = brokerlab("run", str(small), cwd=tmp_path, env={"BROKERLAB_WORKERS": "zero"})
    assert done.returncode == 2
    assert "BROKERLAB_WORKERS='zero'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "results").exists()


def test_failed_run_leaves_nothing_half_written(tmp_path: Path) -> None:
    """A target that fails mid-run exits 1 with a message and leaves no results folder."""
    scenario = tmp_path / "real.yaml"
    scenario.write_text(SMALL, encoding="utf-8")
    # Nothing listens on port 1: the real target fails to connect.
    done = brokerlab(
        "run",
        str(scenario),
        "--target",
        "redis-streams",
        "--redis-url",
        "redis://127.0.0.1:1",
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr
    assert "brokerlab failed" in done.stderr
    results_dir = tmp_path / "results"
    assert not results_dir.exists() or not any(results_dir.iterdir())


def test_list_shows_scenarios_and_runs(tmp_path: Path, small: Path) -> None:
    """`list` shows scenario files and each run with scenario, target and verdict."""
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "small.yaml").write_text(SMALL, encoding="utf-8")
    assert brokerlab("run", str(small), "-q", cwd=tmp_path).returncode == 0
    listing = brokerlab("list", cwd=tmp_path)
    assert listing.returncode == 0
    assert "scenarios/small.yaml" in listing.stdout
    (run,) = results.list_runs(tmp_path / "results")
    assert run.scenario == "small" and run.target == "sim" and run.verdict in VERDICTS
    assert run.run_id in listing.stdout


def test_readme_main_command_runs(tmp_path: Path) -> None:
    """The README's main command works from the repository root (its venv already exists in CI)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- main-command -->", 1)[1]
    command = re.search(r"```bash\n(.*?)\n```", block, re.S).group(1).strip()
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "BROKERLAB_RESULTS": str(tmp_path / "results")},
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (comparison,) = (tmp_path / "results").iterdir()
    assert (comparison / "report.html").is_file()
    table = pd.read_csv(comparison / "comparison.csv", index_col="metric")
    # each real target beside its simulator twin (its kind, its performance profile)
    assert list(table.columns) == [
        "sim:redis-streams",
        "redis-streams",
        "sim:nats",
        "nats",
        "sim:nats-jetstream",
        "nats-jetstream",
    ]
    assert (table.loc["lost"].astype(int) == 0).all()
    assert "report:" in done.stdout


def test_brokers_up_status_down(tmp_path: Path) -> None:
    """`brokers up` starts live servers that `status` reports and `down` stops, leaving none."""
    import psutil

    from brokerlab.adapters.embedded import brokers_status

    env = {"BROKERLAB_STATE": str(tmp_path / "state")}
    up = brokerlab("brokers", "up", "--targets", "redis-streams,nats", cwd=tmp_path, env=env)
    assert up.returncode == 0, up.stderr
    entries = brokers_status(tmp_path / "state")
    pids = [entry["pid"] for entry in entries]
    assert {entry["kind"] for entry in entries} == {"redis", "nats"}
    assert all(entry["alive"] for entry in entries)
    status = brokerlab("brokers", "status", cwd=tmp_path, env=env)
    assert status.returncode == 0 and status.stdout.count("alive") == 2
    down = brokerlab("brokers", "down", cwd=tmp_path, env=env)
    assert down.returncode == 0, down.stderr
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert brokers_status(tmp_path / "state") == []


def test_a_killed_run_leaves_no_broker_and_no_result(tmp_path: Path) -> None:
    """SIGKILL of `brokerlab run` mid-run takes its broker down; the next run clears the debris."""
    import signal
    import time

    import psutil

    scenario = tmp_path / "long.yaml"
    scenario.write_text(SMALL.replace("messages: 400", "duration: 60s"), encoding="utf-8")
    lab = subprocess.Popen(
        [sys.executable, "-m", "brokerlab.cli", "run", str(scenario), "-t", "redis-streams", "-q"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    brokers: list[psutil.Process] = []
    deadline = time.monotonic() + 60
    while not brokers and time.monotonic() < deadline:
        time.sleep(0.2)
        brokers = [
            p
            for p in psutil.Process(lab.pid).children(recursive=True)
            if "redis-server" in p.name()
        ]
    assert brokers, "the run never started its broker"
    time.sleep(2)  # mid-run: the load is flowing
    lab.send_signal(signal.SIGKILL)
    lab.wait(timeout=30)
    deadline = time.monotonic() + 15
    alive = brokers
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"brokers outlived the lab: {alive}"
    results_dir = tmp_path / "results"
    assert [p.name for p in results_dir.iterdir() if not p.name.startswith(".")] == []
    assert list(results_dir.glob(".*.partial-*")), "a killed run leaves only its hidden stage"
    small = tmp_path / "small.yaml"
    small.write_text(SMALL, encoding="utf-8")
    assert brokerlab("run", str(small), "-q", cwd=tmp_path).returncode == 0
    assert not list(results_dir.glob(".*.partial-*")), "the killed run's staging folder remains"


def _scenario_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_check_turns_the_verdict_into_the_exit_code(tmp_path: Path, small: Path) -> None:
    """`run --check`: 0 pass, 3 fail, 4 inconclusive; without --check a finished run exits 0."""
    failing = _scenario_file(tmp_path, "failing", SMALL.replace("p99: 1s", "p99: 1us"))
    # warm-up longer than the run: no latency sample to hold the p99 bound against
    blind = _scenario_file(tmp_path, "blind", SMALL.replace("keys: 4}", "keys: 4, warmup: 5s}"))
    assert brokerlab("run", str(small), "-q", "--check", cwd=tmp_path).returncode == 0
    assert brokerlab("run", str(failing), "-q", cwd=tmp_path).returncode == 0
    failed = brokerlab("run", str(failing), "-q", "--check", cwd=tmp_path)
    assert failed.returncode == 3, failed.stderr
    assert "verdict: fail (not met: end_to_end p99)" in failed.stdout
    unsure = brokerlab("run", str(blind), "-q", "--check", cwd=tmp_path)
    assert unsure.returncode == 4, unsure.stderr
    assert (
        "verdict: inconclusive (cannot tell: end_to_end p99: no message intended after warm-up "
        "was delivered)" in unsure.stdout
    )
    assert "cannot tell" in unsure.stdout  # the requirement's row says it too
    listing = brokerlab("list", cwd=tmp_path)
    assert {run.verdict for run in results.list_runs(tmp_path / "results")} == {
        "pass",
        "fail",
        "inconclusive",
    }
    assert "inconclusive" in listing.stdout


def test_compare_check_exits_with_the_worst_verdict(tmp_path: Path) -> None:
    """`compare --check`: 3 when a target's verdict is fail, 4 when one is inconclusive, and the
    inconclusive target's reason is printed under the table."""
    failing = _scenario_file(tmp_path, "failing", SMALL.replace("p99: 1s", "p99: 1us"))
    blind = _scenario_file(tmp_path, "blind", SMALL.replace("keys: 4}", "keys: 4, warmup: 5s}"))
    flags = ("--targets", "sim", "--no-report", "-q", "--check")
    assert brokerlab("compare", str(failing), *flags, cwd=tmp_path).returncode == 3
    unsure = brokerlab("compare", str(blind), *flags, cwd=tmp_path)
    assert unsure.returncode == 4, unsure.stderr
    assert "sim: verdict: inconclusive (cannot tell: end_to_end p99" in unsure.stdout
    assert brokerlab("compare", str(blind), *flags[:-1], cwd=tmp_path).returncode == 0


def test_worst_verdict_decides_fail_before_inconclusive() -> None:
    """Several verdicts give one exit code: any fail 3, else any inconclusive 4, else 0."""
    from brokerlab.cli import _verdict_exit

    assert _verdict_exit(["pass", "inconclusive", "fail"]) == 3
    assert _verdict_exit(["inconclusive", "pass"]) == 4
    assert _verdict_exit(["pass", "pass"]) == 0


BROKER_DOWN = """
name: broker-down
producers: {count: 1, rate: 200/s, duration: 3s, arrival: constant, publish_timeout: 200ms}
broker: {kind: redis-streams}
consumers: {count: 1, processing: 1ms}
faults:
  - {at: 0s, action: broker-kill, duration: 10s}
requirements: {max_lost: 0}
drain_timeout: 2s
"""


def test_a_broker_down_for_the_whole_run_is_inconclusive(tmp_path: Path) -> None:
    """Real Redis killed at t=0 and not back before the end: all 600 publishes fail, nothing is
    acknowledged or delivered. Before: verdict pass (0 lost of 0 promised); now inconclusive,
    exit 4 with --check, and the summary says why."""
    scenario = _scenario_file(tmp_path, "down", BROKER_DOWN)
    done = brokerlab("run", str(scenario), "-t", "redis-streams", "-q", "--check", cwd=tmp_path)
    assert done.returncode == 4, done.stdout[-3000:] + done.stderr[-3000:]
    (folder,) = (tmp_path / "results").iterdir()
    metrics = json.loads((folder / "metrics.json").read_text())
    counts = metrics["counts"]
    assert (counts["sent"], counts["acked"], counts["unique"]) == (600, 0, 0)
    assert counts["failed"] + counts["unknown"] == 600
    assert metrics["verdict"] == "inconclusive"
    (max_lost,) = metrics["requirements"]
    assert (max_lost["name"], max_lost["measured"], max_lost["ok"]) == ("max_lost", None, None)
    assert max_lost["note"].startswith("nothing was acknowledged")
    assert "verdict: inconclusive (cannot tell: max_lost: nothing was acknowledged" in done.stdout


ACK_BEFORE_CRASH = """
name: ack-before-crash
producers: {count: 1, rate: 25/s, duration: 5s, arrival: constant}
broker: {kind: redis-streams, ack_timeout: 1s}
consumers: {count: 1, processing: 20ms, prefetch: 10, ack: before}
faults:
  - {at: 1.5s, action: consumer-crash, target: consumer-0, duration: 0.5s}
  - {at: 3.5s, action: consumer-crash, target: consumer-0, duration: 0.5s}
requirements: {max_lost: 0}
drain_timeout: 6s
"""
# A batch of 10 takes 200 ms to process and well under 1 ms to XACK: a crash that lands in the
# XACK leaves the batch unacked (redelivered, not unprocessed), so two crashes make sure at least
# one lands while acked messages are being processed.


def test_ack_before_and_a_consumer_crash_fail_max_lost_on_real_redis(tmp_path: Path) -> None:
    """Real Redis Streams, ack before processing, the consumer crashes holding its prefetched
    batch: those messages were XACKed, so nobody reclaims them. Before: lost 0, pass; now
    unprocessed > 0 counts against max_lost: 0, verdict fail, exit 3 with --check."""
    scenario = _scenario_file(tmp_path, "crash", ACK_BEFORE_CRASH)
    done = brokerlab("run", str(scenario), "-t", "redis-streams", "-q", "--check", cwd=tmp_path)
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
    (folder,) = (tmp_path / "results").iterdir()
    metrics = json.loads((folder / "metrics.json").read_text())
    counts = metrics["counts"]
    assert counts["lost"] == 0 and 0 < counts["unprocessed"] <= 20
    (max_lost,) = metrics["requirements"]
    assert max_lost["measured"] == counts["unprocessed"] and max_lost["ok"] is False
    assert metrics["verdict"] == "fail"
