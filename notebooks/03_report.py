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
import sys

from IPython.display import FileLink, Image, Markdown, display

import brokerlab as bl

print(f"kernel: {sys.executable}")

# %% [markdown]
# ## The runs to report on
#
# A folder from the parameters, opened as it is on disk (`bl.open`), or — when `run_dir` is
# empty — a fresh comparison of the scenario on `targets`, shortened to `messages` messages.

# %%
if run_dir:
    result = bl.open(run_dir)
else:
    wanted = [t.strip() for t in targets.split(",") if t.strip()]
    result = bl.compare(
        bl.load(scenario_path).with_(messages=messages),
        wanted,
        seed=seed,
        results_dir=results_dir or None,
    )
    for target, error in result.errors.items():
        print(f"{target} did not run: {error}")
print(f"{type(result).__name__} folder: {result.path}")

# %% [markdown]
# ## Build the report
#
# `bl.report` writes one HTML file (figures inlined as SVG, no scripts, no links: it opens
# offline and attaches to a ticket) and the figures as PNG and SVG files.

# %%
report = bl.report(result, output=output or None)
display(Markdown(f"Report: `{report.path}`  \nFigures: `{report.figures_dir}`"))
display(FileLink(str(report.path)))

# %% [markdown]
# ## The main numbers
#
# For a comparison, one column per target (the same table as `comparison.csv`); for one run,
# its main numbers, requirements and verdict (`metrics.json`); for a selection, its ranking.

# %%
display(result)

# %% [markdown]
# ## The report's figures
#
# In the order the report draws them; the PNG files are the ones to paste into slides or
# documents, the SVG files scale without blur.

# %%
for picture in report.figures:
    svg = picture.with_suffix(".svg").name
    display(Markdown(f"**{picture.stem}** — `{picture.name}`, `{svg}`"))
    display(Image(filename=str(picture)))
print(f"{len(report.figures)} figures in {report.figures_dir}")
