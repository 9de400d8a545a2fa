"""The notebooks: jupytext percent files that run top to bottom, headless, on a fresh kernel.

Each notebook is converted to .ipynb with jupytext and executed with papermill on the
environment's ``python3`` kernel, with small parameters; real brokers are the lab's own
embedded ones, as users get them.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import papermill
import pytest

from brokerlab.app.runner import RunOptions, run_scenario
from brokerlab.core.scenario import parse_scenario

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
EXPECTED = (
    "01_explore_scenarios.py",
    "02_compare_brokers.py",
    "03_report.py",
    "04_capacity_planning.py",
)
CANDIDATES = ("redis-streams", "nats", "nats-jetstream", "kafka", "rabbitmq", "sqs")


def execute(name: str, tmp_path: Path, **parameters: object) -> nbformat.NotebookNode:
    """Convert ``notebooks/name`` to .ipynb, run it with papermill and return the result."""
    source = tmp_path / name.replace(".py", ".ipynb")
    jupytext.write(jupytext.read(NOTEBOOKS / name), source)
    executed = tmp_path / f"executed-{source.name}"
    papermill.execute_notebook(
        str(source),
        str(executed),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(NOTEBOOKS),
        progress_bar=False,
    )
    return nbformat.read(executed, as_version=4)


def outputs(notebook: nbformat.NotebookNode, mime: str | None = None) -> list[dict]:
    """Every output of every code cell, or only those carrying ``mime``."""
    found = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    return [out for out in found if mime is None or mime in out.get("data", {})]


def text(notebook: nbformat.NotebookNode) -> str:
    """Everything the notebook printed or displayed as text."""
    parts = []
    for out in outputs(notebook):
        parts.append(out.get("text", ""))
        parts.extend(str(out.get("data", {}).get(m, "")) for m in ("text/plain", "text/html"))
    return "\n".join(parts)


def assert_ran_cleanly(notebook: nbformat.NotebookNode) -> None:
    """No error output, and the kernel was this environment's Python."""
    errors = [out for out in outputs(notebook) if out.get("output_type") == "error"]
    assert not errors, [f"{e['ename']}: {e['evalue']}" for e in errors]
    assert f"kernel: {sys.executable}" in text(notebook)


def run_folders(results: Path) -> list[Path]:
    """Complete run folders (holding metrics.json) anywhere under ``results``."""
    return sorted(p.parent for p in results.rglob("metrics.json"))


def test_notebooks_are_jupytext_percent_files() -> None:
    """Every notebooks/*.py is a percent notebook: markdown first, then the papermill parameters."""
    names = sorted(p.name for p in NOTEBOOKS.glob("*.py"))
    assert set(EXPECTED) <= set(names)
    for name in names:
        source = (NOTEBOOKS / name).read_text(encoding="utf-8")
        assert jupytext.formats.guess_format(source, ".py")[0] == "percent", name
        notebook = jupytext.reads(source, fmt="py:percent")
        assert jupytext.writes(notebook, fmt="py:percent") == source, f"{name}: not round-trip"
        first, second = notebook.cells[0], notebook.cells[1]
        assert first.cell_type == "markdown", name
        assert second.cell_type == "code" and second.metadata.get("tags") == ["parameters"], name


@pytest.mark.parametrize("name", EXPECTED)
def test_notebooks_use_only_the_public_api(name: str) -> None:
    """A notebook imports the lab only as `import brokerlab as bl` and defines no helpers: what
    it needs is in the API, where it is typed, documented and tested."""
    notebook = jupytext.read(NOTEBOOKS / name)
    code = "\n".join(
        "\n".join(line for line in cell.source.splitlines() if not line.startswith("%"))
        for cell in notebook.cells
        if cell.cell_type == "code"
    )
    lab_imports, helpers = [], []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            lab_imports += [
                (a.name, a.asname) for a in node.names if a.name.split(".")[0] == "brokerlab"
            ]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("brokerlab"):
            lab_imports.append((node.module, None))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            helpers.append(node.name)
    assert lab_imports == [("brokerlab", "bl")]
    assert helpers == []


def test_no_ipynb_is_tracked_by_git() -> None:
    """Only the .py notebooks are committed; .ipynb files are generated."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files", "notebooks"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [path for path in tracked if path.endswith(".ipynb")]


def test_explore_scenarios_simulates_sweeps_and_runs_a_real_broker(tmp_path: Path) -> None:
    """01 stores a faulted what-if run, a four-rate sweep and a sim + redis-streams comparison."""
    results = tmp_path / "results"
    notebook = execute(
        "01_explore_scenarios.py",
        tmp_path,
        results_dir=str(results),
        messages=4000,
        rate="900/s",
        consumers=3,
        processing_mean="2ms",
        run_real=True,
        real_target="redis-streams",
        real_duration="2s",
        faults=[
            {"at": "1s", "action": "consumer-crash", "duration": "0.5s", "target": "consumer-1"}
        ],
    )
    assert_ran_cleanly(notebook)
    runs = run_folders(results)
    targets = [json.loads((p / "run.json").read_text())["target"] for p in runs]
    assert targets.count("sim") == 1 + 4 + 1  # the what-if, the sweep, beside the real run
    assert targets.count("redis-streams") == 1
    (what_if,) = [p for p in runs if p.parent == results and p.name.endswith("-sim-s1")]
    assert json.loads((what_if / "metrics.json").read_text())["counts"]["sent"] == 4000
    assert json.loads((what_if / "run.json").read_text())["faults"][0]["action"] == "consumer-crash"
    (sweep,) = results.glob("*-sweep")
    assert len((sweep / "sweep.csv").read_text().splitlines()) == 1 + 4
    assert "redis-streams did not run" not in text(notebook)
    assert len(outputs(notebook, "image/png")) >= 7


def test_compare_brokers_ranks_every_candidate(tmp_path: Path) -> None:
    """02 runs select on all six candidates and shows the ranking and its evidence."""
    results = tmp_path / "results"
    notebook = execute("02_compare_brokers.py", tmp_path, results_dir=str(results), duration="2s")
    assert_ran_cleanly(notebook)
    html = [str(out["data"]["text/html"]) for out in outputs(notebook, "text/html")]
    (ranking,) = [h for h in html if "worst_margin" in h and "failed_requirements" in h]
    assert all(candidate in ranking for candidate in CANDIDATES)
    assert any("capability" in h and "evidence" in h for h in html)
    (selection,) = results.iterdir()
    assert (selection / "ranking.csv").read_text().count("\n") == 1 + len(CANDIDATES)
    assert len(outputs(notebook, "image/png")) == 1  # the margin chart


def test_report_runs_standalone(tmp_path: Path) -> None:
    """03 with no run_dir makes a small comparison, writes the report and shows its figures."""
    report = tmp_path / "out" / "report.html"
    notebook = execute(
        "03_report.py",
        tmp_path,
        results_dir=str(tmp_path / "results"),
        output=str(report),
        messages=1000,
    )
    assert_ran_cleanly(notebook)
    assert report.is_file() and "<svg" in report.read_text(encoding="utf-8")
    pngs = sorted((report.parent / "figures").glob("*.png"))
    svgs = sorted((report.parent / "figures").glob("*.svg"))
    assert pngs and [p.stem for p in pngs] == [s.stem for s in svgs]
    assert len(outputs(notebook, "image/png")) == len(pngs)


def test_report_command_in_readme_reports_on_a_run(tmp_path: Path) -> None:
    """The papermill command in notebooks/README.md writes a run folder's report."""
    readme = (NOTEBOOKS / "README.md").read_text(encoding="utf-8")
    command = re.search(r"<!-- report-command -->\n```bash\n(.+?)\n```", readme, re.S)
    assert command, "notebooks/README.md lost its report command"
    scenario = parse_scenario(
        {
            "name": "tiny",
            "producers": {"rate": "500/s", "messages": 300},
            "broker": {"kind": "nats"},
        }
    )
    run = run_scenario(scenario, "sim", RunOptions(results_dir=tmp_path / "results"))
    line = command.group(1).replace("results/RUN_ID", str(run.path))
    line = line.replace("results/03_report.ipynb", str(tmp_path / "03_report.ipynb"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        line, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run.path / "report.html").is_file()
    assert list((run.path / "figures").glob("*.png"))
    assert_ran_cleanly(nbformat.read(tmp_path / "03_report.ipynb", as_version=4))


def test_capacity_planning_sizes_the_orders_consumers(tmp_path: Path) -> None:
    """04 finds the fewest consumers for orders at 3x, sweeps the count and answers catch-up."""
    results = tmp_path / "results"
    notebook = execute(
        "04_capacity_planning.py",
        tmp_path,
        results_dir=str(results),
        duration="6s",
        seeds=1,
        max_consumers=3,
        outage="2s",
        workers=1,
        profile="none",  # the known answer is the ideal broker's
    )
    assert_ran_cleanly(notebook)
    (folder,) = results.glob("*-capacity-planning")
    answer = json.loads((folder / "consumers" / "capacity.json").read_text())
    assert answer["find"] == "consumers" and isinstance(answer["value"], int)
    assert answer["value"] >= 1 and answer["points"]
    assert answer["answer"] in text(notebook)
    sweep = (folder / "sweep" / "sweep.csv").read_text().splitlines()
    assert len(sweep) == 1 + 3
    catch_up = json.loads((folder / "catch-up" / "capacity.json").read_text())
    assert catch_up["find"] == "catch-up"
    assert "back to normal" in text(notebook) or "did not return" in text(notebook)
    assert len(outputs(notebook, "image/png")) >= 2
