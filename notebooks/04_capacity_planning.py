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
# # Capacity planning: how many consumers at three times today's load?
#
# The orders use case (`scenarios/usecases/orders.yaml`) sends order events in campaign bursts,
# needs per-customer order, no loss and a p99 end-to-end latency of 250 ms. Marketing expects
# three times today's traffic. How many consumers will the order workers need, and how long do
# they take to catch up after an outage?
#
# The notebook asks the lab the same questions as `brokerlab capacity` and `brokerlab sweep`:
#
# 1. the fewest consumers that meet every requirement at 3× the rate, with the evidence;
# 2. a sweep over the consumer count at 3× the rate, with a confidence interval across seeds,
#    so the answer's margin is visible;
# 3. how long the chosen group needs to catch up after all consumers were down for a while.
#
# Every run is stored (a folder under `results_dir`) and reused when the notebook runs again.
# Change the parameters in the next cell or pass them with papermill (`-p growth 2`).

# %% tags=["parameters"]
scenario_path = "../scenarios/usecases/orders.yaml"  # the use case to size
results_dir = ""  # where runs go; empty: $BROKERLAB_RESULTS, else results/
growth = 3.0  # future load as a multiple of today's
duration = "20s"  # how long producers send in each run
seeds = 3  # seeds per point: the answer must hold on every one
max_consumers = 6  # the sweep tries 1..max_consumers
outage = "10s"  # consumer outage for the catch-up question
workers = None  # Dask worker processes (None: one per core; 1: in this process)

# %%
# %matplotlib inline
# The parameters cell comes first (papermill), so imports follow it.
# ruff: noqa: E402
import sys
from datetime import UTC, datetime

import pandas as pd
from IPython.display import Markdown, display

from brokerlab.app import sweep_figures
from brokerlab.app.capacity import find_capacity
from brokerlab.app.notebook import lab_path, results_path
from brokerlab.app.runner import RunOptions
from brokerlab.app.sweep import parse_vary, run_sweep, with_values
from brokerlab.core.scenario import load_scenario
from brokerlab.core.units import parse_duration

scenario_file = lab_path(scenario_path)
results = results_path(results_dir)
folder = results / f"{datetime.now(UTC):%Y%m%d-%H%M%S}-capacity-planning"
print(f"kernel: {sys.executable}")
print(f"scenario: {scenario_file}\nresults: {folder}")

# %% [markdown]
# ## Today and tomorrow
#
# The future scenario is today's with the offered rate multiplied by `growth` (the bursts keep
# their shape: the on/off arrival process scales with the mean rate) and the run length set by
# `duration`. Fields are set by their path, exactly as `--vary` names them, and validated like a
# scenario file.

# %%
today = load_scenario(scenario_file)
future = with_values(
    today,
    {"producers.rate": today.producers.rate * growth, "producers.duration": duration},
)
requirements = today.requirements
display(
    Markdown(
        f"Today **{today.producers.rate:g}/s** with {today.consumers.count} consumer(s); "
        f"planned **{future.producers.rate:g}/s** ({growth:g}×). Requirements: p99 end-to-end "
        f"≤ {requirements.latency['end_to_end']['p99'] * 1000:g} ms, throughput ≥ "
        f"{requirements.throughput:g}/s, lost ≤ {requirements.max_lost}, "
        f"ordering {requirements.ordering}."
    )
)

# %% [markdown]
# ## The fewest consumers that meet every requirement
#
# `find_capacity(..., "consumers")` doubles the consumer count until every seed meets the
# requirements (and the group keeps up: delivered ≥ 95% of offered), then bisects down to the
# fewest. An `inconclusive` verdict would count as not meeting them.

# %%
options = RunOptions(results_dir=results)
answer = find_capacity(
    future,
    "consumers",
    out=folder / "consumers",
    seeds=int(seeds),
    workers=workers,
    options=options,
    source=str(scenario_file),
)
print(answer.answer)
evidence = pd.DataFrame(
    [
        {
            "consumers": point.value,
            "step": point.step,
            "meets": point.ok,
            "seeds passing": f"{sum(s['ok'] for s in point.seeds)}/{len(point.seeds)}",
            "worst e2e p99 ms": max(
                (s["latency_ms"]["end_to_end"]["p99"] or 0)
                for s in point.seeds
                if s.get("latency_ms")
            ),
            "why not": point.note,
        }
        for point in answer.points
    ]
)
display(evidence)

# %% [markdown]
# ## The margin: a sweep over the consumer count
#
# The answer is the edge; a sweep shows how much room each extra consumer buys. Each point is
# the future scenario with `consumers.count` set, played with the same seeds (means with a 95%
# confidence interval across seeds).

# %%
sweep = run_sweep(
    future,
    [parse_vary(f"consumers.count=1..{int(max_consumers)}:{int(max_consumers)}")],
    seeds=int(seeds),
    out=folder / "sweep",
    workers=workers,
    options=options,
    source=str(scenario_file),
)
columns = [
    "consumers.count",
    "passed",
    "seeds",
    "latency_ms.end_to_end.p99",
    "latency_ms.end_to_end.p99 ±95%",
    "throughput_per_s.delivered",
]
display(sweep.summary[columns])
figure = sweep_figures.latency_vs_load(sweep.table, sweep.paths)
figure.axes[0].axhline(
    requirements.latency["end_to_end"]["p99"] * 1000, color="#c62828", ls="--", lw=1
)
display(figure)

# %% [markdown]
# ## Catch-up after an outage
#
# With the chosen group, all consumers stop for `outage` at the planned rate. How long until the
# consumer lag is back to what it was before, and did the stream's limits drop anything?

# %%
if answer.value is None:
    print("no consumer count met the requirements: no catch-up question to ask")
else:
    sized = with_values(future, {"consumers.count": answer.value})
    catch_up = find_capacity(
        sized,
        "catch-up",
        outage=parse_duration(outage),
        out=folder / "catch-up",
        seeds=int(seeds),
        workers=workers,
        options=options,
        source=str(scenario_file),
    )
    print(catch_up.answer)
    for png in sorted((folder / "catch-up" / "figures").glob("*.png"))[:1]:
        from IPython.display import Image

        display(Image(filename=str(png)))

# %% [markdown]
# ## What to take away
#
# The first table is the evidence for the answer: each consumer count tried, on every seed. The
# sweep shows the margin above the edge. Rerun with `growth`, `duration` or `seeds` changed; the
# runs already made are reused. The same answers from a shell:
#
# ```
# brokerlab capacity scenarios/usecases/orders.yaml --find consumers
# brokerlab sweep scenarios/usecases/orders.yaml --vary consumers.count=1..6:6 --seeds 3
# brokerlab capacity scenarios/usecases/orders.yaml --find catch-up --outage 10s
# ```
# (with the rate changed in the file, or with `--vary producers.rate=1200/s` on the sweep).
