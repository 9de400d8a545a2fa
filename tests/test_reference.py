"""The simulator against queueing theory and against independent reference implementations.

Completion time (``t_done - t_intended``) is computed here with NumPy straight from the trace, so
these tests depend only on the simulator and the trace schema.

Two kinds of check, and why both.

- **Same draws, independent recursion (exact).** Zero delays, FIFO: the simulator's completions
  must equal a textbook recursion fed the same arrival and service draws: Lindley's recursion
  for one server (M/M/1, M/D/1) and the Kiefer-Wolfowitz workload recursion for c FCFS servers
  (M/M/c). Any model error, 5% or 0.1%, shows as a mismatch well above the trace's 1 µs rounding.
- **Theory (statistical).** The mean against the closed form, with a tolerance taken from the
  run itself. Successive sojourn times at utilisation 0.8 are strongly correlated (a busy
  period carries many customers; for M/M/1 the relaxation time is
  1 / (mu * (1 - sqrt(rho))**2) = 89 ms, about 70 arrivals), so n sojourn times are far noisier
  than n independent draws. The standard error comes from batch means (batches of 5,000
  messages, about seventy relaxation times, so batches are close to independent) and the
  check allows ``Z`` standard errors. It is only meaningful if that band is narrower than the
  error it should catch: :func:`assert_matches_theory` also requires the half-width to be below
  5% of the theoretical mean, so a run long enough to pass would catch a 5% model error.
  ``test_the_checks_catch_a_five_percent_model_error`` shows it does.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from brokerlab.core.load import draw, plan_load, streams
from brokerlab.core.scenario import Scenario, load_scenario, parse_scenario
from brokerlab.sim import simulate
from brokerlab.sim.sampling import CHUNK

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
BATCH = 5_000
#: standard errors allowed (a correct simulator exceeds 3 about once in 300 runs per check)
Z = 3.0
#: the model error the statistical checks must be able to catch
DETECT = 0.05

#: scenario -> (mean completion s, relative tolerance at 500k) from queueing theory
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


def assert_matches_theory(values: np.ndarray, expected: float) -> None:
    """Mean within ``Z`` batch-means standard errors of theory, and the band narrow enough
    (``Z`` standard errors below ``DETECT`` of the mean) to catch a model error that large."""
    mean, error = batch_means(values)
    why = f"mean {mean:.6g} vs theory {expected:.6g}, se {error:.3g}"
    assert abs(mean - expected) < Z * error, why
    assert Z * error < DETECT * expected, f"too few messages to catch a 5% error: {why}"


def kiefer_wolfowitz(arrivals: np.ndarray, service: np.ndarray, servers: int) -> np.ndarray:
    """Completion times of c FCFS servers (Kiefer-Wolfowitz): customer k starts on the server
    that frees first, at the later of its arrival and that moment."""
    free = np.zeros(servers)
    done = np.empty_like(arrivals)
    for k, (arrival, work) in enumerate(zip(arrivals, service, strict=True)):
        earliest = int(np.argmin(free))
        free[earliest] = max(arrival, free[earliest]) + work
        done[k] = free[earliest]
    return done


def same_draws(name: str, messages: int, seed: int) -> tuple[Scenario, np.ndarray, np.ndarray]:
    """A shortened reference scenario, its arrival times and the service draws it will use."""
    scenario = reference(name, messages)
    arrivals = plan_load(scenario, seed).t_intended
    rng = streams(seed)["processing"]
    service = draw(scenario.consumers.processing, rng, CHUNK)[: len(arrivals)]
    return scenario, arrivals, service


@pytest.mark.parametrize("name", sorted(MEANS))
def test_mean_completion_matches_theory_within_batch_means_error(name: str) -> None:
    """Mean completion of 100,000 messages is within 4 batch-means standard errors of theory (a
    quick smoke check: at this length the band is 6-10% of the mean; the full-length test below
    is the one narrow enough to catch a 5% error)."""
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


@pytest.mark.parametrize("name", ["mm1", "md1", "mmc"])
def test_completions_equal_an_independent_recursion_on_the_same_draws(name: str) -> None:
    """Zero delays, FIFO: completions equal Lindley's recursion (one consumer: M/M/1, and M/D/1
    with constant service) or Kiefer-Wolfowitz's (four consumers: M/M/c) on the same draws."""
    scenario, arrivals, service = same_draws(name, 20_000, seed=7)
    done = kiefer_wolfowitz(arrivals, service, scenario.consumers.count)
    np.testing.assert_allclose(completion(scenario, seed=7), done - arrivals, rtol=0, atol=1.1e-6)


def test_the_checks_catch_a_five_percent_model_error() -> None:
    """Service times 5% too long fail both checks: the same-draws comparison at once, and the
    theory check at the length the quick test uses (its band is under 5% of the mean)."""
    scenario, arrivals, service = same_draws("md1", 20_000, seed=7)
    wrong = kiefer_wolfowitz(arrivals, service * 1.05, 1) - arrivals
    assert not np.allclose(completion(scenario, seed=7), wrong, rtol=0, atol=1.1e-6)

    data = yaml.safe_load((SCENARIOS / "md1.yaml").read_text())
    data["producers"]["messages"] = 200_000
    right = parse_scenario(data)
    data["consumers"]["processing"] = "1.05ms"
    wrong_model = parse_scenario(data)
    with pytest.raises(AssertionError, match="vs theory"):
        assert_matches_theory(completion(wrong_model, seed=2), MEANS["md1"][0])
    # ... while the right model passes the same check on the same number of messages
    assert_matches_theory(completion(right, seed=2), MEANS["md1"][0])


def test_md1_is_faster_than_mm1_with_the_same_mean_service() -> None:
    """Constant service halves queueing (Pollaczek-Khinchine): md1 waits less than mm1."""
    md1 = completion(reference("md1", 50_000)).mean()
    mm1 = completion(reference("mm1", 50_000)).mean()
    assert md1 < 0.8 * mm1


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MEANS))
def test_reference_table_at_full_length_seed_1(name: str) -> None:
    """The reference table: 500,000 messages, seed 1, within 3 batch-means standard errors of
    theory, the band under 5% of the mean."""
    expected, _ = MEANS[name]
    done = completion(reference(name), seed=1)
    assert len(done) == 500_000
    assert_matches_theory(done, expected)
    if name == "mm1":
        assert np.percentile(done, 99) == pytest.approx(MM1_P99, rel=0.09)
