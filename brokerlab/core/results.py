"""The results store: one folder per run, written completely or not at all, never overwritten.

A run folder holds ``scenario.yaml`` (the scenario as run, in base units), the trace files,
``metrics.json`` and ``run.json`` (provenance: versions, seed, wall time, host). Folders are
first written under a hidden temporary name and renamed when complete, so an interrupted run
leaves nothing that looks like a result.

``run.json`` is a typed manifest (:data:`Manifest`), one model per folder kind, written by
:func:`write_manifest` and read by :func:`read_manifest` only: every command records the same
facts under the same keys, and a reader gets them checked instead of guessing with ``dict.get``.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from brokerlab.core.trace import FaultWindow

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
    """Versions of Python and of the packages that shape results (a fresh copy each call)."""
    return dict(_package_versions())


@functools.cache
def _package_versions() -> dict[str, str]:
    # Read once per process: a sweep writes a run folder per point, and scanning the installed
    # distributions' metadata each time cost about 10 ms per folder, on the process that also
    # feeds the sweep's workers.
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
        if final.exists():  # an empty folder named by --out
            final.rmdir()
        staging.rename(final)
    except BaseException:  # Ctrl-C included, even while renaming
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """JSON that every tool reads: no NaN or Infinity (they become errors, not bad files)."""
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- run.json

#: What a results folder holds: one run, or a group of runs made by one command.
ManifestKind = Literal["run", "comparison", "selection", "matrix"]
MANIFEST_KINDS: tuple[ManifestKind, ...] = get_args(ManifestKind)


class ManifestError(ValueError):
    """A run.json that is not a manifest: not JSON, an unknown kind, a field of the wrong type."""


class _Manifest(BaseModel):
    """What every run.json says: which command made the folder, from what, when and where.

    Frozen and closed (unknown fields are refused), so a command cannot write a key that the
    model, results/README.md and the readers do not know about.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ManifestKind
    #: The folder's name when it was written (folders may be moved; this one does not change).
    run_id: str
    scenario: str
    #: The scenario file the command was given (None when the scenario came from Python).
    scenario_file: str | None = None
    seed: int | None
    started_at: str
    versions: dict[str, str] = Field(default_factory=dict)
    host: dict[str, Any] = Field(default_factory=dict)


class RunManifest(_Manifest):
    """run.json of one run of one scenario on one target (``brokerlab run``, and each target
    inside a comparison, selection or matrix folder)."""

    kind: Literal["run"] = "run"
    #: Fingerprint of the scenario as played; ``select`` reuses runs with the same one.
    scenario_sha256: str | None = None
    target: str
    seed: int
    wall_time_s: float | None = None
    lab_version: str | None = None
    command: str | None = None
    #: Facts from the target (broker version, how it was started; never credentials).
    target_info: dict[str, Any] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    #: Deliveries of ids that were never sent (always a bug somewhere).
    unexpected: int = 0
    faults: list[FaultWindow] = Field(default_factory=list)
    #: The simulator's performance profile: ``"none"`` (an ideal broker, no calibrated costs)
    #: for simulated runs until calibration provides profiles (then a description of the one
    #: used: host, date, broker version, sources); None for real runs, which need no model.
    profile: str | dict[str, Any] | None = None


class _GroupManifest(_Manifest):
    """run.json of a folder that groups the runs of one command."""

    #: The targets (or candidates) the command was asked for, in the order given.
    targets: list[str]


class ComparisonManifest(_GroupManifest):
    """``brokerlab compare``: one run folder per target that produced a run."""

    kind: Literal["comparison"] = "comparison"
    #: Subfolders that hold a complete run (targets that failed are in ``errors``).
    runs: list[str] = Field(default_factory=list)
    errors: dict[str, str] = Field(default_factory=dict)
    verdicts: dict[str, str] = Field(default_factory=dict)

    @field_validator("runs", mode="before")
    @classmethod
    def _identity_map(cls, value: Any) -> Any:
        """Comparisons written before 2026-11-26 listed runs as a ``{target: folder}`` map."""
        return list(value.values()) if isinstance(value, dict) else value


class SelectionManifest(_GroupManifest):
    """``brokerlab select``: candidates run (or reused) and ranked."""

    kind: Literal["selection"] = "selection"
    #: Whether candidates with a real broker were run on it (False: simulator only).
    real: bool
    errors: dict[str, str] = Field(default_factory=dict)
    verdict: str


class MatrixManifest(_GroupManifest):
    """``brokerlab matrix``: every fault cell on every target."""

    kind: Literal["matrix"] = "matrix"
    verdict: str


#: Any run.json, told apart by ``kind``.
Manifest = RunManifest | ComparisonManifest | SelectionManifest | MatrixManifest
_MODELS: dict[str, type[_Manifest]] = {
    "run": RunManifest,
    "comparison": ComparisonManifest,
    "selection": SelectionManifest,
    "matrix": MatrixManifest,
}
assert tuple(_MODELS) == MANIFEST_KINDS


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Write ``folder/run.json``; the only writer of run.json, so every command writes the same."""
    path = folder / RUN_FILE
    write_json(path, manifest.model_dump(mode="json"))
    return path


def parse_manifest(data: Any, source: str | Path = RUN_FILE) -> Manifest:
    """A manifest from parsed JSON; ``source`` names the file in errors.

    Keys the model does not know are dropped rather than refused: a run.json written by a later
    version of the lab still reads. A missing ``kind`` means a single run (the oldest folders).
    """
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: expected a JSON object")
    kind = data.get("kind", "run")
    model = _MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ManifestError(f"{source}: kind: {kind!r} is not one of {', '.join(MANIFEST_KINDS)}")
    known = {key: value for key, value in data.items() if key in model.model_fields}
    try:
        return model.model_validate({**known, "kind": kind})  # type: ignore[return-value]
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in error.errors()
        )
        raise ManifestError(f"{source}: {problems}") from None


def read_manifest(folder: Path) -> Manifest:
    """``folder/run.json`` as its typed manifest; :class:`ManifestError` names file and field."""
    path = Path(folder) / RUN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ManifestError(f"{path}: cannot read: {error.strerror or error}") from None
    except ValueError as error:
        raise ManifestError(f"{path}: not valid JSON: {error}") from None
    return parse_manifest(data, path)


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
    """Every complete run or grouped folder under ``results_dir``, oldest first.

    Folders whose run.json is missing or unreadable are left out: they are not results.
    """
    runs: list[RunSummary] = []
    if not results_dir.is_dir():
        return runs
    for folder in sorted(p for p in results_dir.iterdir() if p.is_dir()):
        if folder.name.startswith("."):
            continue
        try:
            manifest = read_manifest(folder)
        except ManifestError:
            continue
        verdict = getattr(manifest, "verdict", "?")
        with suppress(OSError, ValueError, KeyError):  # a run's own verdict is in metrics.json
            verdict = json.loads((folder / METRICS_FILE).read_text(encoding="utf-8"))["verdict"]
        target = (
            manifest.target
            if isinstance(manifest, RunManifest)
            else ",".join(manifest.targets) or "?"
        )
        runs.append(
            RunSummary(
                path=folder,
                run_id=folder.name,
                scenario=manifest.scenario,
                target=target,
                started_at=manifest.started_at,
                verdict=str(verdict),
                kind=manifest.kind,
            )
        )
    return runs
