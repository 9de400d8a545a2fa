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
# # Compare brokers for a use case
#
# A use case's scenario says what it needs: throughput, latency bounds, no loss, per-key order,
# replay, message size. This notebook holds every candidate broker against those requirements
# and ranks them by the evidence: each candidate runs the scenario — on the real broker where
# the lab has an adapter (Redis Streams, NATS, JetStream), else on the simulator's preset for it
# (Kafka, RabbitMQ, SQS …) — and what a run cannot show (replay, size limits, the ordering model,
# durability options) comes from the lab's capability table, each fact with its vendor source.
#
# Everything is stored in one selection folder under `results_dir` (`ranking.csv`,
# `evidence.csv`, one run folder per candidate). A relative path is looked up from the kernel's
# folder, then from `notebooks/`, then from the repository.

# %% tags=["parameters"]
scenario_path = "../scenarios/usecases/orders.yaml"  # the use case
candidates = "redis-streams,nats,nats-jetstream,kafka,rabbitmq,sqs"  # comma-separated kinds
real = True  # real brokers where the lab has an adapter; False: the simulator for all
duration = "3s"  # shortens producers.duration for a quick look; "" keeps the scenario's own
reuse = True  # reuse an earlier run of exactly this scenario, target and seed
results_dir = ""  # where the selection goes; empty: $BROKERLAB_RESULTS, else results/
seed = 1

# %%
# %matplotlib inline
# The parameters cell comes first (papermill), so imports follow it.
# ruff: noqa: E402
import json
import math
import sys
from typing import Any

import pandas as pd
from IPython.display import Markdown, display
from matplotlib.figure import Figure

from brokerlab.app.notebook import lab_path, results_path
from brokerlab.app.runner import RunOptions
from brokerlab.app.select import select
from brokerlab.core.scenario import load_scenario
from brokerlab.core.units import format_duration, parse_duration

print(f"kernel: {sys.executable}")

# %% [markdown]
# ## The use case
#
# The requirements every candidate is held against (in base units: seconds, bytes, messages
# per second; `null` means any). A shortened `duration` is a quick look, not
# the evidence to choose by: it may cover only part of the load's pattern (a burst, not the
# silence after it), so rates and tails can differ from the full run. Set `duration = ""` for
# the scenario as written.

# %%
scenario_file = lab_path(scenario_path)
results = results_path(results_dir)
scenario = load_scenario(scenario_file)
if duration:
    producers = scenario.producers.model_copy(
        update={"duration": parse_duration(duration), "messages": None}
    )
    scenario = scenario.model_copy(update={"producers": producers})
requirements = scenario.requirements.model_dump(mode="json")
display(Markdown(f"**{scenario.name}** — {scenario.description}"))
print(
    f"load: {scenario.producers.rate:g}/s offered for "
    f"{format_duration(scenario.producers.duration or 0)} "
    f"({scenario.producers.total_messages} messages)"
)
display(
    pd.DataFrame(
        {"requirement": list(requirements), "bound": [json.dumps(v) for v in requirements.values()]}
    ).set_index("requirement")
)

# %% [markdown]
# ## Run the candidates and rank them
#
# Real brokers need wall-clock time (about the scenario's duration each, plus start-up and
# drain); simulated candidates take a fraction of a second. With `reuse`, a candidate whose
# exact scenario, target and seed already ran under `results_dir` is not run again.

# %%
names = [name.strip() for name in candidates.split(",") if name.strip()]
selection = select(
    scenario,
    names,
    RunOptions(seed=seed, results_dir=results),
    real=real,
    reuse=reuse,
    source=str(scenario_file),
)
print(f"selection folder: {selection.path}")
for candidate, error in selection.errors.items():
    print(f"{candidate} did not run: {error}")
ranking = selection.ranking
display(ranking)

# %% [markdown]
# ## How to read the ranking
#
# - **rank**: candidates that meet every requirement come first; among equals, the one with the
#   most headroom on its tightest requirement.
# - **target**: what produced the measurements — the real broker, or `sim`, the simulator's model
#   of that broker. A simulated candidate's numbers are a model's prediction, not a measurement:
#   before choosing it, confirm them on the real system.
# - **verdict / failed / failed_requirements**: how many requirements the candidate misses, and
#   which — from its run (latency, throughput, loss, order) or from the capability table (replay,
#   message size, ordering model, durability options).
# - **worst_margin**: the smallest relative headroom over the measured requirements:
#   `(bound − measured) ÷ bound` for ceilings such as a p99 latency, `(measured − bound) ÷ bound`
#   for the throughput floor. `0.9` means 90 % below the latency bound; below zero, a bound is
#   broken. Requirements with a zero bound (no loss allowed) count only when broken (−1 per
#   message over).
# - **reused / run**: the run folder each row comes from; open it with notebook 03 for the full
#   report.
#
# A candidate can have a large margin and still fail: margins come from runs, while a missing
# capability (no replay) fails the use case whatever the numbers.


# %%
def margin_chart(table: pd.DataFrame) -> Figure:
    """Worst margin per candidate as horizontal bars in rank order: green passes, red fails."""
    figure = Figure(figsize=(9.0, 1.4 + 0.45 * max(len(table), 1)), layout="constrained")
    ax = figure.subplots()
    labels = [
        f"{row.rank}. {row.candidate} ({'simulated' if row.target == 'sim' else 'real'})"
        for row in table.itertuples()
    ]
    values = [
        100.0 * float(m) if m is not None and not math.isnan(float(m)) else 0.0
        for m in table["worst_margin"]
    ]
    colors = ["#2ca02c" if v == "pass" else "#d62728" for v in table["verdict"]]
    bars = ax.barh(range(len(table)), values, color=colors, height=0.6)
    notes = [
        f"{value:.1f}%" + (f" · fails {row.failed_requirements}" if row.failed else "")
        for value, row in zip(values, table.itertuples(), strict=True)
    ]
    ax.bar_label(bars, labels=notes, padding=4, fontsize=8)
    if values and max(abs(v) for v in values) > 300:  # a loss of many messages: keep the others
        ax.set_xscale("symlog", linthresh=100)
    ax.axvline(0, color="#333333", linewidth=0.8)
    ax.set_yticks(range(len(table)), labels)
    ax.invert_yaxis()
    ax.margins(x=0.35)
    ax.set_xlabel("worst margin: headroom of the tightest measured requirement (%)")
    ax.grid(True, axis="x", color="#d9d9d9", linewidth=0.7)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(
        f"{scenario.name}: margin per candidate (green meets every requirement)",
        loc="left",
        fontsize=11,
    )
    return figure


if len(ranking):
    display(margin_chart(ranking))
else:
    print("no candidate produced a run")

# %% [markdown]
# ## The evidence
#
# Every requirement of every candidate: `kind` says where the verdict comes from — `run`
# (measured; `evidence` is the run folder) or `capability` (the lab's capability table;
# `evidence` is the vendor documentation page, and "unverified" marks a fact not yet checked
# against it). First side by side (✓ met, ✗ not met, `*` unverified), then in full.


# %%
def cell(row: Any) -> str:
    """One verdict as a short text: mark, measured value, and * when unverified."""
    mark = {True: "✓", False: "✗"}.get(row.ok, "?")
    measured = row.measured
    if isinstance(measured, float):
        measured = f"{measured:.4g}"
    return f"{mark} {measured}" + (" *" if "unverified" in row.kind else "")


evidence = selection.evidence
if len(evidence):
    side_by_side = (
        evidence.assign(
            source=evidence["kind"].str.split(" ").str[0],
            verdict=[cell(row) for row in evidence.itertuples()],
        )
        .pivot_table(
            index=["source", "requirement"], columns="candidate", values="verdict", aggfunc="first"
        )
        .reindex(columns=list(ranking["candidate"]))
    )
    display(side_by_side)
display(evidence)
