"""The results store: one folder per run, written completely or not at all, never overwritten.

A run folder holds ``scenario.yaml`` (the scenario as run, in base units), the trace files,
``metrics.json`` and ``run.json`` (provenance: versions, seed, wall time, host). Folders are
first written under a hidden temporary name and renamed when complete, so an interrupted run
leaves nothing that looks like a result.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"
RUN_FILE = "run.json"
SCENARIO_FILE = "scenario.yaml"

#: Packages whose versions change results; recorded in every run.json.
TRACKED_PACKAGES = (
    "brokerlab",
    "simpy",
    "numpy",
    "pandas",
    "pyarrow",
    "hdrhistogram",
    "pydantic",
    "redis",
    "nats-py",
)


class ResultsError(Exception):
    """A user's mistake about where results go (e.g. ``--out`` points at an earlier run)."""


def default_results_dir() -> Path:
    """``$BROKERLAB_RESULTS`` or ``./results``: runs land next to the user's scenarios."""
    return Path(os.environ.get("BROKERLAB_RESULTS", "results"))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def new_run_id(scenario: str, target: str, seed: int, when: datetime | None = None) -> str:
    """A sortable, readable id: ``20261126-141503-mm1-sim-s1``."""
    when = when or datetime.now(UTC)
    return f"{when:%Y%m%d-%H%M%S}-{_slug(scenario)}-{_slug(target)}-s{seed}"


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages that shape results."""
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def host_info() -> dict[str, Any]:
    """Where the run happened, so numbers from different machines are not mixed up."""
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python_executable": sys.executable,
    }


def choose_run_dir(results_dir: Path, run_id: str, out: Path | None) -> Path:
    """The final folder of a run: exactly ``out`` if given, else a fresh one under results.

    Refuses an ``out`` that already holds files, because a run never overwrites an earlier one.
    """
    if out is not None:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ResultsError(f"{out}: already exists and is not empty; runs never overwrite")
        return out
    candidate = results_dir / run_id
    suffix = 2
    while candidate.exists():
        candidate = results_dir / f"{run_id}-{suffix}"
        suffix += 1
    return candidate


def _remove_abandoned_stages(folder: Path) -> None:
    """Delete staging folders of runs whose process is gone (killed with SIGKILL, power cut)."""
    for stage in folder.glob(".*.partial-*"):
        pid = stage.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stage, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; rename it into place only on success.

    A run killed outright cannot clean up after itself; its staging folder is hidden, ignored by
    listings, and removed by the next run that stages in the same folder.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_stages(final.parent)
    staging = final.parent / f".{final.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():  # an empty folder named by --out
        final.rmdir()
    staging.rename(final)


def write_json(path: Path, data: Any) -> None:
    """JSON that every tool reads: no NaN or Infinity (they become errors, not bad files)."""
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class RunSummary:
    """One line of ``brokerlab list``: what a results folder holds."""

    path: Path
    run_id: str
    scenario: str
    target: str
    started_at: str
    verdict: str
    kind: str = "run"


def list_runs(results_dir: Path) -> list[RunSummary]:
    """Every complete run or comparison under ``results_dir``, oldest first."""
    runs: list[RunSummary] = []
    if not results_dir.is_dir():
        return runs
    for folder in sorted(p for p in results_dir.iterdir() if p.is_dir()):
        if folder.name.startswith("."):
            continue
        try:
            run = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        verdict = "?"
        try:
            verdict = json.loads((folder / METRICS_FILE).read_text(encoding="utf-8"))["verdict"]
        except (OSError, ValueError, KeyError):
            verdict = run.get("verdict", "?")
        runs.append(
            RunSummary(
                path=folder,
                run_id=folder.name,
                scenario=str(run.get("scenario", "?")),
                target=str(run.get("target", ",".join(run.get("targets", [])) or "?")),
                started_at=str(run.get("started_at", "?")),
                verdict=str(verdict),
                kind=str(run.get("kind", "run")),
            )
        )
    return runs
