"""`import brokerlab as bl`: the public API as notebooks and scripts use it.

Simulator runs use seeds and a few hundred messages; one test runs a real broker (the lab's own
embedded Redis) through the API, as the CLI tests do.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.figure import Figure

import brokerlab as bl
from brokerlab.core import results
from brokerlab.core.scenario import parse_scenario
from brokerlab.core.trace import DELIVERIES_SCHEMA, SENDS_SCHEMA, TIMELINE_SCHEMA

ROOT = Path(__file__).resolve().parents[1]

SMALL = {
    "name": "small",
    "description": "a few hundred messages through the simulator",
    "producers": {"rate": "500/s", "messages": 400, "keys": 4, "warmup": "0.1s"},
    "broker": {"kind": "redis-streams"},
    "consumers": {"count": 2, "processing": {"dist": "lognormal", "median": "1ms", "p99": "4ms"}},
    "requirements": {"latency": {"end_to_end": {"p99": "1s"}}},
}


@pytest.fixture(autouse=True)
def _no_session_brokers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No `brokers up` session of someone else's is picked up; results stay in tmp_path."""
    monkeypatch.setenv("BROKERLAB_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("BROKERLAB_RESULTS", str(tmp_path / "results"))


@pytest.fixture
def small() -> bl.Scenario:
    return parse_scenario(SMALL, "small.yaml")


@pytest.fixture
def small_file(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(SMALL), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the package


def test_import_brokerlab_stays_cheap_until_the_api_is_used() -> None:
    """`import brokerlab` and the core load no pandas, matplotlib or application; the first API
    name used loads them."""
    code = (
        "import sys, brokerlab, brokerlab.core.scenario, brokerlab.core.units\n"
        "heavy = ('pandas', 'matplotlib', 'brokerlab.app', 'brokerlab.api', 'brokerlab.sim')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "brokerlab.simulate\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = done.stdout.splitlines()
    assert before == "[]"
    assert "'brokerlab.api'" in after and "'pandas'" in after


def test_every_exported_name_is_the_api_s() -> None:
    """bl.X is brokerlab.api.X for every exported name; anything else is an AttributeError."""
    from brokerlab import api

    assert set(bl.__all__) == set(api.__all__)
    for name in bl.__all__:
        assert getattr(bl, name) is getattr(api, name)
    assert "simulate" in dir(bl)
    with pytest.raises(AttributeError, match="no attribute 'simulat'"):
        _ = bl.simulat  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- scenarios


def test_load_finds_a_relative_path_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notebook kernel may run in a temporary folder: repository paths still resolve."""
    monkeypatch.chdir(tmp_path)
    assert bl.load("scenarios/quickstart.yaml").name == "quickstart"
    with pytest.raises(bl.ScenarioError, match=r"no-such\.yaml: no such file"):
        bl.load("no-such.yaml")


def test_with_changes_what_a_what_if_turns(small: bl.Scenario) -> None:
    """Shorthands, dotted paths and paths= change exactly those fields, in a new scenario."""
    fault = {"at": "0.2s", "action": "consumer-crash", "duration": "0.1s", "target": "consumer-3"}
    changed = small.with_(
        rate="1200/s",
        consumers=4,
        processing_mean="2ms",
        faults=[fault],
        paths={"network.delay": "1ms"},
        **{"broker.partitions": 4},
    )
    assert changed.producers.rate == 1200.0
    assert changed.consumers.count == 4
    assert changed.broker.partitions == 4
    assert changed.network.delay.mean == pytest.approx(0.001)
    assert [(f.action, f.target, f.at) for f in changed.faults] == [
        ("consumer-crash", "consumer-3", 0.2)
    ]
    # the processing time is rescaled to the new mean and keeps its lognormal shape
    processing = changed.consumers.processing
    assert processing.dist == "lognormal"
    assert processing.mean == pytest.approx(0.002)
    assert processing.p99 / processing.median == pytest.approx(4.0)
    # the original is untouched; everything not named is kept
    assert small.producers.rate == 500.0 and small.faults == []
    assert changed.producers.keys == 4 and changed.name == "small"


def test_with_messages_and_duration_replace_each_other(small: bl.Scenario) -> None:
    """A scenario says how long with messages or duration: setting one clears the other."""
    timed = small.with_(duration="2s")
    assert (timed.producers.duration, timed.producers.messages) == (2.0, None)
    counted = timed.with_(messages=300)
    assert (counted.producers.duration, counted.producers.messages) == (None, 300)
    with pytest.raises(bl.ScenarioError, match="give 'messages' or 'duration', not both"):
        small.with_(messages=10, duration="1s")


def test_with_a_processing_mean_on_no_processing_time_is_exponential() -> None:
    """A scenario without processing time gets an exponential one with that mean."""
    bare = parse_scenario(
        {"name": "b", "producers": {"rate": 10, "messages": 5}, "broker": {"kind": "nats"}}
    )
    processing = bare.with_(processing_mean="3ms").consumers.processing
    assert processing.dist == "exponential" and processing.mean == pytest.approx(0.003)


@pytest.mark.parametrize(
    ("change", "field", "in_file"),
    [
        ({"rate": "fast"}, "producers.rate", {"producers": {"rate": "fast"}}),
        ({"consumers": 0}, "consumers.count", {"consumers": {"count": 0}}),
        ({"broker.partitionz": 3}, "broker.partitionz", {"broker": {"partitionz": 3}}),
        ({"kind": "kafak"}, "broker.kind", {"broker": {"kind": "kafak"}}),
        (
            {"faults": [{"at": "1s", "action": "explode"}]},
            "faults[0].action",
            {"faults": [{"at": "1s", "action": "explode"}]},
        ),
    ],
)
def test_with_reports_a_bad_value_exactly_as_a_file_does(
    small: bl.Scenario, tmp_path: Path, change: dict, field: str, in_file: dict
) -> None:
    """The same field path and reason as the same mistake in a scenario file."""
    with pytest.raises(bl.ScenarioError) as from_with:
        small.with_(**change)
    data = small.model_dump(mode="json")
    for section, values in in_file.items():
        if isinstance(values, dict):
            data[section].update(values)
        else:
            data[section] = values
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(bl.ScenarioError) as from_file:
        bl.load(path)
    assert from_with.value.problems == from_file.value.problems
    assert [f for f, _ in from_with.value.problems] == [field]
    assert str(from_with.value).startswith("small (with_): " + field + ": ")


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("producers.rate.x", "producers.rate is not a section, so it has no field 'x'"),
        ("faults[0].at", "faults has 0 items, numbered from 0"),
        ("producers[0]", "producers is not a list"),
        ("a..b", "not a field path"),
    ],
)
def test_with_rejects_a_path_that_leads_nowhere(small: bl.Scenario, path: str, reason: str) -> None:
    with pytest.raises(bl.ScenarioError, match="small \\(with_\\): " + path.replace("[", "\\[")):
        small.with_(**{path: 1})
    with pytest.raises(bl.ScenarioError) as error:
        small.with_(paths={path: 1})
    assert reason in str(error.value)


def test_with_a_bad_processing_mean_names_its_field(small: bl.Scenario) -> None:
    with pytest.raises(bl.ScenarioError) as error:
        small.with_(processing_mean="soon")
    assert error.value.problems[0][0] == "consumers.processing.mean"
    assert "'soon' is not a duration" in error.value.problems[0][1]


def test_utilisation_and_describe(small: bl.Scenario) -> None:
    """Utilisation = rate × mean processing ÷ consumers (known answer: 800 × 2 ms ÷ 4 = 0.4)."""
    what_if = small.with_(rate="800/s", consumers=4, processing="2ms")
    assert what_if.utilisation == pytest.approx(0.4)
    table = bl.describe(small, what_if=what_if)
    assert list(table.columns) == ["small", "what_if"]
    assert table.loc["utilisation", "what_if"] == 0.4
    assert table.loc["consumers", "what_if"] == 4
    assert table.loc["offered rate (/s)", "small"] == 500.0
    assert list(bl.describe(small, small).columns) == ["small", "small (2)"]


# --------------------------------------------------------------------------- runs


def test_simulate_stores_a_run_and_returns_it(small: bl.Scenario, tmp_path: Path) -> None:
    """A run folder as `brokerlab run` writes it, and an object that reads the same numbers."""
    run = bl.simulate(small, seed=3)
    assert run.path.parent == tmp_path / "results"  # $BROKERLAB_RESULTS
    assert run.path.name.endswith("-small-sim-s3")
    on_disk = json.loads((run.path / results.METRICS_FILE).read_text())
    assert run.metrics == on_disk
    assert (run.target, run.seed, run.verdict) == ("sim", 3, "pass")
    assert run.info["kind"] == "run" and run.info["target"] == "sim"
    assert run.scenario == small
    assert len(run.sends) == 400 and list(run.sends.columns) == list(SENDS_SCHEMA)
    assert list(run.deliveries.columns) == list(DELIVERIES_SCHEMA)
    assert list(run.timeline.columns) == list(TIMELINE_SCHEMA)
    assert run.wall_time_s is not None and run.wall_time_s >= 0


def test_same_seed_same_numbers(small: bl.Scenario) -> None:
    first, second = bl.simulate(small, seed=5), bl.simulate(small, seed=5)
    assert first.path != second.path
    assert first.metrics == second.metrics
    assert bl.simulate(small, seed=6).metrics["latency_ms"] != first.metrics["latency_ms"]


def test_latencies_are_measured_as_metrics_json_measures_them(small: bl.Scenario) -> None:
    """Per-message latencies after the warm-up give metrics.json's count, max and p50."""
    run = bl.simulate(small, seed=2)
    latencies = run.latencies
    assert len(latencies) == 400
    assert list(latencies.columns) == [
        "msg_id",
        "t_intended",
        "end_to_end_ms",
        "completion_ms",
        "publish_ms",
        "publish_delay_ms",
        "warmup",
    ]
    counted = latencies[~latencies["warmup"]]
    assert (counted["t_intended"] >= 0.1).all() and (latencies["warmup"]).any()
    end_to_end = run.metrics["latency_ms"]["end_to_end"]
    assert counted["end_to_end_ms"].notna().sum() == end_to_end["count"]
    assert counted["end_to_end_ms"].max() == pytest.approx(end_to_end["max"], abs=0.01)
    assert counted["completion_ms"].median() == pytest.approx(
        run.metrics["latency_ms"]["completion"]["p50"], rel=0.02
    )


def test_tables_of_a_run(small: bl.Scenario) -> None:
    run = bl.simulate(small, seed=1)
    summary = run.summary()
    assert list(summary.columns) == ["sim"]
    assert summary.loc["sent", "sim"] == 400 and summary.loc["verdict", "sim"] == "pass"
    table = run.latency_table()
    assert list(table.index) == ["end_to_end", "completion", "publish", "publish_delay"]
    assert table.loc["end_to_end", "p99"] == run.metrics["latency_ms"]["end_to_end"]["p99"]
    requirements = run.requirements
    assert "end_to_end p99" in requirements.index
    assert bool(requirements.loc["end_to_end p99", "ok"]) is True


def test_plots_return_the_report_s_figures(small: bl.Scenario) -> None:
    run = bl.simulate(
        small.with_(
            faults=[
                {
                    "at": "0.3s",
                    "action": "consumer-crash",
                    "duration": "0.2s",
                    "target": "consumer-0",
                }
            ]
        ),
        seed=1,
    )
    spectrum = run.plot.latency_spectrum(["end_to_end", "completion"])
    assert isinstance(spectrum, Figure)
    assert [t.get_text() for t in spectrum.axes[0].get_legend().get_texts()] == [
        "end-to-end",
        "completion",
    ]
    for figure in (
        run.plot.latency_cdf(),
        run.plot.throughput(),
        run.plot.backlog(),
        run.plot.delivery_counts(),
    ):
        assert isinstance(figure, Figure) and figure.axes
    assert [w.action for w in run.faults] == ["consumer-crash"]
    with pytest.raises(ValueError, match="unknown latency kind 'e2e'"):
        run.plot.latency_spectrum("e2e")


def test_rich_view_shows_the_verdict_and_escapes_user_text(small: bl.Scenario) -> None:
    run = bl.simulate(small.with_(name="<script>x</script>"), seed=1)
    page = run._repr_html_()
    assert "&lt;script&gt;" in page and "<script>" not in page
    assert ">pass</b>" in page and "end_to_end p99 ms" in page
    assert str(run.path).split("/")[-1] in page


def test_open_reads_a_run_back_as_it_was(small: bl.Scenario) -> None:
    """Nothing re-runs: the same metrics, trace, scenario and fault windows from disk."""
    run = bl.simulate(
        small.with_(
            faults=[
                {
                    "at": "0.3s",
                    "action": "consumer-crash",
                    "duration": "0.2s",
                    "target": "consumer-1",
                }
            ]
        ),
        seed=4,
    )
    opened = bl.open(run.path)
    assert isinstance(opened, bl.RunResult)
    assert opened.metrics == run.metrics
    assert opened.scenario == run.scenario
    for name in ("sends", "deliveries", "timeline", "latencies"):
        pd.testing.assert_frame_equal(getattr(opened, name), getattr(run, name))
    assert [(w.action, w.target) for w in opened.faults] == [("consumer-crash", "consumer-1")]
    assert opened.faults[0].t_start == pytest.approx(run.faults[0].t_start)


def test_a_scenario_file_runs_and_is_recorded(small_file: Path) -> None:
    run = bl.run(small_file, "sim", seed=1)
    assert run.info["scenario_file"] == str(small_file)
    assert run.info["seed"] == 1


def test_user_mistakes_raise_clear_errors(small: bl.Scenario, tmp_path: Path) -> None:
    with pytest.raises(bl.TargetError, match="unknown target 'sqs'"):
        bl.run(small, "sqs")  # a kind the simulator plays, not a real target
    with pytest.raises(bl.OpenError, match="no such folder"):
        bl.open(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(bl.OpenError, match="not a run folder"):
        bl.open(tmp_path / "empty")
    with pytest.raises(bl.SelectionError, match="unknown candidates"):
        bl.select(small, ["kafak"], real=False)
    with pytest.raises(bl.ReportError, match="not a run or comparison folder"):
        bl.report(tmp_path / "empty")
    with pytest.raises(TypeError, match="expected a Scenario or a scenario file"):
        bl.simulate(42)  # type: ignore[arg-type]
    assert not list((tmp_path / "results").glob("*")) or all(
        (p / results.METRICS_FILE).exists() for p in (tmp_path / "results").iterdir()
    )


# --------------------------------------------------------------------------- several runs


def test_compare_keeps_going_past_a_failing_target(small: bl.Scenario) -> None:
    """A broken target is an error in the comparison, not an exception; the others ran."""
    comparison = bl.compare(small, ["sim", "carrier-pigeon"], seed=1)
    assert isinstance(comparison, bl.Comparison)
    assert list(comparison) == ["sim"]
    assert "unknown target 'carrier-pigeon'" in comparison.errors["carrier-pigeon"]
    assert comparison["sim"].path == comparison.path / "sim"
    assert list(comparison.summary().columns) == ["sim"]
    assert comparison.metrics["sim"]["counts"]["sent"] == 400
    page = comparison._repr_html_()
    assert "comparison" in page and "carrier-pigeon did not run" in page
    opened = bl.open(comparison.path)
    assert isinstance(opened, bl.Comparison)
    assert list(opened) == ["sim"] and opened.errors == comparison.errors
    pd.testing.assert_frame_equal(opened.summary(), comparison.summary())


def test_runs_side_by_side_and_by_load(small: bl.Scenario, tmp_path: Path) -> None:
    """A hand-made sweep: runs at three rates, grouped in one folder, tabled and drawn."""
    folder = bl.results_folder("small-sweep")
    assert folder.parent == tmp_path / "results" and folder.name.endswith("-small-sweep")
    assert bl.results_folder("small-sweep") != folder
    sweep = bl.Runs(
        {
            rate: bl.simulate(small.with_(rate=rate), seed=1, out=folder / rate.replace("/", ""))
            for rate in ("300/s", "600/s", "900/s")
        }
    )
    assert list(sweep) == ["300/s", "600/s", "900/s"]
    assert sweep["600/s"].label == "600/s"
    table = sweep.load_table()
    assert list(table.index) == ["300/s", "600/s", "900/s"]
    assert table["offered /s"].tolist() == pytest.approx([300, 600, 900], rel=0.15)
    mean = small.consumers.processing.mean
    assert table["utilisation"].tolist() == pytest.approx(
        [round(r * mean / 2, 3) for r in (300, 600, 900)]
    )
    assert list(sweep.summary().columns) == ["300/s", "600/s", "900/s"]
    assert list(bl.Runs([sweep["300/s"], sweep["600/s"]])) == ["300/s", "600/s"]
    unlabelled = [bl.open(sweep["300/s"].path), bl.open(sweep["600/s"].path)]
    assert list(bl.Runs(unlabelled)) == ["sim", "sim (2)"]
    figure = sweep.plot.latency_by_load()
    assert isinstance(figure, Figure)
    assert len(figure.axes[0].lines[0].get_xdata()) == 3
    spectrum = sweep.plot.latency_spectrum()
    assert [t.get_text() for t in spectrum.axes[0].get_legend().get_texts()] == list(sweep)


def test_select_ranks_candidates_and_opens_again(small: bl.Scenario) -> None:
    """Simulated candidates: a ranking, its evidence side by side, the margin chart."""
    selection = bl.select(small, ["kafka", "rabbitmq"], real=False, seed=1)
    assert isinstance(selection, bl.Selection)
    assert sorted(selection.ranking["candidate"]) == ["kafka", "rabbitmq"]
    assert selection.best == selection.ranking["candidate"].iloc[0]
    assert selection.summary() is selection.ranking
    assert set(selection.runs) == {"kafka", "rabbitmq"}
    assert selection.metrics["kafka"]["target"] == "sim"
    side = selection.side_by_side()
    assert list(side.columns) == list(selection.ranking["candidate"])
    assert side.map(lambda v: str(v)[:1] in "✓✗?").all().all()
    assert isinstance(selection.plot.margins(), Figure)
    assert "worst_margin" in selection._repr_html_()
    opened = bl.open(selection.path)
    assert isinstance(opened, bl.Selection)
    assert list(opened.ranking["candidate"]) == list(selection.ranking["candidate"])
    assert opened.scenario == "small"


def test_report_of_runs_comparisons_and_selections(small: bl.Scenario, tmp_path: Path) -> None:
    comparison = bl.compare(small, ["sim"], seed=1)
    written = bl.report(comparison)
    assert written.path == comparison.path / "report.html"
    assert "<svg" in written.path.read_text(encoding="utf-8")
    assert written.figures and all(p.suffix == ".png" for p in written.figures)
    assert all(p.with_suffix(".svg").is_file() for p in written.figures)
    selection = bl.select(small, ["kafka", "sqs"], real=False, seed=1)
    elsewhere = bl.report(selection, output=tmp_path / "out" / "sel.html")
    page = elsewhere.path.read_text(encoding="utf-8")
    assert elsewhere.path == tmp_path / "out" / "sel.html"
    assert "kafka" in page and "sqs" in page
    assert "sel.html" in elsewhere._repr_html_()


# --------------------------------------------------------------------------- sweep, capacity

#: 1000/s with a constant 2.5 ms of work per message: 2.5 consumers' worth of work, so two
#: cannot keep up (at most 800/s) and three can: the fewest is 3, by arithmetic.
SIZING = {
    "name": "sizing",
    "seed": 3,
    "producers": {"rate": "1000/s", "messages": 1500},
    "broker": {"kind": "redis-streams", "profile": "none"},  # the arithmetic's ideal broker
    "consumers": {"count": 1, "processing": "2.5ms"},
    "requirements": {"latency": {"end_to_end": {"p99": "200ms"}}},
}


def test_sweep_plays_every_point_and_opens_again(small: bl.Scenario, tmp_path: Path) -> None:
    """A list of values × two seeds: one run per point and seed, a summary with a confidence
    interval, each point's run by its value, the sweep figures, and bl.open reads it back."""
    sweep = bl.sweep(small, {"consumers.count": [1, 2]}, seeds=2, workers=1, out=tmp_path / "sw")
    assert isinstance(sweep, bl.Sweep) and sweep.path == tmp_path / "sw"
    assert sweep.paths == ["consumers.count"] and sweep.seeds == [small.seed, small.seed + 1]
    assert list(sweep.table["consumers.count"]) == [1, 1, 2, 2] and sweep.errors.empty
    summary = sweep.summary()
    assert list(summary["consumers.count"]) == [1, 2] and list(summary["seeds"]) == [2, 2]
    p99 = "latency_ms.end_to_end.p99"
    one = sweep.table[sweep.table["consumers.count"] == 1][p99]
    assert summary[p99].iloc[0] == pytest.approx(one.mean())
    assert summary[f"{p99} ±95%"].iloc[0] == pytest.approx(12.706 * one.std() / math.sqrt(2))
    run = sweep.run(2, seed=small.seed + 1)
    assert run.scenario.consumers.count == 2 and run.seed == small.seed + 1
    row = sweep.table[(sweep.table["consumers.count"] == 2) & (sweep.table["seed"] == run.seed)]
    assert run.metrics["latency_ms"]["end_to_end"]["p99"] == pytest.approx(row[p99].iloc[0])
    assert len(sweep.runs) == 4 and sweep.runs.metrics
    with pytest.raises(KeyError, match="no point"):
        sweep.run(7)
    figure = sweep.plot.latency_vs_load()
    assert isinstance(figure, Figure)
    assert any(line.get_label() == "p99 bound 1000 ms" for line in figure.axes[0].lines)
    assert isinstance(sweep.plot.delivered_vs_offered(), Figure)
    with pytest.raises(ValueError, match="two varied fields"):
        sweep.plot.pass_fail_map()
    assert "sweep" in sweep._repr_html_() and "consumers.count" in sweep._repr_html_()
    opened = bl.open(sweep.path)
    assert isinstance(opened, bl.Sweep) and opened.paths == sweep.paths
    pd.testing.assert_frame_equal(opened.summary(), summary)


def test_sweep_takes_ranges_as_the_cli_writes_them(small: bl.Scenario, tmp_path: Path) -> None:
    """ "START..STOP:N" strings, two fields: a grid, and its pass/fail map."""
    sweep = bl.sweep(
        small,
        {"producers.rate": "400/s..800/s:2", "consumers.count": "1,2"},
        workers=1,
        out=tmp_path / "grid",
    )
    assert sweep.points == 4 and len(sweep.table) == 4
    assert sorted(set(sweep.table["producers.rate"])) == [400.0, 800.0]
    assert sweep.run({"producers.rate": 800, "consumers.count": 1}).scenario.producers.rate == 800
    assert isinstance(sweep.plot.pass_fail_map(), Figure)


def test_sweep_and_capacity_refuse_bad_input_before_writing(
    small: bl.Scenario, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with pytest.raises(bl.SweepError, match="at least one field path"):
        bl.sweep(small, {}, out=out)
    with pytest.raises(bl.SweepError, match="not a field path"):
        bl.sweep(small, {"consumers count": [1]}, out=out)
    with pytest.raises(bl.SweepError, match=r"producers\.rat"):
        bl.sweep(small, {"producers.rat": [1, 2]}, out=out, workers=1)
    with pytest.raises(bl.SweepError, match=r"targets: unknown \['kafak'\]"):
        bl.sweep(small, {"consumers.count": [1]}, targets="kafak", out=out)
    with pytest.raises(bl.CapacityError, match="--find"):
        bl.capacity(small, "speed", out=out)
    with pytest.raises(bl.CapacityError, match="needs how long"):
        bl.capacity(small, "catch-up", out=out)
    with pytest.raises(bl.CapacityError, match="outage: 'soon' is not a duration"):
        bl.capacity(small, "catch-up", outage="soon", out=out)
    assert not out.exists()


def test_capacity_answer_is_the_cli_s_and_the_arithmetic(tmp_path: Path) -> None:
    """Known answer: 1000/s of 2.5 ms work needs 3 consumers; bl.capacity says so, in the very
    line `brokerlab capacity` writes for the same file, and bl.open reads either folder."""
    path = tmp_path / "sizing.yaml"
    path.write_text(yaml.safe_dump(SIZING), encoding="utf-8")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "brokerlab"), "capacity", str(path), "--find",
         "consumers", "--seeds", "1", "--workers", "1", "--out", str(tmp_path / "cli"), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer = bl.capacity(path, "consumers", seeds=1, workers=1, out=tmp_path / "api")
    assert isinstance(answer, bl.Capacity) and answer.find == "consumers"
    assert answer.value == 3
    cli = json.loads((tmp_path / "cli" / "capacity.json").read_text(encoding="utf-8"))
    assert answer.value == cli["value"] and answer.answer == cli["answer"]
    assert answer.answer in done.stdout
    points = answer.points
    assert list(points["value"]) == [p["value"] for p in cli["points"]]
    assert points.set_index("value").loc[3, "meets"]
    assert not points.set_index("value").loc[2, "meets"]
    assert "keep up" in points.set_index("value").loc[2, "why not"]
    assert all(r.scenario.consumers.count in set(points["value"]) for r in answer.runs.values())
    opened = bl.open(tmp_path / "cli")
    assert isinstance(opened, bl.Capacity) and opened.value == 3 and opened.answer == answer.answer
    assert answer.answer in answer._repr_html_()
    with pytest.raises(ValueError, match="no catch-up figure"):
        answer.plot.catch_up()


def test_capacity_catch_up_has_its_figure(tmp_path: Path) -> None:
    """Three consumers for 2.5 consumers' worth of work: after a 1 s outage the lag drains at
    about 200/s against a 1000-message backlog, so it is back within seconds; the figure is
    drawn again from the stored run."""
    sized = parse_scenario({**SIZING, "consumers": {"count": 3, "processing": "2.5ms"}})
    answer = bl.capacity(sized, "catch-up", outage="1s", seeds=1, workers=1, out=tmp_path / "c")
    assert answer.find == "catch-up" and answer.value is not None
    assert 1.0 < answer.value < 15.0
    assert answer.points["worst catch-up s"].iloc[-1] == pytest.approx(answer.value, abs=1e-3)
    figure = answer.plot.catch_up()
    assert isinstance(figure, Figure) and "consumer lag" in figure.axes[0].get_title()
    assert answer.figures and bl.open(answer.path).value == answer.value


# --------------------------------------------------------------------------- a real broker


@pytest.mark.parametrize("page", ["README.md", "docs/api.md"])
def test_the_documented_example_runs(page: str, tmp_path: Path) -> None:
    """The first Python example of the page runs as written (a real Redis included)."""
    text = (ROOT / page).read_text(encoding="utf-8")
    example = re.search(r"```python\n(.+?)```", text, re.S)
    assert example, f"{page} lost its example"
    namespace: dict[str, object] = {}
    exec(compile(example.group(1), page, "exec"), namespace)
    made = [p for p in (tmp_path / "results").iterdir() if p.is_dir()]
    assert len(made) == 2  # the simulated run and the comparison
    assert all((p / results.RUN_FILE).is_file() for p in made)


def test_run_on_a_real_broker_through_the_api(small: bl.Scenario) -> None:
    """The lab starts its own Redis, runs the scenario, stops it: the same result object."""
    run = bl.run(small.with_(rate="300/s", messages=300), "redis-streams", seed=1)
    assert run.target == "redis-streams" and run.info["target"] == "redis-streams"
    counts = run.metrics["counts"]
    assert counts["sent"] == counts["delivered"] == 300 and counts["lost"] == 0
    latencies = run.latencies
    assert latencies["end_to_end_ms"].notna().all()
    assert (latencies["publish_ms"].dropna() > 0).all()
    assert run.scenario.broker.kind == "redis-streams"
    opened = bl.open(run.path)
    assert opened.metrics == run.metrics
    assert not math.isnan(float(np.nanmax(opened.latencies["end_to_end_ms"])))
