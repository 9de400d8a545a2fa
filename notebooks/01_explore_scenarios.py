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
# # Explore a scenario
#
# Take one scenario and change what a platform engineer changes when sizing a broker: the
# offered rate, the number of consumers, how long a message takes to process, the faults.
# The simulator plays the result in seconds; the notebook shows the metrics the lab measures
# (latency percentiles, counts, the verdict against the use case's requirements), the latency
# spectrum and the consumer lag over time, then sweeps the rate to show where latency bends.
# Last, the same scenario runs against a real broker and the simulator in one call.
#
# Every run is stored like `brokerlab run` stores it (a folder under `results_dir`), so a report
# can be made from it later (notebook 03). Change the parameters in the next cell, or pass them
# with papermill (`-p rate 1200/s`). A relative path is looked up from the kernel's folder, then
# from `notebooks/`, then from the repository.

# %% tags=["parameters"]
scenario_path = "../scenarios/quickstart.yaml"  # the scenario to start from
results_dir = ""  # where run folders go; empty: $BROKERLAB_RESULTS, else results/
rate = "800/s"  # offered load of all producers together
consumers = 2  # competing consumers in one group
processing_mean = "1ms"  # mean processing time; the scenario's distribution keeps its shape
messages = 20000  # messages to simulate (replaces the scenario's duration)
faults = None  # None keeps the scenario's faults; a list replaces them (see below)
seed = 1
sweep_rates = ["500/s", "1000/s", "1500/s", "1900/s"]  # the what-if sweep over offered load
run_real = True  # also run against a real broker (the lab starts its own when needed)
real_target = "redis-streams"  # redis-streams, nats or nats-jetstream
real_duration = "3s"  # seconds of load on the real broker (and the simulator beside it)

# %%
# %matplotlib inline
# The parameters cell comes first (papermill), so imports follow it.
# ruff: noqa: E402
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from IPython.display import Markdown, display
from matplotlib.figure import Figure

from brokerlab.app import figures
from brokerlab.app.compare import compare
from brokerlab.app.notebook import lab_path, results_path
from brokerlab.app.runner import RunOptions, RunRecord, run_scenario
from brokerlab.core.analysis import latency_table
from brokerlab.core.scenario import Scenario, load_scenario, parse_scenario
from brokerlab.core.units import format_duration, parse_duration, parse_rate

scenario_file = lab_path(scenario_path)
results = results_path(results_dir)
print(f"kernel: {sys.executable}")
print(f"scenario: {scenario_file}\nresults: {results}")

# %% [markdown]
# ## The scenario, changed by the parameters
#
# Scenarios are immutable: the notebook edits the scenario's data and validates it again, so a
# bad parameter gets the same clear message as a bad scenario file. The processing time keeps the
# scenario's distribution (here a long-tailed lognormal) and is scaled to the new mean. A list in
# `faults` replaces the scenario's fault timeline (fields as in `docs/scenarios.md`, e.g.
# `[{"at": "5s", "action": "consumer-crash", "duration": "2s", "target": "consumer-0"}]`);
# fault windows are shaded in the figures over time.
#
# **Utilisation** is offered load ÷ what the consumers can process
# (`rate × mean processing time ÷ consumers`). Queueing grows without bound as it nears 1.


# %%
def scaled(distribution: dict[str, Any], factor: float) -> dict[str, Any]:
    """A time distribution (scenario data) with every time in it multiplied by ``factor``."""
    return {
        name: value
        if name == "dist"
        else [v * factor for v in value]
        if isinstance(value, list)
        else value * factor
        for name, value in distribution.items()
    }


def utilisation(scenario: Scenario) -> float:
    """Offered load over the consumers' processing capacity."""
    consumers = scenario.consumers
    return scenario.producers.rate * consumers.processing.mean / consumers.count


base = load_scenario(scenario_file)
data = base.model_dump(mode="json")
data["producers"].update(rate=parse_rate(rate), messages=int(messages), duration=None)
data["consumers"]["count"] = int(consumers)
wanted_mean = parse_duration(processing_mean)
if base.consumers.processing.mean > 0 and wanted_mean > 0:
    factor = wanted_mean / base.consumers.processing.mean
    data["consumers"]["processing"] = scaled(data["consumers"]["processing"], factor)
else:
    data["consumers"]["processing"] = {"dist": "exponential", "mean": wanted_mean}
if faults is not None:
    data["faults"] = list(faults)
what_if = parse_scenario(data, f"{scenario_file.name} with the notebook's parameters")


def describe(scenario: Scenario) -> dict[str, Any]:
    """The knobs this notebook turns, as one column of a table."""
    producers, consumers = scenario.producers, scenario.consumers
    return {
        "offered rate (/s)": producers.rate,
        "messages": producers.total_messages,
        "consumers": consumers.count,
        "processing": consumers.processing.dist,
        "processing mean (ms)": round(consumers.processing.mean * 1000, 4),
        "utilisation": round(utilisation(scenario), 3),
        "faults": len(scenario.faults),
        "broker": scenario.broker.kind,
    }


display(pd.DataFrame({"scenario file": describe(base), "what-if": describe(what_if)}))

# %% [markdown]
# ## Simulate it
#
# The simulator plays the broker kind named in the scenario; a seed makes the run identical
# every time.

# %%
options = RunOptions(seed=seed, results_dir=results)
run = run_scenario(what_if, "sim", options, source=str(scenario_file))
warmup = what_if.producers.warmup
print(f"run folder: {run.path}")
print(f"simulated {run.metrics['duration_s']:.1f} s of traffic in {run.wall_time_s:.2f} s")
display(Markdown(f"**Verdict: {run.metrics['verdict']}** against the scenario's requirements"))
display(pd.DataFrame(run.metrics["requirements"]).set_index("name"))
for warning in [*run.result.warnings, *run.analysis.warnings]:
    print(f"warning: {warning}")

# %% [markdown]
# Latencies are in milliseconds and leave out the warm-up. `end_to_end` counts from the
# *intended* send time to the first delivery, so queueing in front of a producer is not hidden;
# `completion` adds processing; `publish` is the broker's acknowledgement.

# %%
display(latency_table(run.analysis).round(3))
counts = pd.Series(run.metrics["counts"], name="messages").to_frame()
counts.index.name = "count"
display(counts.T)
display(pd.Series(run.metrics["throughput_per_s"], name="messages / s").to_frame().T)

# %% [markdown]
# The latency spectrum puts each "nine" at the same width, so the tail — where brokers and
# configurations differ — is as visible as the median. The consumer lag is the number of
# messages sent and not yet received; a lag that keeps growing means the consumers cannot keep
# up.

# %%
trace = run.result.trace
end_to_end = figures.latency_samples(trace.sends, trace.deliveries, "end_to_end", warmup)
completion = figures.latency_samples(trace.sends, trace.deliveries, "completion", warmup)
figures.latency_spectrum(
    {"end-to-end": end_to_end, "completion": completion}, title="simulated latency by percentile"
)

# %%
figures.backlog_timeline({"sim": trace.timeline}, {"sim": run.result.faults})

# %%
figures.throughput_timeline({"sim": trace.timeline}, {"sim": run.result.faults})

# %% [markdown]
# ## What if the rate changes?
#
# The same what-if scenario at several offered rates. The simulator makes a sweep cheap: each
# point is a full run (stored under one sweep folder), and the curve shows where p99 latency
# starts to climb — the headroom you have before the consumers saturate. The verdict holds each
# point against the scenario's requirements, throughput included: an offered rate below the
# required throughput fails by construction.

# %%
started = datetime.now(UTC)
sweep_dir = results / f"{started:%Y%m%d-%H%M%S}-{what_if.name}-sweep"
sweep: dict[str, RunRecord] = {}
loads: dict[str, float] = {}
for offered in sweep_rates:
    producers = what_if.producers.model_copy(update={"rate": parse_rate(offered)})
    point = what_if.model_copy(update={"producers": producers})
    label = f"{point.producers.rate:g}/s"
    loads[label] = utilisation(point)
    sweep[label] = run_scenario(
        point,
        "sim",
        RunOptions(seed=seed, out=sweep_dir / f"rate-{point.producers.rate:g}"),
        source=str(scenario_file),
    )
sweep_table = pd.DataFrame(
    {
        label: {
            "offered /s": record.metrics["throughput_per_s"]["offered"],
            "utilisation": round(loads[label], 3),
            "delivered /s": record.metrics["throughput_per_s"]["delivered"],
            "end_to_end p50 ms": record.metrics["latency_ms"]["end_to_end"]["p50"],
            "end_to_end p99 ms": record.metrics["latency_ms"]["end_to_end"]["p99"],
            "end_to_end p99.9 ms": record.metrics["latency_ms"]["end_to_end"]["p99_9"],
            "completion p99 ms": record.metrics["latency_ms"]["completion"]["p99"],
            "verdict": record.metrics["verdict"],
        }
        for label, record in sweep.items()
    }
).T
sweep_table.index.name = "rate"
sweep_table.to_csv(sweep_dir / "sweep.csv")
print(f"sweep folder: {sweep_dir}")
display(sweep_table)


# %%
def utilisation_curve(table: pd.DataFrame, bound_ms: float | None) -> Figure:
    """p50 and p99 end-to-end latency against offered load, with utilisation on top."""
    figure = Figure(figsize=(9.0, 4.2), layout="constrained")
    ax = figure.subplots()
    offered = table["offered /s"].astype(float)
    for column, color in (("end_to_end p50 ms", "#9a9a9a"), ("end_to_end p99 ms", "#1f77b4")):
        ax.plot(offered, table[column].astype(float), "o-", color=color, label=column)
    highest = float(table["end_to_end p99 ms"].astype(float).max())
    if bound_ms is not None and bound_ms <= 2 * highest:
        ax.axhline(bound_ms, color="#d62728", linestyle="--", linewidth=1, label="p99 bound")
    elif bound_ms is not None:  # far above: drawing it would flatten the curve
        ax.plot([], [], color="#d62728", linestyle="--", label=f"p99 bound {bound_ms:g} ms, above")
    per_message = float((table["utilisation"] / offered).iloc[0])
    top = ax.secondary_xaxis(
        "top", functions=(lambda rate: rate * per_message, lambda load: load / per_message)
    )
    top.set_xlabel("utilisation of the consumers")
    ax.set_xlabel("offered load (messages / s)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_ylim(bottom=0)
    ax.grid(True, color="#d9d9d9", linewidth=0.7)
    ax.legend(frameon=False, fontsize=9, loc="upper left")
    figure.suptitle("latency against offered load (simulated)", x=0.01, ha="left", fontsize=11)
    return figure


p99_bound = what_if.requirements.latency.get("end_to_end", {}).get("p99")
utilisation_curve(sweep_table, p99_bound * 1000 if p99_bound is not None else None)

# %%
sweep_colors = figures.target_colors(list(sweep))
figures.latency_spectrum(
    {
        label: figures.latency_samples(
            record.result.trace.sends, record.result.trace.deliveries, "end_to_end", warmup
        )
        for label, record in sweep.items()
    },
    title="end-to-end latency by percentile, per offered rate",
    colors=sweep_colors,
)

# %% [markdown]
# ### Try it interactively
#
# With `ipywidgets` installed (it is optional; the lab does not depend on it), a slider re-runs
# the simulator at the rate you pick. Interactive runs go to a scratch folder, not `results/`.

# %%
try:
    import ipywidgets
except ImportError:
    ipywidgets = None

if ipywidgets is None:
    print("ipywidgets is not installed: change `rate` in the parameters cell and run again.")
else:
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="brokerlab-what-if-"))

    def what_if_rate(offered: float = what_if.producers.rate) -> None:
        """Simulate the what-if scenario at ``offered`` messages per second."""
        producers = what_if.producers.model_copy(update={"rate": float(offered)})
        point = what_if.model_copy(update={"producers": producers})
        record = run_scenario(point, "sim", RunOptions(seed=seed, results_dir=scratch))
        print(f"utilisation {utilisation(point):.2f}, verdict {record.metrics['verdict']}")
        display(latency_table(record.analysis).round(3))

    ipywidgets.interact_manual(
        what_if_rate,
        offered=ipywidgets.FloatSlider(
            value=what_if.producers.rate,
            min=50,
            max=2 * what_if.producers.rate,
            step=50,
            description="rate /s",
        ),
    )

# %% [markdown]
# ## The same against a real broker, in one call
#
# `compare` runs the scenario on the simulator and on a real broker with the same seed and load
# plan, and writes one comparison folder (open it with notebook 03 for a full report). With no
# broker URL the lab starts its own `redis-server` or `nats-server` and stops it afterwards. The
# real broker needs wall-clock time, so it runs for `real_duration` instead of `messages`; the
# simulator models the same broker kind so the difference is model error, not broker choice.

# %%
if run_real:
    real_data = what_if.model_dump(mode="json")
    real_data["producers"].update(messages=None, duration=parse_duration(real_duration))
    real_data["broker"]["kind"] = real_target
    real_scenario = parse_scenario(real_data, f"{scenario_file.name} on {real_target}")
    comparison = compare(
        real_scenario,
        ["sim", real_target],
        RunOptions(seed=seed, results_dir=results),
        source=str(scenario_file),
    )
    print(f"comparison folder: {comparison.path}")
    load = format_duration(real_scenario.producers.duration or 0)
    print(f"{load} of load at {real_scenario.producers.rate:g}/s on each target")
    for target, error in comparison.errors.items():
        print(f"{target} did not run: {error}")
    display(comparison.table)
else:
    comparison = None
    print("run_real is False: set it to True to run the scenario on a real broker.")

# %%
if comparison is not None and comparison.runs:
    colors = figures.target_colors(list(comparison.runs))
    display(
        figures.latency_spectrum(
            {
                target: figures.latency_samples(
                    record.result.trace.sends,
                    record.result.trace.deliveries,
                    "end_to_end",
                    real_scenario.producers.warmup,
                )
                for target, record in comparison.runs.items()
            },
            title="end-to-end latency: simulator and real broker",
            colors=colors,
        )
    )
    display(
        figures.backlog_timeline(
            {target: record.result.trace.timeline for target, record in comparison.runs.items()},
            {target: record.result.faults for target, record in comparison.runs.items()},
            colors=colors,
        )
    )
