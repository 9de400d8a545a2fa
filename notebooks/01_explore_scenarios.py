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
# It uses only the lab's Python API (`import brokerlab as bl`, see `docs/api.md`). Every run is
# stored like `brokerlab run` stores it (a folder under `results_dir`), so a report can be made
# from it later (notebook 03). Change the parameters in the next cell, or pass them with
# papermill (`-p rate 1200/s`). A relative path is looked up from the kernel's folder, then from
# `notebooks/`, then from the repository.

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

from IPython.display import display

import brokerlab as bl

results = results_dir or None  # None: $BROKERLAB_RESULTS, else results/
print(f"kernel: {sys.executable}")

# %% [markdown]
# ## The scenario, changed by the parameters
#
# Scenarios are immutable: `with_` returns a changed copy, validated exactly as a scenario file
# is, so a bad parameter gets the same clear message (file, field, reason) as a bad file. The
# processing time keeps the scenario's distribution (here a long-tailed lognormal) and is
# scaled to the new mean. A list in `faults` replaces the scenario's fault timeline (fields as
# in `docs/scenarios.md`, e.g.
# `[{"at": "5s", "action": "consumer-crash", "duration": "2s", "target": "consumer-0"}]`);
# fault windows are shaded in the figures over time.
#
# **Utilisation** is offered load ÷ what the consumers can process
# (`rate × mean processing time ÷ consumers`). Queueing grows without bound as it nears 1.

# %%
base = bl.load(scenario_path)
what_if = base.with_(
    rate=rate, consumers=consumers, processing_mean=processing_mean, messages=messages
)
if faults is not None:
    what_if = what_if.with_(faults=faults)
bl.describe(**{"scenario file": base, "what-if": what_if})

# %% [markdown]
# ## Simulate it
#
# The simulator plays the broker kind named in the scenario; a seed makes the run identical
# every time. The run shows its verdict against the scenario's requirements and its main
# numbers.

# %%
run = bl.simulate(what_if, seed=seed, results_dir=results)
print(f"simulated {run.metrics['duration_s']:.1f} s of traffic in {run.wall_time_s:.2f} s")
display(run)

# %% [markdown]
# Latencies are in milliseconds and leave out the warm-up. `end_to_end` counts from the
# *intended* send time to the first delivery, so queueing in front of a producer is not hidden;
# `completion` adds processing; `publish` is the broker's acknowledgement. `run.latencies` has
# them per message, `run.sends` / `run.deliveries` / `run.timeline` are the trace.

# %%
run.latency_table().round(3)

# %% [markdown]
# The latency spectrum puts each "nine" at the same width, so the tail — where brokers and
# configurations differ — is as visible as the median. The consumer lag is the number of
# messages sent and not yet received; a lag that keeps growing means the consumers cannot keep
# up.

# %%
run.plot.latency_spectrum(["end_to_end", "completion"])

# %%
run.plot.backlog()

# %%
run.plot.throughput()

# %% [markdown]
# ## What if the rate changes?
#
# The same what-if scenario at several offered rates. The simulator makes a sweep cheap: each
# point is a full run (stored under one sweep folder), and the curve shows where p99 latency
# starts to climb — the headroom you have before the consumers saturate. The verdict holds each
# point against the scenario's requirements, throughput included: an offered rate below the
# required throughput fails by construction.

# %%
sweep_dir = bl.results_folder(f"{what_if.name}-sweep", results)
points = {str(offered): what_if.with_(rate=offered) for offered in sweep_rates}
sweep = bl.Runs(
    {
        label: bl.simulate(point, seed=seed, out=sweep_dir / f"rate-{point.producers.rate:g}")
        for label, point in points.items()
    }
)
sweep_table = sweep.load_table()
sweep_table.to_csv(sweep_dir / "sweep.csv")
print(f"sweep folder: {sweep_dir}")
display(sweep_table)

# %%
sweep.plot.latency_by_load()

# %%
sweep.plot.latency_spectrum()

# %% [markdown]
# ### Try it interactively
#
# With `ipywidgets` installed (it is optional; the lab does not depend on it), a slider re-runs
# the simulator at the rate you pick:
#
# ```python
# ipywidgets.interact_manual(lambda rate: bl.simulate(what_if.with_(rate=rate)), rate=(100, 2000))
# ```

# %% [markdown]
# ## The same against a real broker, in one call
#
# `bl.compare` runs the scenario on the simulator and on a real broker with the same seed and
# load plan, and writes one comparison folder (open it with notebook 03 for a full report). With
# no broker URL the lab starts its own `redis-server` or `nats-server` and stops it afterwards.
# The real broker needs wall-clock time, so it runs for `real_duration` instead of `messages`;
# the simulator models the same broker kind so the difference is model error, not broker choice.

# %%
if run_real:
    real_scenario = what_if.with_(duration=real_duration, kind=real_target)
    comparison = bl.compare(real_scenario, ["sim", real_target], seed=seed, results_dir=results)
    print(f"{real_duration} of load at {real_scenario.producers.rate:g}/s on each target")
    for target, error in comparison.errors.items():
        print(f"{target} did not run: {error}")
    display(comparison)
else:
    comparison = None
    print("run_real is False: set it to True to run the scenario on a real broker.")

# %%
if comparison is not None and len(comparison):
    display(comparison.plot.latency_spectrum())
    display(comparison.plot.backlog())
