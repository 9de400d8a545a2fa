# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Report on runs
#
# The notebook way to make a report from scenario runs: give it a run folder or a comparison
# folder (from `brokerlab run`, `brokerlab compare`, or notebooks 01 and 02) and it writes the
# lab's self-contained HTML report — verdict, latency, throughput and lag, delivery checks,
# simulator against real, scenario and environment — with every figure also saved as PNG and SVG
# in a `figures/` folder beside it. The figures and the main numbers are shown here too.
#
# It reads the folders exactly as they are on disk and never re-runs anything. With `run_dir`
# empty it first makes a small simulator comparison, so it also runs on its own. From the command
# line, run it with papermill (see `notebooks/README.md`):
# `-p run_dir results/RUN_ID -p output /tmp/report.html`.

# %% tags=["parameters"]
run_dir = ""  # a run or comparison folder; empty: make a small comparison first
output = ""  # where the HTML report goes; empty: <run_dir>/report.html
scenario_path = "../scenarios/quickstart.yaml"  # only when run_dir is empty: what to run
targets = "sim"  # only when run_dir is empty: targets, e.g. "sim,redis-streams"
messages = 2000  # only when run_dir is empty: messages per target
results_dir = ""  # only when run_dir is empty: where it goes (as in notebook 01)
seed = 1

# %%
# %matplotlib inline
# The parameters cell comes first (papermill), so imports follow it.
# ruff: noqa: E402
import json
import sys

import pandas as pd
from IPython.display import FileLink, Image, Markdown, display

from brokerlab.app.compare import COMPARISON_CSV, compare
from brokerlab.app.notebook import lab_path, results_path
from brokerlab.app.report import FIGURES_DIR, build_report
from brokerlab.app.runner import RunOptions
from brokerlab.core.results import METRICS_FILE, RUN_FILE
from brokerlab.core.scenario import load_scenario

print(f"kernel: {sys.executable}")

# %% [markdown]
# ## The runs to report on
#
# A folder from the parameters, or — when `run_dir` is empty — a fresh comparison of the
# scenario on `targets`, shortened to `messages` messages.

# %%
if run_dir:
    folder = lab_path(run_dir)
else:
    scenario_file = lab_path(scenario_path)
    scenario = load_scenario(scenario_file)
    producers = scenario.producers.model_copy(update={"messages": int(messages), "duration": None})
    scenario = scenario.model_copy(update={"producers": producers})
    wanted = [t.strip() for t in targets.split(",") if t.strip()]
    comparison = compare(
        scenario,
        wanted,
        RunOptions(
            seed=seed,
            results_dir=results_path(results_dir),
        ),
        source=str(scenario_file),
    )
    for target, error in comparison.errors.items():
        print(f"{target} did not run: {error}")
    folder = comparison.path
provenance = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
print(f"{provenance.get('kind', 'run')} folder: {folder}")

# %% [markdown]
# ## Build the report
#
# `build_report` writes one HTML file (figures inlined as SVG, no scripts, no links: it opens
# offline and attaches to a ticket) and the figures as PNG and SVG files.

# %%
report = build_report([folder], lab_path(output) if output else None)
figures_dir = report.parent / FIGURES_DIR
display(Markdown(f"Report: `{report}`  \nFigures: `{figures_dir}`"))
display(FileLink(str(report)))

# %% [markdown]
# ## The main numbers
#
# For a comparison, one column per target (the same table as `comparison.csv`); for one run,
# its requirements and verdict from `metrics.json`.

# %%
if provenance.get("kind") == "comparison":
    display(pd.read_csv(folder / COMPARISON_CSV, index_col="metric"))
else:
    metrics = json.loads((folder / METRICS_FILE).read_text(encoding="utf-8"))
    display(Markdown(f"**Verdict: {metrics['verdict']}** ({metrics['target']})"))
    display(pd.DataFrame(metrics["requirements"]).set_index("name"))

# %% [markdown]
# ## The report's figures
#
# In the order the report draws them; the PNG files are the ones to paste into slides or
# documents, the SVG files scale without blur.

# %%
pictures = sorted(figures_dir.glob("*.png"), key=lambda p: (p.stat().st_mtime_ns, p.name))
for picture in pictures:
    svg = picture.with_suffix(".svg").name
    display(Markdown(f"**{picture.stem}** — `{picture.name}`, `{svg}`"))
    display(Image(filename=str(picture)))
print(f"{len(pictures)} figures in {figures_dir}")
