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
# `evidence.csv`, one run folder per candidate). The notebook uses only the lab's Python API
# (`import brokerlab as bl`, see `docs/api.md`). A relative path is looked up from the kernel's
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
import sys

import pandas as pd
from IPython.display import Markdown, display

import brokerlab as bl

results = results_dir or None  # None: $BROKERLAB_RESULTS, else results/
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
scenario = bl.load(scenario_path)
if duration:
    scenario = scenario.with_(duration=duration)
requirements = scenario.requirements.model_dump(mode="json")
display(Markdown(f"**{scenario.name}** — {scenario.description}"))
print(
    f"load: {scenario.producers.rate:g}/s offered for {scenario.producers.duration or 0:g} s "
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
selection = bl.select(scenario, names, real=real, reuse=reuse, seed=seed, results_dir=results)
for candidate, error in selection.errors.items():
    print(f"{candidate} did not run: {error}")
display(selection)

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
if len(selection.ranking):
    display(selection.plot.margins())
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
if len(selection.evidence):
    display(selection.side_by_side())
display(selection.evidence)
