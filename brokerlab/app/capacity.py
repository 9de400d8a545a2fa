"""Capacity answers: how far can this go, how many do I need, how long to catch up.

``find_capacity`` plays a scenario at chosen values of one field and searches for the edge where
the use case's requirements stop holding:

- ``rate``: the highest offered rate at which every requirement holds (bracket by doubling or
  halving with one seed, then bisect with every seed: near the edge one lucky seed must not
  decide). The answer is the highest rate that passed on every seed; the edge lies below the
  lowest rate that failed, and both are stated. When that rate did not fail but could not be
  told (an ``inconclusive`` run: the lab's own client, the machine or its host was the limit),
  the answer is a lower bound and says so (``edge: "unknown"`` in capacity.json, "at least" in
  the answer): the broker's own edge may lie far above what this machine can show.
- ``consumers`` / ``partitions``: the fewest that meet the requirements at the scenario's rate
  (doubling, then bisection on whole numbers, every seed at every step).
- ``catch-up``: every consumer is down for ``outage`` at the scenario's rate; the time from
  their return until the consumer lag is back to what it was before, and whether the broker's
  retention or max length dropped anything meanwhile.

"Meets the requirements" means, on every seed: the verdict is ``pass`` (an ``inconclusive``
verdict is not a pass, and the evidence says so) and the consumers keep up (delivered rate at
least ``keep_up`` × offered; without it an open-loop run with no latency bound could "pass" at
any rate). The searches assume more rate only makes things worse and more consumers or
partitions only better; the evidence lists every point so a reader can check.

Every evaluated point is an ordinary run folder under ``DIR/runs/`` (reused when the search is
run again), played through the sweep machinery, so seeds of one step run in parallel on Dask.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brokerlab.app import runner, sweep_figures
from brokerlab.app.sweep import (
    Axis,
    Executor,
    Outcome,
    Point,
    SweepError,
    Task,
    build_points,
    choose_placement,
    run_tasks,
    seeds_for,
)
from brokerlab.core import results
from brokerlab.core.analysis import bulk_delivered_rate, inconclusive_reasons
from brokerlab.core.scenario import Scenario, parse_scenario, scenario_to_yaml
from brokerlab.core.trace import DELIVERIES_FILE, SENDS_FILE, Trace, build_timeline
from brokerlab.core.units import format_duration

CAPACITY_FILE = "capacity.json"
FINDS = ("rate", "consumers", "partitions", "catch-up")
#: Field path each search varies.
PATHS = {
    "rate": "producers.rate",
    "consumers": "consumers.count",
    "partitions": "broker.partitions",
}
#: Doublings (or halvings) while bracketing before giving up.
MAX_BRACKET_STEPS = 12
#: The largest count the consumers / partitions searches try.
MAX_COUNT = 4096
#: How many times catch-up lengthens the run after the outage when the lag is still high.
CATCH_UP_EXTENSIONS = 3


class CapacityError(SweepError):
    """A user's mistake in a capacity question (exit code 2, nothing written)."""


@dataclass
class Evidence:
    """One evaluated point: the value tried, and how each seed did."""

    value: float
    ok: bool
    seeds: list[dict[str, Any]]
    step: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "ok": self.ok,
            "step": self.step,
            "note": self.note,
            "seeds": self.seeds,
        }


@dataclass
class CapacityResult:
    """The answer, how sure it is, and the evidence; ``to_json`` is capacity.json."""

    find: str
    value: float | int | None
    target: str
    answer: str
    path: Path
    points: list[Evidence] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "find": self.find,
            "value": self.value,
            "target": self.target,
            "answer": self.answer,
            **self.extra,
            "points": [p.to_dict() for p in self.points],
        }


def _bulk_ratio(folder: Path | None, offered: float) -> float | None:
    """The run in ``folder``'s delivered rate up to 99% of its messages, as a share of
    ``offered`` (:func:`brokerlab.core.analysis.bulk_delivered_rate`); None where it cannot
    tell (no trace, too few messages, fewer than 99% delivered)."""
    if folder is None or not offered:
        return None
    try:
        sends = pd.read_parquet(folder / SENDS_FILE, columns=["msg_id", "t_sent"])
        deliveries = pd.read_parquet(folder / DELIVERIES_FILE, columns=["msg_id", "t_delivered"])
    except (OSError, ValueError):
        return None
    rate = bulk_delivered_rate(sends, deliveries)
    return None if rate is None else rate / offered


def _seed_evidence(outcome: Outcome, keep_up: float, out: Path) -> tuple[bool, dict[str, Any]]:
    """Did this run meet the requirements and keep up? With the numbers that decided it."""
    entry: dict[str, Any] = {
        "seed": outcome.task.seed,
        "run": str(outcome.folder.relative_to(out)) if outcome.folder else None,
    }
    if outcome.error or not outcome.metrics:
        entry.update(verdict=None, ok=False, why=[f"run failed: {outcome.error}"])
        entry["reasons"] = ["run failed"]
        return False, entry
    metrics = outcome.metrics
    missed = [r for r in metrics["requirements"] if r["ok"] is False]
    why = [f"{r['name']}: measured {r['measured']} vs bound {r['bound']}" for r in missed]
    reasons = [f"{r['name']} missed" for r in missed]
    verdict = metrics["verdict"]
    if verdict == "inconclusive":
        unknown = "; ".join(inconclusive_reasons(metrics)) or "the run could not tell"
        why.append(f"verdict inconclusive ({unknown}): counted as not meeting the requirements")
        reasons.append("inconclusive")
    offered = metrics["throughput_per_s"]["offered"]
    delivered = metrics["throughput_per_s"]["delivered"] or 0.0
    ratio = delivered / offered if offered else math.nan
    if keep_up > 0 and not ratio >= keep_up:
        bulk = _bulk_ratio(outcome.folder, offered)
        if bulk is not None and bulk >= keep_up:
            # A few stragglers at the end of the run, not a shortfall (bulk_delivered_rate).
            entry["note"] = (
                f"delivered {ratio:.1%} of offered up to its last delivery, {bulk:.1%} up to "
                "99% of its messages: kept up (a few late messages at the end)"
            )
        else:
            why.append(f"delivered {ratio:.1%} of offered (< {keep_up:.0%}: does not keep up)")
            reasons.append("does not keep up")
    ok = verdict == "pass" and not why
    entry.update(
        verdict=verdict,
        ok=ok,
        why=why,
        reasons=reasons,
        delivered_ratio=round(ratio, 4) if ratio == ratio else None,
        latency_ms={
            kind: {s: metrics["latency_ms"][kind][s] for s in ("mean", "p50", "p99")}
            for kind in ("end_to_end", "completion")
        },
    )
    return ok, entry


class _Search:
    """Evaluates values of one field with the sweep machinery and keeps the evidence."""

    def __init__(
        self,
        scenario: Scenario,
        path: str,
        target: str,
        seeds: list[int],
        out: Path,
        executor: Executor,
        options: runner.RunOptions,
        keep_up: float,
        source: str | None,
        on_step: Callable[[str], None] | None,
    ):
        self.scenario, self.path, self.target, self.seeds = scenario, path, target, seeds
        self.out, self.executor, self.options = out, executor, options
        self.keep_up, self.source, self.on_step = keep_up, source, on_step
        self.points: list[Evidence] = []
        self.cache: dict[tuple[float, int], tuple[bool, dict[str, Any]]] = {}
        self._index = 0

    def point(self, value: float) -> Point:
        (point,) = build_points(self.scenario, [Axis(self.path, (value,), "capacity")])
        self._index += 1
        return Point(self._index, point.scenario, point.columns)

    def evaluate(self, value: float, step: str, seeds: Sequence[int] | None = None) -> bool:
        """True when every seed (default: all) meets the requirements at ``value``."""
        seeds = list(seeds or self.seeds)
        todo = [s for s in seeds if (value, s) not in self.cache]
        if todo:
            point = self.point(value)
            tasks = [Task(point, self.target, seed) for seed in todo]
            for outcome in run_tasks(
                tasks, self.out / "runs", self.executor, self.options, source=self.source
            ):
                self.cache[(value, outcome.task.seed)] = _seed_evidence(
                    outcome, self.keep_up, self.out
                )
        entries = [self.cache[(value, s)] for s in seeds]
        ok = all(e[0] for e in entries)
        notes = sorted({w for _, e in entries for w in e.get("reasons", [])})
        evidence = Evidence(value, ok, [e for _, e in entries], step, "; ".join(notes))
        self.points.append(evidence)
        if self.on_step:
            seeds_text = f"{sum(e[0] for e in entries)}/{len(entries)} seeds"
            self.on_step(
                f"{step:>9} {self.path}={_fmt(value)}: {'meets' if ok else 'FAILS'} "
                f"({seeds_text}){': ' + evidence.note if evidence.note and not ok else ''}"
            )
        return ok


def _undecided(seed: dict[str, Any]) -> bool:
    """A seed that did not meet the requirements only because its run could not tell: an
    inconclusive verdict (the lab's client, the machine or its host the limit) and no requirement
    measured as missed. Falling behind the offer counts as undecided too, since a limited lab
    sends and receives slower whatever the broker does."""
    reasons = seed.get("reasons", [])
    return "inconclusive" in reasons and not any(
        r.endswith(" missed") or r == "run failed" for r in reasons
    )


def _all_seeds(seeds: Sequence[int]) -> str:
    return "the one seed tried" if len(seeds) == 1 else f"all {len(seeds)} seeds"


def _fmt(value: float) -> str:
    return f"{value:,.6g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- rate


def _find_rate(search: _Search, tolerance: float, max_steps: int) -> tuple[Any, str, dict]:
    scenario = search.scenario
    start = scenario.producers.rate
    floor = scenario.requirements.throughput or 0.0
    first = search.seeds[:1]
    good: float | None = None
    bad: float | None = None
    rate = start
    if search.evaluate(rate, "start", first):
        good = rate
        for _ in range(max_steps):
            rate *= 2
            if not search.evaluate(rate, "double", first):
                bad = rate
                break
            good = rate
    else:
        bad = rate
        for _ in range(max_steps):
            rate /= 2
            if rate < floor:
                break
            if search.evaluate(rate, "halve", first):
                good = rate
                break
            bad = rate
    if good is None:
        return None, f"no rate down to {_fmt(bad or start)}/s meets the requirements", {}
    if bad is None:
        return (
            good,
            f"every rate tried up to {_fmt(good)}/s meets the requirements (no edge found)",
            {"lower": good, "upper": None},
        )
    # Near the edge every seed counts: bisect with all of them, then confirm the answer.
    while (bad - good) / good > tolerance:
        middle = (good + bad) / 2
        if search.evaluate(middle, "bisect"):
            good = middle
        else:
            bad = middle
    for _ in range(max_steps):
        if all((good, s) in search.cache and search.cache[(good, s)][0] for s in search.seeds):
            break
        if search.evaluate(good, "confirm"):
            break
        bad, good = good, good * (1 - 2 * tolerance)
    else:
        return None, "no confirmed rate meets the requirements on every seed", {}
    failed_at_bad = [p for p in search.points if p.value == bad]
    seeds_failed = sum(not s["ok"] for s in failed_at_bad[-1].seeds) if failed_at_bad else 0
    failures = [s for s in failed_at_bad[-1].seeds if not s["ok"]] if failed_at_bad else []
    if failures and all(_undecided(s) for s in failures):
        # Nothing was measured to fail there: the lab could not tell (its own client, the
        # machine or its host was the limit). The broker's edge may lie far above.
        why = next(
            (w for s in failures for w in s.get("why", []) if "inconclusive" in w),
            "verdict inconclusive",
        )
        return (
            good,
            f"a lower bound: every requirement held at {_fmt(good)}/s on "
            f"{_all_seeds(search.seeds)}, but at {_fmt(bad)}/s the lab could not tell ({why}), "
            "so the broker's own edge is not known; bisection resolution "
            f"{tolerance:.0%}",
            {"lower": good, "upper": bad, "edge": "unknown"},
        )
    uncertainty = (
        f"the edge lies between {_fmt(good)}/s (every requirement held on "
        f"{_all_seeds(search.seeds)}) and {_fmt(bad)}/s (failed on {seeds_failed} of "
        f"{len(failed_at_bad[-1].seeds) if failed_at_bad else 0} seeds tried); "
        f"bisection resolution {tolerance:.0%}"
    )
    return good, uncertainty, {"lower": good, "upper": bad}


# --------------------------------------------------------------------------- counts


def _find_count(search: _Search, start: int, what: str) -> tuple[Any, str, dict]:
    """Fewest whole ``what`` that meet the requirements (every seed at every step)."""
    passing: int | None = None
    failing = 0
    if search.evaluate(start, "start"):
        passing = start
    else:
        failing = start
        count = start
        while count < MAX_COUNT:
            count = min(count * 2, MAX_COUNT)
            if search.evaluate(count, "double"):
                passing = count
                break
            failing = count
    if passing is None:
        return None, f"no count of {what} up to {MAX_COUNT} meets the requirements", {}
    while passing - failing > 1:
        middle = (passing + failing) // 2
        if search.evaluate(middle, "bisect"):
            passing = middle
        else:
            failing = middle
    detail = f"{passing} meet the requirements on {_all_seeds(search.seeds)}" + (
        f"; {failing} do not" if failing else "; 1 is the least there can be"
    )
    return passing, detail, {"fails_at": failing or None}


# --------------------------------------------------------------------------- catch-up


def catch_up_scenario(scenario: Scenario, outage: float, after: float) -> tuple[Scenario, float]:
    """The scenario with every consumer down for ``outage`` seconds, load running ``after``
    seconds past the outage's end; returns it and when the outage starts."""
    start = max(scenario.producers.warmup, 5.0, outage / 2)
    data = scenario.model_dump(mode="json")
    data["producers"].update(messages=None, duration=start + outage + after)
    data["faults"] = [
        *data["faults"],
        {"at": start, "action": "consumer-crash", "duration": outage, "target": "consumers"},
    ]
    return parse_scenario(data, "catch-up scenario"), start


def lag_series(trace: Trace, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Consumer lag at the end of each ``step``: messages sent that no consumer has received yet,
    as the timeline's backlog counts it, at a finer grain, leaving out messages never delivered
    (dropped by max length or retention, or lost): a broker does not count what it dropped as
    lag, and they would keep the lag high forever."""
    sends = trace.sends[trace.sends["msg_id"].isin(trace.deliveries["msg_id"])]
    timeline = build_timeline(sends, trace.deliveries, interval=step)
    return timeline["t_end"].to_numpy(), timeline["backlog"].to_numpy()


def recovery_time(
    times: np.ndarray, lag: np.ndarray, outage_start: float, outage_end: float, warmup: float
) -> tuple[float | None, float]:
    """Seconds from ``outage_end`` until the lag is back to normal, and the normal level.

    Normal is the highest lag seen between warm-up and the outage (at least 1 message): the
    lag a healthy group lives with. None when the lag never returns to it.
    """
    before = lag[(times > warmup) & (times <= outage_start)]
    normal = float(max(before.max() if len(before) else 0, 1))
    after = np.nonzero((times >= outage_end) & (lag <= normal))[0]
    if not len(after):
        return None, normal
    return float(times[after[0]] - outage_end), normal


def _find_catch_up(
    search: _Search, outage: float, max_steps: int
) -> tuple[Any, str, dict[str, Any]]:
    scenario = search.scenario
    after = max(2 * outage, 5.0)
    for _ in range(max(1, min(max_steps, CATCH_UP_EXTENSIONS + 1))):
        played, start = catch_up_scenario(scenario, outage, after)
        end = start + outage
        sub = _Search(
            played, "drain_timeout", search.target, search.seeds, search.out, search.executor,
            search.options, 0.0, search.source, None,
        )  # fmt: skip
        sub.evaluate(played.drain_timeout, f"after {format_duration(after)}")
        per_seed = []
        for seed in search.seeds:
            entry = sub.cache[(played.drain_timeout, seed)][1]
            if not entry.get("run"):
                per_seed.append({"seed": seed, "run": None, "error": entry["why"]})
                continue
            folder = search.out / entry["run"]
            trace = Trace.read(folder)
            step = max(0.01, min(0.1, outage / 100))
            times, lag = lag_series(trace, step)
            seconds, normal = recovery_time(times, lag, start, end, scenario.producers.warmup)
            metrics = results_metrics(folder)
            figure = sweep_figures.catch_up(
                times, lag, (start, end), seconds, normal,
                title=f"consumer lag, {format_duration(outage)} outage at "
                f"{_fmt(scenario.producers.rate)}/s (seed {seed})",
            )  # fmt: skip
            sweep_figures.save(figure, search.out / "figures", f"catch-up-s{seed}")
            per_seed.append(
                {
                    "seed": seed,
                    "run": entry["run"],
                    "catch_up_s": None if seconds is None else round(seconds, 3),
                    "normal_lag": normal,
                    "peak_lag": int(lag.max()) if len(lag) else 0,
                    "lost": metrics["counts"]["lost"],
                    "verdict": metrics["verdict"],
                }
            )
        values = [p["catch_up_s"] for p in per_seed if p.get("catch_up_s") is not None]
        evidence = Evidence(after, bool(values) and len(values) == len(per_seed), per_seed,
                            f"load {format_duration(after)} after")  # fmt: skip
        search.points.append(evidence)
        if search.on_step:
            search.on_step(
                f"load for {format_duration(after)} after the outage: catch-up "
                + ", ".join(
                    "-" if p.get("catch_up_s") is None else f"{p['catch_up_s']:.2f} s"
                    for p in per_seed
                )
            )
        if len(values) == len(per_seed):
            break
        after *= 2
    broker = scenario.broker
    lost = sum(int(p.get("lost") or 0) for p in per_seed)
    limits = {"max_length": broker.max_length, "retention_s": broker.retention}
    extra: dict[str, Any] = {
        "outage_s": outage,
        "outage_start_s": start,
        "rate_per_s": scenario.producers.rate,
        "dropped": lost,
        "limits": limits,
        "per_seed": per_seed,
    }
    dropped = (
        f"retention/max length dropped {lost} messages"
        if lost
        else "nothing was dropped"
        + ("" if broker.max_length or broker.retention else " (no retention or max length set)")
    )
    if len(values) < len(per_seed):
        extra["catch_up_s"] = None
        return (
            None,
            f"the lag did not return to normal within {format_duration(after)}; " + dropped,
            extra,
        )
    mean = float(np.mean(values))
    spread = (
        f"{min(values):.2f}–{max(values):.2f} s over {len(values)} seeds"
        if len(values) > 1
        else "one seed"
    )
    extra.update(catch_up_s=round(mean, 3), catch_up_max_s=max(values))
    return round(mean, 3), f"{spread}; {dropped}", extra


def results_metrics(folder: Path) -> dict[str, Any]:
    return json.loads((folder / results.METRICS_FILE).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- entry point


def check_question(scenario: Scenario, find: str, target: str, outage: float | None) -> None:
    """Refuse a question that cannot be answered, before anything runs."""
    if find not in FINDS:
        raise CapacityError(f"--find: {find!r}; use one of {', '.join(FINDS)}")
    if target not in runner.TARGETS:
        raise CapacityError(f"--target: unknown target {target!r}; use {', '.join(runner.TARGETS)}")
    if find == "catch-up" and not outage:
        raise CapacityError(
            "--outage: --find catch-up needs how long consumers are down (e.g. 30s)"
        )
    if find != "catch-up" and outage:
        raise CapacityError("--outage: only --find catch-up uses an outage")
    if find == "partitions":
        played = runner.for_target(scenario, target)
        if target != "sim":
            raise CapacityError(f"--find partitions: {target} has no partitions")
        from brokerlab.sim.presets import resolve

        if not resolve(played.broker).partitioned:
            raise CapacityError(
                f"--find partitions: {played.broker.kind} is simulated without partitions; "
                "use a partitioned kind (kafka, kinesis, event-hubs)"
            )


def find_capacity(
    scenario: Scenario,
    find: str,
    *,
    target: str = "sim",
    out: Path | None = None,
    seeds: int = 3,
    outage: float | None = None,
    keep_up: float = 0.95,
    tolerance: float = 0.02,
    max_steps: int = MAX_BRACKET_STEPS,
    workers: int | None = None,
    scheduler: str | None = None,
    options: runner.RunOptions | None = None,
    source: str | None = None,
    on_step: Callable[[str], None] | None = None,
) -> CapacityResult:
    """Answer one capacity question for ``scenario`` on ``target``; write ``DIR/capacity.json``."""
    check_question(scenario, find, target, outage)
    if seeds < 1:
        raise CapacityError(f"--seeds: {seeds}: at least 1")
    if not 0 < tolerance < 1:
        raise CapacityError(f"--tolerance: {tolerance}: between 0 and 1")
    options = options or runner.RunOptions()
    placement = choose_placement(workers, scheduler)
    question = {
        "find": find,
        "target": target,
        "seeds": seeds,
        "outage": outage,
        "keep_up": keep_up,
        "tolerance": tolerance,
    }
    out = out or options.results_dir / _default_name(scenario, find, question)
    seed_list = seeds_for(scenario, seeds)
    path = PATHS.get(find, "drain_timeout")
    with Executor(placement) as executor:
        out.mkdir(parents=True, exist_ok=True)  # inputs checked, cluster reached: now write
        search = _Search(
            scenario, path, target, seed_list, out, executor, options, keep_up, source, on_step
        )
        if find == "rate":
            value, detail, extra = _find_rate(search, tolerance, max_steps)
            unit = "/s"
        elif find == "consumers":
            value, detail, extra = _find_count(search, scenario.consumers.count, "consumers")
            unit = " consumers"
        elif find == "partitions":
            value, detail, extra = _find_count(search, scenario.broker.partitions, "partitions")
            unit = " partitions"
        else:
            assert outage is not None
            value, detail, extra = _find_catch_up(search, outage, max_steps)
            unit = " s"
    lower_bound = extra.get("edge") == "unknown"
    answer = _answer(scenario, find, target, value, unit, detail, outage, lower_bound)
    result = CapacityResult(find, value, target, answer, out, search.points, extra)
    result.extra.update(
        scenario=scenario.name,
        scenario_file=source,
        seeds=seed_list,
        detail=detail,
        criteria={
            "requirements": [r for r in _requirements(scenario)],
            "keep_up": keep_up,
            "inconclusive": "counted as not meeting the requirements",
        },
        placement=placement.kind,
    )
    (out / results.SCENARIO_FILE).write_text(scenario_to_yaml(scenario), encoding="utf-8")
    results.write_json(out / CAPACITY_FILE, _jsonable(result.to_json()))
    return result


def _requirements(scenario: Scenario) -> list[str]:
    r = scenario.requirements
    named = [f"latency {k} {s} <= {format_duration(v)}" for k, b in r.latency.items()
             for s, v in b.items()]  # fmt: skip
    if r.throughput is not None:
        named.append(f"throughput >= {r.throughput:g}/s")
    if r.max_lost is not None:
        named.append(f"lost <= {r.max_lost}")
    if r.max_duplicates is not None:
        named.append(f"duplicates <= {r.max_duplicates}")
    if r.ordering == "per-key":
        named.append("per-key order")
    return named


def _answer(
    scenario: Scenario,
    find: str,
    target: str,
    value: Any,
    unit: str,
    detail: str,
    outage: float | None,
    lower_bound: bool = False,
) -> str:
    """The one line the command prints."""
    where = f"{scenario.name} on {target}"
    if value is None:
        return f"{where}: no answer: {detail}"
    if find == "rate":
        at_least = "at least " if lower_bound else ""
        return (
            f"{where}: highest rate meeting every requirement: {at_least}{_fmt(value)}/s ({detail})"
        )
    if find in ("consumers", "partitions"):
        return (
            f"{where}: fewest {find} meeting every requirement at "
            f"{_fmt(scenario.producers.rate)}/s: {value} ({detail})"
        )
    return (
        f"{where}: after a {format_duration(outage or 0)} consumer outage at "
        f"{_fmt(scenario.producers.rate)}/s the lag is back to normal in {value:.2f} s ({detail})"
    )


def _default_name(scenario: Scenario, find: str, question: dict[str, Any]) -> str:
    """``NAME-capacity-FIND-FINGERPRINT``: the same question finds the same folder, so asking
    it again reuses every run already made."""
    described = json.dumps(
        {"scenario": scenario.model_dump(mode="json"), **question}, sort_keys=True, default=str
    )
    fingerprint = hashlib.sha256(described.encode("utf-8")).hexdigest()[:10]
    return f"{scenario.name}-capacity-{find}-{fingerprint}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value
