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
# The notebook asks the lab the same questions as `brokerlab capacity` and `brokerlab sweep`,
# through `bl.capacity` and `bl.sweep`:
#
# 1. the fewest consumers that meet every requirement at 3× the rate, with the evidence;
# 2. a sweep over the consumer count at 3× the rate, with a confidence interval across seeds,
#    so the answer's margin is visible;
# 3. how long the chosen group needs to catch up after all consumers were down for a while.
#
# Every run is stored (a new folder under `results_dir` each time the notebook runs) and opens
# again with `bl.open(path)`.
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
profile = "auto"  # the simulated broker's costs: auto (calibrated, else shipped), default, none

# %%
# %matplotlib inline
# The parameters cell comes first (papermill), so imports follow it.
# ruff: noqa: E402
import sys

from IPython.display import Markdown, display

import brokerlab as bl

folder = bl.results_folder("capacity-planning", results_dir)
print(f"kernel: {sys.executable}")
print(f"scenario: {scenario_path}\nresults: {folder}")

# %% [markdown]
# ## Today and tomorrow
#
# The future scenario is today's with the offered rate multiplied by `growth` (the bursts keep
# their shape: the on/off arrival process scales with the mean rate) and the run length set by
# `duration`. `with_` validates the change exactly as a scenario file is validated.

# %%
today = bl.load(scenario_path)
today = today.with_(**{"broker.profile": profile})
future = today.with_(rate=today.producers.rate * growth, duration=duration)
requirements = today.requirements
display(bl.describe(today=today, future=future))
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
# `bl.capacity(..., "consumers")` doubles the consumer count until every seed meets the
# requirements (and the group keeps up: delivered ≥ 95% of offered), then bisects down to the
# fewest. An `inconclusive` verdict would count as not meeting them. `.points` is the evidence:
# each count tried, why it was tried, how many seeds passed, and why not.

# %%
answer = bl.capacity(
    future, "consumers", seeds=int(seeds), workers=workers, out=folder / "consumers"
)
print(answer.answer)
display(answer.points)

# %% [markdown]
# ## The margin: a sweep over the consumer count
#
# The answer is the edge; a sweep shows how much room each extra consumer buys. Each point is
# the future scenario with `consumers.count` set, played with the same seeds (means with a 95%
# confidence interval across seeds). The dashed line is the p99 requirement.

# %%
sweep = bl.sweep(
    future,
    {"consumers.count": list(range(1, int(max_consumers) + 1))},
    seeds=int(seeds),
    workers=workers,
    out=folder / "sweep",
)
columns = [
    "consumers.count",
    "passed",
    "seeds",
    "latency_ms.end_to_end.p99",
    "latency_ms.end_to_end.p99 ±95%",
    "throughput_per_s.delivered",
]
display(sweep.summary()[columns])
display(sweep.plot.latency_vs_load())

# %% [markdown]
# ## Catch-up after an outage
#
# With the chosen group, all consumers stop for `outage` at the planned rate. How long until the
# consumer lag is back to what it was before, and did the stream's limits drop anything?

# %%
if answer.value is None:
    print("no consumer count met the requirements: no catch-up question to ask")
else:
    catch_up = bl.capacity(
        future.with_(consumers=answer.value),
        "catch-up",
        outage=outage,
        seeds=int(seeds),
        workers=workers,
        out=folder / "catch-up",
    )
    print(catch_up.answer)
    display(catch_up.plot.catch_up())

# %% [markdown]
# ## What to take away
#
# The first table is the evidence for the answer: each consumer count tried, on every seed. The
# sweep shows the margin above the edge. Rerun with `growth`, `duration` or `seeds` changed to
# see how the answer moves. The same answers from a shell:
#
# ```
# brokerlab capacity scenarios/usecases/orders.yaml --find consumers
# brokerlab sweep scenarios/usecases/orders.yaml --vary consumers.count=1..6:6 --seeds 3
# brokerlab capacity scenarios/usecases/orders.yaml --find catch-up --outage 10s
# ```
# (with the rate changed in the file, or with `--vary producers.rate=1200/s` on the sweep).
