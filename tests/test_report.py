"""The HTML report: one self-contained file with the verdict, figures, sim vs real and provenance.

Run folders come from the library itself (``run_scenario`` and ``compare``) with a tiny scenario:
the simulator and an embedded NATS server, so the report is tested on what users really get.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from xml.etree import ElementTree

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib import image
from matplotlib.figure import Figure

from brokerlab.app import figures, runner
from brokerlab.app.compare import ComparisonRecord, compare
from brokerlab.app.report import (
    SECTIONS as REPORT_SECTIONS,
)
from brokerlab.app.report import (
    Badge,
    ReportError,
    build_report,
    relative_error,
    undecided,
    verdict_badge,
)
from brokerlab.app.runner import RunOptions, RunRecord, run_scenario
from brokerlab.cli import main
from brokerlab.core import results
from brokerlab.core.scenario import Scenario, parse_scenario
from brokerlab.core.trace import FaultWindow, TargetResult, Trace, build_timeline

SMALL = {
    "name": "small",
    "description": "a few hundred messages <script>alert('x')</script> & more",
    "producers": {"rate": "500/s", "messages": 400, "keys": 4},
    "broker": {"kind": "nats"},
    "consumers": {"count": 2, "processing": {"dist": "exponential", "mean": "1ms"}},
    "requirements": {
        "throughput": "400/s",
        "latency": {"end_to_end": {"p99": "1s"}},
        "max_duplicates": 0,
        "replay": True,
    },
}
SECTIONS = (
    "summary",
    "verdict",
    "latency",
    "throughput",
    "delivery",
    "sim-vs-real",
    "scenario",
    "environment",
)
PAUSE = FaultWindow("broker-pause", "broker", 0.2, 0.35)


def _paused_sim(scenario: Scenario, seed: int, workdir: Path, options: RunOptions) -> TargetResult:
    """The simulator's run with a broker pause recorded, until sim/ injects faults itself."""
    from brokerlab.sim import simulate

    # the runner names a non-sim target's broker kind after the target; the model needs a real kind
    broker = scenario.broker.model_copy(update={"kind": SMALL["broker"]["kind"]})
    result = simulate(scenario.model_copy(update={"broker": broker}), seed)
    sends, deliveries = result.trace.sends, result.trace.deliveries
    timeline = build_timeline(sends, deliveries, [PAUSE])
    return TargetResult(Trace(sends, deliveries, timeline), [PAUSE], result.info, result.warnings)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> ComparisonRecord:
    """One scenario on the simulator and on a real (embedded) NATS server."""
    scenario = parse_scenario(SMALL)
    results_dir = tmp_path_factory.mktemp("results")
    record = compare(scenario, ["sim", "nats"], RunOptions(seed=3, results_dir=results_dir))
    assert not record.errors, record.errors
    return record


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory: pytest.TempPathFactory) -> RunRecord:
    """A simulated run folder whose run.json and timeline carry a fault window."""
    scenario = parse_scenario({**SMALL, "name": "paused"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(runner.TARGETS, "sim-paused", _paused_sim)
        out = tmp_path_factory.mktemp("paused") / "run"
        return run_scenario(scenario, "sim-paused", RunOptions(seed=5, out=out))


@pytest.fixture(scope="module")
def report(comparison: ComparisonRecord) -> Path:
    """The report of the comparison, at its default place."""
    return build_report([comparison.path])


def _section(page: str, name: str) -> str:
    match = re.search(rf'<section id="{name}">(.*?)</section>', page, re.DOTALL)
    assert match, f"section {name!r} missing"
    return match.group(1)


def test_report_defaults_to_the_first_folder(comparison: ComparisonRecord, report: Path) -> None:
    """Without --output the report is written as report.html inside the first folder given."""
    assert report == comparison.path / "report.html"
    assert report.stat().st_size > 10_000


def test_report_is_self_contained(report: Path) -> None:
    """No URL, no external script, stylesheet or font: the file opens offline as it is."""
    page = report.read_text(encoding="utf-8")
    for forbidden in ("http://", "https://", 'src="/', "<script", "<link", "@import", "url(http"):
        assert forbidden not in page, forbidden
    sources = re.findall(r'<img[^>]*\bsrc="([^"]*)"', page)
    assert all(src.startswith("data:") for src in sources)
    assert page.count("<svg") == page.count('<figure class="chart"') >= 6


def test_report_has_every_section(report: Path) -> None:
    """Summary, verdict, latency, throughput, delivery, sim vs real, scenario and environment."""
    page = report.read_text(encoding="utf-8")
    for name in SECTIONS:
        _section(page, name)


def test_figures_are_saved_as_png_and_svg(report: Path) -> None:
    """Every figure in the page is also in figures/ as a readable PNG and a valid SVG."""
    page = report.read_text(encoding="utf-8")
    names = re.findall(r'<figure class="chart" id="figure-([^"]+)"', page)
    assert {"latency-spectrum-end_to_end", "throughput", "backlog", "delivery"} <= set(names)
    for name in names:
        pixels = image.imread(report.parent / "figures" / f"{name}.png")
        assert pixels.shape[0] > 100 and pixels.std() > 0.01, name
        ElementTree.parse(report.parent / "figures" / f"{name}.svg")


def test_verdict_lists_each_requirement_per_target(
    comparison: ComparisonRecord, report: Path
) -> None:
    """Each requirement of metrics.json appears with a pass/fail/n-a mark for every target."""
    verdict = _section(report.read_text(encoding="utf-8"), "verdict")
    for target, run in comparison.runs.items():
        assert f">{target}</th>" in verdict
        for requirement in run.metrics["requirements"]:
            assert f"<code>{html.escape(requirement['name'])}</code>" in verdict
    assert "not measurable by a run" in verdict and "badge na" in verdict  # replay
    assert verdict.count('class="badge pass"') + verdict.count('class="badge fail"') >= 8


def test_publish_latency_of_fire_and_forget_is_skipped(report: Path) -> None:
    """NATS core has no publish acks (nor has its model): the report says so, draws no figure."""
    latency = _section(report.read_text(encoding="utf-8"), "latency")
    assert "No run has publish latencies" in latency
    assert "latency-spectrum-publish" not in latency
    assert 'id="figure-latency-spectrum-end_to_end"' in latency


def test_sim_vs_real_shows_relative_errors(comparison: ComparisonRecord, report: Path) -> None:
    """Each metric of sim and nats side by side with (real − sim) / sim."""
    section = _section(report.read_text(encoding="utf-8"), "sim-vs-real")
    assert "end_to_end p99 ms" in section and "delivered /s" in section
    sim = comparison.runs["sim:nats"].metrics["throughput_per_s"]["delivered"]  # nats's twin
    real = comparison.runs["nats"].metrics["throughput_per_s"]["delivered"]
    assert f"{(real - sim) / sim * 100:+.1f}%" in section


def test_relative_error_known_answers() -> None:
    """Relative error is (real − sim) / |sim|, 0 when both are 0, ∞ when only sim is 0."""
    assert relative_error(110, 100) == pytest.approx(0.1)
    assert relative_error(0, 0) == 0.0
    assert relative_error(5, 0) == float("inf")
    assert relative_error(None, 1.0) is None


def test_user_strings_are_escaped(report: Path) -> None:
    """A scenario's text is shown, never run: markup in it arrives escaped."""
    page = report.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert "<script>" not in page


def test_fault_windows_are_listed_and_shaded(faulty_run: RunRecord, tmp_path: Path) -> None:
    """Faults from run.json appear in the fault table and the timeline recovers the same window."""
    report = build_report([faulty_run.path], tmp_path / "out" / "paused.html")
    section = _section(report.read_text(encoding="utf-8"), "throughput")
    assert "broker-pause" in section and "No faults were injected" not in section
    (window,) = figures.fault_windows(faulty_run.result.trace.timeline)
    assert window.action == "broker-pause"
    assert window.t_start <= PAUSE.t_start < PAUSE.t_end <= window.t_end


def test_runs_and_comparisons_mix_in_one_report(
    comparison: ComparisonRecord, faulty_run: RunRecord, tmp_path: Path
) -> None:
    """A comparison expands to its target runs; a plain run folder adds one more column."""
    report = build_report([comparison.path, faulty_run.path], tmp_path / "mixed.html")
    summary = _section(report.read_text(encoding="utf-8"), "summary")
    for label in ("sim:nats", "nats", "sim-paused"):  # nats beside its simulator twin
        assert f'<span class="target">{label}</span>' in summary
    assert (tmp_path / "figures" / "throughput.svg").is_file()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tmp: tmp / "missing", "no such folder"),
        (lambda tmp: _write(tmp / "file.txt", "x"), "not a folder"),
        (lambda tmp: _mkdir(tmp / "empty"), "not a run or comparison folder"),
        (lambda tmp: _write(tmp / "half" / "run.json", '{"kind": "run"}').parent, "missing"),
        (lambda tmp: _write(tmp / "bad" / "run.json", "{oops").parent, "not valid JSON"),
    ],
)
def test_bad_paths_raise_report_error(tmp_path: Path, make, reason: str) -> None:
    """A path that is not a run or comparison folder is a user error naming the path and why."""
    path = make(tmp_path)
    with pytest.raises(ReportError, match=re.escape(reason)) as caught:
        build_report([path])
    assert str(path) in str(caught.value)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def test_cli_report_writes_the_file_and_rejects_bad_folders(
    comparison: ComparisonRecord, tmp_path: Path
) -> None:
    """`brokerlab report DIR -o FILE` prints the report's path; a bad folder exits 2."""
    out = tmp_path / "cli" / "r.html"
    done = CliRunner().invoke(main, ["report", str(comparison.path), "-o", str(out)])
    assert done.exit_code == 0, done.output
    assert out.is_file() and str(out) in done.output
    bad = CliRunner().invoke(main, ["report", str(tmp_path / "nope")])
    assert bad.exit_code == 2
    assert "no such folder" in bad.output


def test_figure_functions_take_tables_and_return_figures() -> None:
    """Notebooks reuse the figures: hand-built samples in, Figure out; no samples is no crash."""
    rng = np.random.default_rng(1)
    samples = {"a": rng.exponential(2.0, 5000), "b": np.empty(0)}
    for draw in (figures.latency_spectrum, figures.latency_cdf):
        assert isinstance(draw(samples), Figure)
    spectrum = figures.percentile_spectrum(np.arange(1, 1001, dtype=float))
    at_99 = spectrum.loc[(spectrum["q"] - 0.99).abs().idxmin()]
    assert at_99["latency_ms"] == pytest.approx(990, rel=0.01)
    assert figures._nines_label(1000.0) == "99.9%"


# --------------------------------------------------------------------------- cannot tell

#: Hand-built requirements of a run that could not tell: nothing was delivered.
UNDECIDED = [
    {"name": "throughput", "bound": 400, "measured": None, "ok": None,
     "note": "nothing was delivered"},
    {"name": "end_to_end p99", "bound": 1000, "measured": 5000.0, "ok": None,
     "note": "the lab's client was the limit"},
    {"name": "max_lost", "bound": 0, "measured": 0, "ok": True},
    {"name": "replay", "bound": True, "measured": None, "ok": None},
]  # fmt: skip


def _hand_built(run: RunRecord, tmp_path: Path, name: str, **changes: object) -> Path:
    """A copy of a real run folder whose metrics.json carries ``changes`` (hand-built answers)."""
    folder = tmp_path / name
    shutil.copytree(run.path, folder)
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    metrics.update(changes)
    (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return folder


def test_inconclusive_is_never_shown_as_a_pass(faulty_run: RunRecord, tmp_path: Path) -> None:
    """An inconclusive run has its own badge, and the page says which requirements and why."""
    folder = _hand_built(
        faulty_run, tmp_path, "undecided", verdict="inconclusive", requirements=UNDECIDED
    )
    page = build_report([folder], tmp_path / "r.html").read_text(encoding="utf-8")
    summary, verdict = _section(page, "summary"), _section(page, "verdict")
    assert '<span class="badge inconclusive">INCONCLUSIVE</span>' in summary
    assert "PASS" not in summary and "badge pass" not in summary
    assert "<strong>No run</strong> of the 1 meets every measurable requirement" in summary
    assert "<strong>1</strong> cannot tell" in summary
    why = (
        "<code>throughput</code>: nothing was delivered; "
        "<code>end_to_end p99</code>: the lab&#x27;s client was the limit."
    )
    assert f"Inconclusive: {why}" in summary
    assert f"is inconclusive: {why}</li>" in verdict
    # requirement by requirement: "cannot tell" with the note, n/a for a capability
    assert verdict.count('<span class="badge inconclusive">cannot tell</span>') == 2
    assert '<span class="why">nothing was delivered</span>' in verdict
    assert "5,000 ms" in verdict  # what was measured is still shown
    assert "badge na" in verdict and "<code>replay</code>: " not in verdict
    assert '<span class="badge inconclusive">INCONCLUSIVE</span>' in verdict


def test_undecided_and_verdict_badges_known_answers() -> None:
    """Only measured requirements with ok null make a run inconclusive; each verdict its badge."""
    counts = {"sent": 10, "acked": 10, "unique": 10}
    run = type("Run", (), {"metrics": {"requirements": UNDECIDED, "counts": counts}})()
    assert [(u.requirement, u.why) for u in undecided(run)] == [
        ("throughput", "nothing was delivered"),
        ("end_to_end p99", "the lab's client was the limit"),
    ]
    old = {"requirements": [{"name": "max_lost", "ok": None}], "counts": counts}
    assert [u.why for u in undecided(type("Run", (), {"metrics": old})())] == [
        "could not be measured"
    ]
    empty = {"requirements": [], "counts": {"sent": 5, "acked": 5, "unique": 0}}
    assert [(u.requirement, u.why) for u in undecided(type("Run", (), {"metrics": empty})())] == [
        ("run", "nothing was delivered")
    ]
    assert verdict_badge("pass") == Badge("pass", "PASS")
    assert verdict_badge("fail") == Badge("fail", "FAIL")
    assert verdict_badge("inconclusive") == Badge("inconclusive", "INCONCLUSIVE")
    assert verdict_badge(None) == Badge("na", "?")


def test_unprocessed_is_counted_and_defined(faulty_run: RunRecord, tmp_path: Path) -> None:
    """counts.unprocessed gets a column, a summary line, and its definition beside the others."""
    counts = {**faulty_run.metrics["counts"], "unprocessed": 10}
    folder = _hand_built(faulty_run, tmp_path, "crashed", counts=counts)
    page = build_report([folder], tmp_path / "r.html").read_text(encoding="utf-8")
    delivery = _section(page, "delivery")
    header = re.findall(r"<th[^>]*>([^<]*)</th>", delivery)
    assert "unprocessed" in header
    row = re.findall(r"<td[^>]*>([^<]*)</td>", delivery.split("<tbody>")[1])
    assert row[header.index("unprocessed")] == "10"
    for term in ("lost", "unprocessed", "duplicates", "unexpected", "out of order", "redelivered"):
        assert f"<dt>{term}</dt>" in delivery, term
    assert "<code>max_lost</code> holds against lost + unprocessed" in delivery
    assert "<dt>unprocessed</dt><dd>10</dd>" in _section(page, "summary")


def test_metrics_from_before_unprocessed_and_notes_still_render(
    faulty_run: RunRecord, tmp_path: Path
) -> None:
    """An old metrics.json (no unprocessed, no notes) renders; nothing claims a count it lacks."""
    counts = {k: v for k, v in faulty_run.metrics["counts"].items() if k != "unprocessed"}
    old = [{k: v for k, v in r.items() if k != "note"} for r in UNDECIDED]
    folder = _hand_built(faulty_run, tmp_path, "old", counts=counts, requirements=old)
    page = build_report([folder], tmp_path / "r.html").read_text(encoding="utf-8")
    delivery = _section(page, "delivery")
    assert '<th class="num">unprocessed</th>' not in delivery
    assert "<dt>unprocessed</dt>" in delivery  # the definition stays
    assert "<dt>unprocessed</dt>" not in _section(page, "summary")
    verdict = _section(page, "verdict")
    assert 'class="why"' not in verdict
    assert verdict.count("badge inconclusive") == 2


def test_the_section_list_exists_once(faulty_run: RunRecord, tmp_path: Path) -> None:
    """The contents bar and the page list the same sections, in SECTIONS' order."""
    page = build_report([faulty_run.path], tmp_path / "r.html").read_text(encoding="utf-8")
    links = re.findall(r'<a href="#([^"]+)">', re.search(r"<nav.*?</nav>", page, re.S).group(0))
    anchors = re.findall(r'<section id="([^"]+)">', page)
    assert links == anchors
    # one simulator run: nothing to set against it, so no sim-vs-real section nor link
    assert anchors == [a for a in SECTIONS if a != "sim-vs-real"]
    assert tuple(section.anchor for section in REPORT_SECTIONS) == SECTIONS


def test_environment_shows_the_simulator_profile(report: Path) -> None:
    """run.json's profile is among each run's facts: the simulator twin of nats names the nats
    profile it charged (one line: where it comes from); a real broker needs none."""
    environment = _section(report.read_text(encoding="utf-8"), "environment")
    row = re.search(r"<td[^>]*>simulator profile</td>(.*?)</tr>", environment).group(1)
    sim, real = re.findall(r"<td[^>]*>([^<]*)</td>", row)
    assert sim.startswith("nats: ") and real == "– (real broker)"


def test_a_grouped_folder_that_is_no_comparison_is_refused(tmp_path: Path) -> None:
    """A selection folder is reported through its run folders: the error says so."""
    results.write_manifest(
        tmp_path,
        results.SelectionManifest(
            run_id="s", scenario="x", targets=["nats"], seed=1, started_at="t", real=False,
            verdict="best: nats",
        ),
    )  # fmt: skip
    with pytest.raises(ReportError, match="a selection folder; report the run folders inside"):
        build_report([tmp_path])


def test_every_template_ships_with_the_package() -> None:
    """pyproject's package-data covers every template file, so an installed lab can render."""
    root = Path(__file__).resolve().parent.parent
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["brokerlab"]
    package = root / "brokerlab"
    files = [p.relative_to(package) for p in (package / "templates").rglob("*") if p.is_file()]
    assert {f"sections/{s.anchor}.html" for s in REPORT_SECTIONS} <= {
        str(f.relative_to("templates")) for f in files
    }
    unshipped = [f for f in files if not any(PurePosixPath(f).match(g) for g in globs)]
    assert not unshipped, f"templates missing from package-data: {unshipped}"


# --------------------------------------------------------------------------- in a browser

PROBE = """<script>
window.addEventListener("load", () => {
  const charts = document.querySelectorAll("figure.chart");
  let drawn = 0;
  for (const chart of charts) {
    const svg = chart.querySelector("svg");
    const box = svg && svg.getBoundingClientRect();
    if (svg && box.width > 100 && box.height > 50 && svg.querySelector("path")) drawn++;
  }
  let broken = 0;
  for (const use of document.querySelectorAll("svg use")) {
    if (!document.getElementById((use.getAttribute("href") || "").slice(1))) broken++;
  }
  const images = [...document.images];
  const mark = document.body.dataset;
  mark.charts = charts.length;
  mark.drawn = drawn;
  mark.brokenUses = broken;
  mark.images = images.length;
  mark.imagesLoaded = images.filter((i) => i.complete && i.naturalWidth > 0).length;
  mark.fetched = JSON.stringify(performance.getEntriesByType("resource").map((e) => e.name));
});
</script>"""


@pytest.fixture
def chromium() -> Iterator[str]:
    """Debian's chromium; CI must have it (a missing browser fails there), locally we skip."""
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: apt-get install -y chromium")
        pytest.skip("chromium is not installed")
    yield path


def _chromium(binary: str, profile: Path, page: Path, *extra: str) -> str:
    """Run headless chromium on a file with the network cut off (DNS resolves nothing)."""
    done = subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={profile}",
            *extra,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _page_requests(netlog: Path) -> list[str]:
    """http(s) URLs the page asked for; chromium's own background calls ("not an origin") aside."""
    log = json.loads(netlog.read_text(encoding="utf-8"))
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    starts = [e.get("params", {}) for e in log["events"] if e["type"] == start]
    return [
        params["url"]
        for params in starts
        if params.get("url", "").startswith(("http://", "https://"))
        and params.get("initiator") != "not an origin"
    ]


def _probe(chromium: str, report: Path, folder: Path) -> tuple[dict[str, str], list[str]]:
    """Open a probed copy of the report; return the body's marks and the page's requests."""
    folder.mkdir(parents=True, exist_ok=True)
    probed = folder / "probed.html"
    probed.write_text(
        report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8"
    )
    netlog = folder / "netlog.json"
    dom = _chromium(
        chromium,
        folder / "profile",
        probed,
        "--virtual-time-budget=5000",
        f"--log-net-log={netlog}",
        "--dump-dom",
    )
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    marks = {k: html.unescape(v) for k, v in re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1))}
    return marks, _page_requests(netlog)


def test_report_renders_offline_in_chromium(chromium: str, report: Path, tmp_path: Path) -> None:
    """In a real browser every figure draws, no link is broken, and nothing is fetched."""
    shot = tmp_path / "report.png"
    _chromium(
        chromium, tmp_path / "shot", report, f"--screenshot={shot}", "--window-size=1280,4000"
    )
    pixels = image.imread(shot)
    assert pixels.shape[:2] == (4000, 1280)
    assert pixels[..., :3].std() > 0.05, "the screenshot is blank"

    marks, requests = _probe(chromium, report, tmp_path / "clean")
    assert int(marks["charts"]) >= 6
    assert marks["drawn"] == marks["charts"]
    assert marks["broken-uses"] == "0"
    assert marks["images-loaded"] == marks["images"]
    assert json.loads(marks["fetched"]) == []
    assert requests == []

    # The probe must see a leak when there is one, or the clean result above proves nothing.
    leaky = tmp_path / "leaky.html"
    leaky.write_text(
        report.read_text(encoding="utf-8").replace(
            "</body>", '<img src="http://example.invalid/x.png"></body>'
        ),
        encoding="utf-8",
    )
    marks, requests = _probe(chromium, leaky, tmp_path / "leak")
    assert requests == ["http://example.invalid/x.png"]
    assert json.loads(marks["fetched"]) == ["http://example.invalid/x.png"]
