"""The simulator against queueing theory: the reference scenarios of DESIGN.md.

Completion time (``t_done - t_intended``) is computed here with NumPy straight from the trace, so
these tests depend only on the simulator and the trace schema.

How wide the tolerances are, and why. Successive sojourn times in a queue at utilisation 0.8 are
strongly correlated (a busy period carries many customers), so the sample mean of n sojourn times
is far noisier than n independent draws: for M/M/1 the relaxation time is
1 / (mu * (1 - sqrt(rho))**2) = 89 ms, about 70 arrivals, and the variance of the mean is inflated
by a factor of order one hundred. Rather than pretend otherwise, the quick tests estimate the
standard error with batch means (batches of 5,000 messages, about seventy relaxation times each,
so batches are close to independent) and allow four standard errors, which a correct simulator
exceeds about once in 16,000 runs; they also check the bias is within a fixed bound so that a
very noisy run cannot pass by luck. The slow test plays the full 500,000 messages with seed 1 and
the table's own tolerances.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from brokerlab.core.load import draw, plan_load, streams
from brokerlab.core.scenario import Scenario, load_scenario
from brokerlab.sim import simulate
from brokerlab.sim.sampling import CHUNK

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
BATCH = 5_000

#: scenario -> (mean completion s, relative tolerance at 500k) from DESIGN.md
MEANS = {"mm1": (5.000e-3, 0.04), "mmc": (1.7455e-3, 0.04), "md1": (3.000e-3, 0.04)}
#: M/M/1 sojourn time is exponential with mean 5 ms: p99 = -ln(0.01) * 5 ms
MM1_P99 = -math.log(0.01) * 5e-3


def reference(name: str, messages: int | None = None) -> Scenario:
    """A reference scenario, optionally shortened to ``messages``."""
    scenario = load_scenario(SCENARIOS / f"{name}.yaml")
    if messages is None:
        return scenario
    producers = scenario.producers.model_copy(update={"messages": messages})
    return scenario.model_copy(update={"producers": producers})


def completion(scenario: Scenario, seed: int = 1) -> np.ndarray:
    """Completion time of each message's first delivery, in plan order."""
    trace = simulate(scenario, seed).trace
    first = trace.deliveries[trace.deliveries["delivery_no"] == 1]
    sends = trace.sends.set_index("msg_id")
    t_intended = sends.loc[first["msg_id"].to_numpy(), "t_intended"].to_numpy()
    assert len(first) == len(trace.sends), "every message completes in a reference run"
    done = first["t_done"].to_numpy() - t_intended
    order = np.argsort(t_intended, kind="stable")
    return done[order]


def batch_means(values: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error from non-overlapping batches (honest under autocorrelation)."""
    batches = values[: len(values) // BATCH * BATCH].reshape(-1, BATCH).mean(axis=1)
    return float(values.mean()), float(batches.std(ddof=1) / math.sqrt(len(batches)))


@pytest.mark.parametrize("name", sorted(MEANS))
def test_mean_completion_matches_theory_within_batch_means_error(name: str) -> None:
    """Mean completion of 100,000 messages is within 4 batch-means standard errors of theory."""
    expected, _ = MEANS[name]
    mean, error = batch_means(completion(reference(name, 100_000)))
    assert abs(mean - expected) < 4 * error, (name, mean, error)
    # The error itself must be small enough to mean something (about 2-3% here).
    assert error < 0.04 * expected, (name, error)


def test_mm1_tail_matches_exponential_sojourn() -> None:
    """M/M/1: the share of completions above the theoretical p99 (23.03 ms) is about 1%."""
    # Tail exceedances cluster in long busy periods: even at 200,000 messages the batch-means
    # error of a 1% share is about 0.2 percentage points.
    above = (completion(reference("mm1", 200_000)) > MM1_P99).astype("float64")
    share, error = batch_means(above)
    assert abs(share - 0.01) < 4 * error, (share, error)
    assert error < 0.004


def test_mm1_equals_lindley_recursion_on_the_same_draws() -> None:
    """One FIFO consumer, zero delays: completions equal Lindley's recursion on the same draws."""
    scenario = reference("mm1", 20_000)
    arrivals = plan_load(scenario, 7).t_intended
    rng = streams(7)["processing"]
    service = draw(scenario.consumers.processing, rng, CHUNK)[: len(arrivals)]
    done = np.empty_like(arrivals)
    previous = 0.0
    for k, (arrival, work) in enumerate(zip(arrivals, service, strict=True)):
        previous = max(arrival, previous) + work
        done[k] = previous
    np.testing.assert_allclose(completion(scenario, seed=7), done - arrivals, rtol=0, atol=1.1e-6)


def test_md1_is_faster_than_mm1_with_the_same_mean_service() -> None:
    """Constant service halves queueing (Pollaczek-Khinchine): md1 waits less than mm1."""
    md1 = completion(reference("md1", 50_000)).mean()
    mm1 = completion(reference("mm1", 50_000)).mean()
    assert md1 < 0.8 * mm1


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MEANS))
def test_reference_table_at_full_length_seed_1(name: str) -> None:
    """DESIGN.md's table: 500,000 messages, seed 1, the table's tolerances."""
    expected, tolerance = MEANS[name]
    done = completion(reference(name), seed=1)
    assert len(done) == 500_000
    assert done.mean() == pytest.approx(expected, rel=tolerance)
    if name == "mm1":
        assert np.percentile(done, 99) == pytest.approx(MM1_P99, rel=0.09)
