"""Broker servers the lab starts, owns and always stops: redis-server and nats-server (JetStream).

A run must measure a broker configured exactly as its scenario says, so the lab starts its own
server on a free loopback port instead of using whatever already runs on the machine, and it must
never leave one behind: not after a normal end, an exception, Ctrl-C, SIGTERM/SIGHUP, nor when the
lab itself is SIGKILLed. Five layers make that true:

1. ``with EmbeddedBroker(...)`` (or ``stop()``) for normal ends, exceptions and Ctrl-C;
2. a registry of running brokers stopped by ``atexit``;
3. SIGTERM/SIGHUP handlers that stop the brokers, then let the signal do what it did before;
4. on Linux, ``PR_SET_PDEATHSIG=SIGKILL`` in every child, so the kernel kills the brokers when the
   lab dies without running any Python (SIGKILL, OOM killer, segfault);
5. for the command line, :func:`interrupt_handling`: Ctrl-C cancels the running measurement so
   its teardown runs, and a deadline (:data:`INTERRUPT_DEADLINE`) cuts any teardown that hangs
   short, killing the brokers and worker processes, so Ctrl-C ends a run within seconds.

PDEATHSIG fires when the *thread* that forked the child exits, not the process. Children are
therefore always forked from one daemon "spawner" thread that lives as long as the process, so a
broker started from a short-lived worker thread (``asyncio.to_thread``, a thread pool) does not
die with that thread.

Notebook sessions want brokers that outlive one Python process: :func:`brokers_up` starts them
detached (own session, no PDEATHSIG, not in the registry) and records them in ``brokers.json``;
:func:`brokers_status`, :func:`connect_urls` and :func:`brokers_down` read that file, and only
ever signal a pid after checking it is still the binary, the start time and the data folder we
recorded, so a reused pid never gets our signal.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import ctypes
import fcntl
import json
import os
import queue
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import psutil

from brokerlab.adapters.binaries import (
    BrokerError,
    BrokerUnavailable,
    ServerBinary,
    find_server,
)
from brokerlab.adapters.targets import ServerKind, server_kinds
from brokerlab.core.scenario import Broker, Persistence

__all__ = [
    "HOST",
    "BrokerError",
    "BrokerStartError",
    "BrokerUnavailable",
    "EmbeddedBroker",
    "brokers_down",
    "brokers_status",
    "brokers_up",
    "connect_urls",
    "embedded_for",
    "free_port",
    "interrupt_handling",
    "interrupted",
    "interruptible",
    "stop_all",
]

HOST = "127.0.0.1"

#: Attempts to find a free port when the probed one is taken before the server binds it.
PORT_ATTEMPTS = 5

#: How long a signal handler or atexit waits for each broker to exit before SIGKILL.
EMERGENCY_STOP_TIMEOUT = 3.0

_POLL = 0.02  # seconds between readiness checks
_NATS_READY = "Server is ready"
_REDIS_READY = "Ready to accept connections"  # Redis 6.2 and 7.x alike
_ADDRESS_IN_USE = "address already in use"
#: How RabbitMQ (Erlang) and Tansu (Rust) say the same thing in their logs.
_ADDRESS_IN_USE_OTHER = ("eaddrinuse", "address in use")
#: Every server kind this module can start.
SERVER_KINDS = ("redis", "nats", "rabbitmq", "tansu")
#: How long a start may take by default: a RabbitMQ node boots an Erlang VM and its database
#: (3-4 s on an idle machine, 6-12 s measured on a busy 2-core one); the others start at once.
START_TIMEOUT = {"redis": 20.0, "nats": 20.0, "rabbitmq": 90.0, "tansu": 20.0}
#: The one plugin a private RabbitMQ node runs: per-queue statistics over HTTP (unacked counts,
#: which AMQP cannot report), lighter to boot than the management plugin.
RABBITMQ_PLUGINS = ("rabbitmq_prometheus",)
#: How often the node's queues publish their statistics (ms; RabbitMQ's default is 5000).
RABBITMQ_STATS_INTERVAL_MS = 500
#: What a Tansu broker is, for every place a Kafka-protocol run is labelled.
TANSU_LABEL = "Kafka protocol on Tansu, memory only, one node"


class BrokerStartError(BrokerError):
    """A server did not become ready; the message carries the end of its log."""


# --------------------------------------------------------------------------- ports


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the kernel's pick for port 0).

    Another process may take it before the server binds it; :meth:`EmbeddedBroker.start` retries
    on "address already in use". Port 0 itself is never handed to a server: nats-server reads
    it as "the default 4222" and redis-server as "no TCP at all".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


# --------------------------------------------------------------------------- dying with the lab

_PR_SET_PDEATHSIG = 1
_prctl: Callable[..., int] | None = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError, AttributeError):
        # Loaded in the parent: the child between fork and exec should do as little as possible.
        _prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn`` asking the kernel to SIGKILL the child when its parent thread exits."""

    def preexec() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl; then nobody would ever kill us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


class _Spawner:
    """One daemon thread that forks every owned broker, so PDEATHSIG lasts as long as the lab."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]
        self._jobs = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, job: Callable[[], Any]) -> Any:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="brokerlab-spawner", daemon=True
                )
                self._thread.start()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((job, future))
        try:
            return future.result()
        except BaseException:
            # Interrupted (Ctrl-C) while the child was being forked: nobody will own it.
            future.add_done_callback(_kill_unclaimed)
            raise

    def _serve(self) -> None:
        while True:
            job, future = self._jobs.get()
            try:
                future.set_result(job())
            except BaseException as error:  # handed back to the caller's thread
                future.set_exception(error)

    def forget(self) -> None:
        """After fork the thread does not exist in the child; start a new one when needed."""
        self._thread = None
        self._jobs = queue.SimpleQueue()
        self._lock = threading.Lock()


def _kill_unclaimed(future: concurrent.futures.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is None:
        with contextlib.suppress(Exception):
            future.result().kill()
            future.result().wait(5.0)


_spawner = _Spawner()


# --------------------------------------------------------------------------- registry


_registry_lock = threading.RLock()
_running: dict[int, EmbeddedBroker] = {}  # id(broker) -> broker, only brokers this process owns
_previous_handlers: dict[int, Any] = {}


def _register(broker: EmbeddedBroker) -> None:
    with _registry_lock:
        _running[id(broker)] = broker
    _install_signal_handlers()


def _unregister(broker: EmbeddedBroker) -> None:
    with _registry_lock:
        _running.pop(id(broker), None)


def stop_all(timeout: float = EMERGENCY_STOP_TIMEOUT) -> None:
    """Stop every broker this process started and still owns (atexit and signal handlers)."""
    with _registry_lock:
        brokers = list(_running.values())
    for broker in brokers:
        with contextlib.suppress(Exception):
            broker.stop(timeout)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    stop_all()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    # Re-raise with the default action so the exit status still says "killed by SIGTERM".
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_signal_handlers() -> None:
    """Chain SIGTERM/SIGHUP once, from the main thread (Python allows no other)."""
    if threading.current_thread() is not threading.main_thread():
        return
    with _registry_lock:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signum in _previous_handlers:
                continue
            previous = signal.getsignal(signum)
            if previous is signal.SIG_IGN or previous is None:
                continue  # the application chose to ignore it, or a C handler owns it
            _previous_handlers[signum] = previous
            signal.signal(signum, _on_signal)


def _after_fork_in_child() -> None:
    # A forked child (multiprocessing) must not stop its parent's brokers at exit.
    _running.clear()
    _spawner.forget()
    _interrupt_cleanups.clear()  # the parent's, not this child's


atexit.register(stop_all)
os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------------- Ctrl-C

#: Longest a command takes to end after Ctrl-C. Teardown (stop clients, delete the run's stream,
#: stop the broker) normally takes a second or two; if something in it hangs (a client library
#: that ignores cancellation, a blocking join, a broker restart in a thread), it is cut short
#: here, three seconds inside the ten the lab promises (a busy machine needs the margin).
INTERRUPT_DEADLINE = 7.0
#: Exit status of an interrupted command: 128 + SIGINT, what shells report for Ctrl-C.
INTERRUPTED_EXIT = 130

_interrupts = 0
_interrupt_cleanups: list[Callable[[], None]] = []
#: The measurement Ctrl-C cancels: (its event loop, its task), set by :func:`interruptible`.
_current_run: tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = None


def interrupted() -> bool:
    """True once Ctrl-C was pressed under :func:`interrupt_handling`."""
    return _interrupts > 0


@contextlib.contextmanager
def interrupt_handling(cleanup: Callable[[], None] | None = None) -> Iterator[bool]:
    """Within the block, Ctrl-C ends the program promptly and leaves no broker behind.

    The first Ctrl-C cancels the measurement running under :func:`interruptible` (its teardown
    runs: clients stop, the run's stream is deleted, the broker stops; then
    ``KeyboardInterrupt`` reaches the caller), or raises ``KeyboardInterrupt`` at once when none
    runs. It also arms a deadline: if the process still runs :data:`INTERRUPT_DEADLINE` seconds
    later, every broker and worker process it started is SIGKILLed, ``cleanup`` runs (e.g. to
    remove a half-written results folder) and the process exits with :data:`INTERRUPTED_EXIT`.
    A second Ctrl-C raises ``KeyboardInterrupt`` wherever the program is.

    Only from the main thread, and only where Ctrl-C has its default meaning: a program started
    in the background of a non-interactive shell inherits SIGINT ignored (so the terminal's
    Ctrl-C spares it) and keeps it ignored. Yields whether the handler was installed.
    """
    global _interrupts
    installable = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    if not installable:
        yield False
        return
    _interrupts = 0
    if cleanup is not None:
        _interrupt_cleanups.append(cleanup)
    signal.signal(signal.SIGINT, _on_interrupt)
    try:
        yield True
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if cleanup is not None:
            with contextlib.suppress(ValueError):
                _interrupt_cleanups.remove(cleanup)


async def interruptible(coroutine: Any) -> Any:
    """Await ``coroutine`` as the measurement Ctrl-C cancels (see :func:`interrupt_handling`).

    Cancelled by Ctrl-C, it raises ``KeyboardInterrupt`` once the coroutine's own teardown has
    run, and also when the coroutine finished anyway after Ctrl-C; without
    :func:`interrupt_handling` it is a plain ``await`` (``asyncio.run`` then deals with Ctrl-C in
    its own way).
    """
    global _current_run
    task = asyncio.current_task()
    assert task is not None
    previous, _current_run = _current_run, (asyncio.get_running_loop(), task)
    try:
        result = await coroutine
    except asyncio.CancelledError:
        if interrupted():
            raise KeyboardInterrupt from None
        raise
    finally:
        _current_run = previous
    if interrupted():
        # Ctrl-C came while the run was ending (during a blocking join, say) and its
        # cancellation found nothing left to cancel, or a library swallowed it: the user still
        # asked to stop, so the run is not kept.
        raise KeyboardInterrupt
    return result


def _on_interrupt(signum: int, frame: FrameType | None) -> None:
    global _interrupts
    _interrupts += 1
    if _interrupts > 1:
        raise KeyboardInterrupt
    threading.Thread(
        target=_cut_short,
        args=(time.monotonic() + INTERRUPT_DEADLINE,),
        name="brokerlab-interrupt-deadline",
        daemon=True,
    ).start()
    run = _current_run
    if run is not None and not run[1].done():
        loop, task = run
        # Thread-safe, and it wakes a loop sleeping in select() (the run may be in a thread).
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(task.cancel)
            return
    raise KeyboardInterrupt


def _cut_short(deadline: float) -> None:
    """The interrupt deadline: if the process still runs at ``deadline``, end it hard."""
    time.sleep(max(0.0, deadline - time.monotonic()))
    with contextlib.suppress(OSError):
        os.write(2, b"interrupted: teardown took too long; stopping brokers and workers by force\n")
    # No locks here: the main thread may hold them while it is stuck.
    for broker in list(_running.values()):
        process = broker._process
        if process is not None:
            with contextlib.suppress(OSError):
                os.kill(process.pid, signal.SIGKILL)
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children(recursive=True):  # spawned workers, anything else
            with contextlib.suppress(psutil.Error):
                child.kill()
    for cleanup in list(_interrupt_cleanups):
        with contextlib.suppress(Exception):
            cleanup()
    os._exit(INTERRUPTED_EXIT)


# --------------------------------------------------------------------------- the broker


class EmbeddedBroker:
    """One server process the lab owns: started on a free loopback port, stopped for sure.

    Args:
        kind: ``"redis"``, ``"nats"`` (always with JetStream), ``"rabbitmq"`` (a private node
            with its own name, ports and folders) or ``"tansu"`` (Kafka protocol, memory only).
        data_dir: where the server keeps its files and log; kept after stop so a restart finds
            the data, and so a failed run can be inspected. The caller removes it.
        persistence: the scenario's server-level durability (AOF policy / JetStream sync).
        port: a fixed port; by default a free one is picked and kept for restarts.
        detached: start in its own session without PDEATHSIG and outside the registry, so the
            server outlives this process (for ``brokers up``). Someone must stop it explicitly.
        binary: the server to run; by default found by :mod:`adapters.binaries`.
    """

    host: str
    port: int
    data_dir: Path
    pid: int | None
    info: dict[str, Any]

    def __init__(
        self,
        kind: str,
        data_dir: Path,
        *,
        persistence: Persistence | None = None,
        port: int | None = None,
        detached: bool = False,
        binary: ServerBinary | None = None,
    ) -> None:
        if kind not in SERVER_KINDS:
            raise ValueError(f"unknown server kind {kind!r}; use one of {', '.join(SERVER_KINDS)}")
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be 1..65535, got {port}")
        self.kind: ServerKind = kind  # type: ignore[assignment]
        self.host = HOST
        self.data_dir = Path(data_dir).resolve()
        self.persistence = persistence or Persistence()
        self.detached = detached
        self.binary = binary or find_server(kind)  # fail early, before any process exists
        self._port_fixed = port is not None
        self.port = port if port is not None else free_port()
        self.pid = None
        self.paused = False
        self._process: subprocess.Popen[bytes] | None = None
        # NATS reports its server_name in the INFO line: proof we reached our server, not a
        # stranger that grabbed the port. Constant across restarts like a real deployment's.
        self._server_name = f"brokerlab-{uuid.uuid4().hex[:12]}"
        #: RabbitMQ's Erlang distribution port (loopback only), kept across restarts.
        self.dist_port = free_port() if kind == "rabbitmq" else None
        #: RabbitMQ's Prometheus (statistics) port, chosen per start attempt until one succeeds.
        self.metrics_port: int | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        #: Tansu: the loopback port it advertises to clients when the lab's fault proxy must
        #: stand in their path (see :func:`embedded_for`); None advertises its own port.
        self.advertised_port: int | None = None
        self.info = {"kind": kind, **self.binary.as_dict(), "config": self._config_summary()}
        if kind == "tansu":
            self.info["label"] = TANSU_LABEL

    # ---- public surface

    @property
    def url(self) -> str:
        """Client URL, e.g. ``redis://127.0.0.1:PORT``, ``nats://...``, ``amqp://127.0.0.1:PORT/``
        (guest, allowed beyond loopback on a private node) or ``kafka://127.0.0.1:PORT``."""
        if self.kind == "rabbitmq":
            return f"amqp://{self.host}:{self.port}/"
        if self.kind == "tansu":
            return f"kafka://{self.host}:{self.port}"
        return f"{self.kind}://{self.host}:{self.port}"

    @property
    def node_name(self) -> str:
        """RabbitMQ's node name: unique per port, so the shared epmd keeps nodes apart."""
        return f"bl{self.port}@localhost"

    @property
    def log_path(self) -> Path:
        """The server's own log (stdout and stderr), appended across restarts."""
        return self.data_dir / f"{self.kind}-server.log"

    @property
    def running(self) -> bool:
        """True while the process we started has not exited (paused counts as running)."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float | None = None) -> None:
        """Start the server and return once a client can use it.

        Ready means: Redis answers PING and reports our pid; NATS logged "Server is ready" and
        its INFO line shows our server name with JetStream enabled. A port taken between probe
        and bind is retried on a new port, except after the first successful start, since
        ``restart`` promises the same port.
        """
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + (START_TIMEOUT[self.kind] if timeout is None else timeout)
        attempts = 1 if self._port_fixed else PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(deadline)
            except _AddressInUse:
                if attempt == attempts or time.monotonic() >= deadline:
                    raise BrokerStartError(
                        f"{self.kind}-server: port {self.port} is already in use"
                        + ("" if self._port_fixed else f" (tried {attempts} ports)")
                        + f"; log: {self.log_path}"
                    ) from None
                self.port = free_port()
                continue
            self._port_fixed = True
            return

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to exit (SIGTERM), SIGKILL it after ``timeout``; safe to repeat."""
        process = self._process
        if process is None:
            self._stop_epmd()
            return
        try:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                    # A stopped (paused) process only acts on SIGTERM once continued.
                    process.send_signal(signal.SIGCONT)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._sigkill_and_reap(process)
        finally:
            self._forget_process()
            self._stop_epmd()

    def kill(self) -> None:
        """SIGKILL the server now, as a crash would; data_dir stays for :meth:`restart`."""
        process = self._process
        if process is None:
            return
        try:
            self._sigkill_and_reap(process)
        finally:
            self._forget_process()

    def restart(self, timeout: float | None = None) -> None:
        """Start again on the same port with the same data_dir (stopping first if running)."""
        self.stop()
        self._port_fixed = True
        self.start(timeout)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing is answered."""
        self._require_running("pause").send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """Continue a paused server (SIGCONT)."""
        self._require_running("resume").send_signal(signal.SIGCONT)
        self.paused = False

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # After Ctrl-C the user is waiting: a broker that does not exit at once is killed sooner.
        ctrl_c = interrupted() or (exc_type is not None and issubclass(exc_type, KeyboardInterrupt))
        self.stop(EMERGENCY_STOP_TIMEOUT if ctrl_c else 10.0)

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"<EmbeddedBroker {self.kind} {self.url} pid={self.pid} {state}>"

    # ---- configuration

    def _config_summary(self) -> dict[str, Any]:
        mode = self.persistence.mode
        if self.kind == "redis":
            fsync = {"none": None, "periodic": "everysec", "always": "always"}[mode]
            summary: dict[str, Any] = {
                "persistence": mode,
                "appendonly": "no" if mode == "none" else "yes",
                "appendfsync": fsync,
                "save": "",
            }
            if mode == "periodic" and abs(self.persistence.interval - 1.0) > 1e-9:
                summary["note"] = (
                    f"Redis fsyncs the AOF once a second; interval "
                    f"{self.persistence.interval:g}s cannot be configured and is ignored"
                )
            return summary
        if self.kind == "rabbitmq":
            return {
                "persistence": mode,
                "node": "private (own node name, AMQP and distribution ports, folders)",
                "note": "durability is per queue and message (broker.queue_type, persistence)",
            }
        if self.kind == "tansu":
            return {
                "persistence": "none",
                "storage_engine": "memory://tansu/",
                "label": TANSU_LABEL,
            }
        return {"persistence": mode, "jetstream": True, "sync_interval": self._sync_interval()}

    def _sync_interval(self) -> str | None:
        """JetStream ``sync_interval``: None keeps the server default (2 minutes)."""
        if self.persistence.mode == "always":
            return "always"
        if self.persistence.mode == "periodic":
            return f"{max(1, round(self.persistence.interval * 1000))}ms"
        return None

    def _env(self) -> dict[str, str] | None:
        """The server's environment (None: the lab's own). A RabbitMQ node is configured
        entirely through it: its own node name, ports, folders, cookie (``HOME``) and epmd.

        What a node boots is cut to what the lab uses (measured: docs/architecture.md):
        a plugins folder holding only the applications the broker and its one plugin need
        (the VM looks every module up along that path, and RabbitMQ scans it for plugins and
        feature flags), no host-wide ``rabbitmq-env.conf``, and RabbitMQ's own VM defaults
        kept (no scheduler busy-waiting, which on a small machine takes CPU from the lab's
        clients)."""
        if self.kind != "rabbitmq":
            return None
        d = self.data_dir
        if self.metrics_port is None or not self._port_fixed:
            self.metrics_port = free_port()
        self.info["metrics_url"] = f"http://{self.host}:{self.metrics_port}"
        # Erlang terms, not the rabbitmq.conf format: the node then skips translating its
        # settings schema (Cuttlefish), a measurable part of its boot.
        (d / "rabbitmq.config").write_text(
            "%% written by brokerlab; rewritten on every start\n"
            f'[{{rabbit, [{{tcp_listeners, [{{"{self.host}", {self.port}}}]}},\n'
            "            {loopback_users, []},\n"
            f"            {{collect_statistics_interval, {RABBITMQ_STATS_INTERVAL_MS}}}]}},\n"
            " {rabbitmq_prometheus, [{tcp_config, "
            f'[{{ip, "{self.host}"}}, {{port, {self.metrics_port}}}]}}]}}].\n',
            encoding="utf-8",
        )
        (d / "enabled_plugins").write_text(f"[{','.join(RABBITMQ_PLUGINS)}].\n", encoding="utf-8")
        (d / "rabbitmq-env.conf").write_text("# written by brokerlab: nothing\n", encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        plugins_dir = _rabbitmq_plugins_dir(self.binary.path, d / "plugins", RABBITMQ_PLUGINS)
        if plugins_dir is not None:
            env["RABBITMQ_PLUGINS_DIR"] = str(plugins_dir)
        env.update(
            HOME=str(d),
            RABBITMQ_NODENAME=self.node_name,
            RABBITMQ_NODE_IP_ADDRESS=self.host,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.config"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(d / "pid"),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            # added to RabbitMQ's VM arguments, not replacing them (+sbwt none among them)
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            # exec the VM directly instead of a shell that traps signals: our pid is the node's
            RUNNING_UNDER_SYSTEMD="true",
            # A private epmd (started by the node, found and stopped by us on this port), so
            # the machine's own RabbitMQ and its epmd on 4369 are never touched.
            ERL_EPMD_PORT=str(self._epmd_port()),
        )
        return env

    def _epmd_port(self) -> int:
        port = self.info.get("epmd_port")
        if port is None:
            port = self.info["epmd_port"] = free_port()
        return int(port)

    def _start_epmd(self) -> None:
        """A private epmd for a RabbitMQ node, owned like the node (it dies with the lab);
        started once and kept across node restarts, as a machine's epmd would be."""
        if self.kind != "rabbitmq" or (self._epmd is not None and self._epmd.poll() is None):
            return
        epmd = shutil.which("epmd") or "epmd"
        argv = [epmd, "-port", str(self._epmd_port()), "-address", self.host]
        with open(self.data_dir / "epmd.log", "ab") as log:

            def popen(preexec: Callable[[], None] | None) -> subprocess.Popen[bytes]:
                return subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    close_fds=True,
                    start_new_session=True,
                    preexec_fn=preexec,
                )

            if self.detached:
                self._epmd = popen(None)
            else:
                parent = os.getpid()
                self._epmd = _spawner.run(lambda: popen(_die_with_parent(parent)))
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and self._epmd.poll() is None:
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self._epmd_port()), timeout=0.5),
            ):
                return
            time.sleep(_POLL)
        raise BrokerStartError(f"epmd for the RabbitMQ node did not listen on {self._epmd_port()}")

    def _stop_epmd(self) -> None:
        epmd, self._epmd = self._epmd, None
        if epmd is not None:
            self._sigkill_and_reap(epmd)

    def _argv(self) -> list[str]:
        if self.kind == "rabbitmq":
            return [str(self.binary.path)]
        if self.kind == "tansu":
            address = f"tcp://{self.host}:{self.port}"
            advertised = f"tcp://{self.host}:{self.advertised_port or self.port}"
            return [
                str(self.binary.path),
                "broker",
                "--listener-url", address,
                # Metadata answers send clients here: the fault proxy's port in a fault run
                "--advertised-listener-url", advertised,
                "--storage-engine", "memory://tansu/",
                # "tansu" in the cluster id: the adapter labels the run from it
                "--cluster-id", f"tansu-{self._server_name}",
            ]  # fmt: skip
        if self.kind == "redis":
            summary = self.info["config"]
            argv = [
                str(self.binary.path),
                "--port", str(self.port),
                "--bind", self.host,
                "--protected-mode", "no",  # loopback only, and no password to hand around
                "--dir", str(self.data_dir),
                "--daemonize", "no",
                "--logfile", "",  # stdout, which goes to log_path
                # No RDB snapshots: their background forks would add noise and durability the
                # scenario did not ask for; the AOF policy alone says what survives a crash.
                "--save", "",
                "--appendonly", summary["appendonly"],
            ]  # fmt: skip
            if summary["appendfsync"]:
                argv += ["--appendfsync", summary["appendfsync"]]
            return argv
        config = self.data_dir / "nats-server.conf"
        config.write_text(self._nats_config(), encoding="utf-8")
        return [str(self.binary.path), "-c", str(config)]

    def _nats_config(self) -> str:
        """A config file, because ``sync_interval`` has no command-line flag."""
        quote = json.dumps  # NATS config strings accept JSON-style double quotes
        lines = [
            "# written by brokerlab; rewritten on every start",
            f"server_name: {quote(self._server_name)}",
            f"listen: {quote(f'{self.host}:{self.port}')}",
            # monitoring on a port the server picks itself; found through the ports file
            f"http: {quote(f'{self.host}:-1')}",
            f"ports_file_dir: {quote(str(self.data_dir))}",
            "jetstream {",
            f"  store_dir: {quote(str(self.data_dir))}",
        ]
        sync = self._sync_interval()
        if sync == "always":
            lines.append("  sync_interval: always")
        elif sync is not None:
            lines.append(f"  sync_interval: {quote(sync)}")
        lines += ["}", ""]
        return "\n".join(lines)

    # ---- process control

    def _start_once(self, deadline: float) -> None:
        self._start_epmd()
        argv = self._argv()
        self.log_path.touch()
        log_offset = self.log_path.stat().st_size
        process = self._spawn(argv)
        self._process = process
        self.pid = process.pid
        self.paused = False
        if not self.detached:
            _register(self)
        self.info.update(
            argv=argv,
            log=str(self.log_path),
            data_dir=str(self.data_dir),
            pid=process.pid,
            port=self.port,
            url=self.url,
        )
        try:
            self._wait_ready(process, log_offset, deadline)
        except BaseException:
            # Not ready (or Ctrl-C while waiting): never leave a half-started server behind.
            with contextlib.suppress(Exception):
                self._sigkill_and_reap(process)
            self._forget_process()
            raise

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        env = self._env()
        with open(self.log_path, "ab") as log:

            def popen(preexec: Callable[[], None] | None) -> subprocess.Popen[bytes]:
                return subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    env=env,
                    close_fds=True,
                    # Own session: Ctrl-C and Ctrl-Z at the terminal reach the lab, which then
                    # stops its brokers in order, instead of reaching the servers directly.
                    start_new_session=True,
                    preexec_fn=preexec,
                )

            if self.detached:
                return popen(None)
            parent = os.getpid()
            return _spawner.run(lambda: popen(_die_with_parent(parent)))

    def _wait_ready(self, process: subprocess.Popen[bytes], offset: int, deadline: float) -> None:
        check = {
            "redis": self._redis_ready,
            "nats": self._nats_ready,
            "rabbitmq": self._rabbitmq_ready,
            "tansu": self._tansu_ready,
        }[self.kind]
        while True:
            if process.poll() is not None:
                log = self._log_since(offset)
                if any(text in log.lower() for text in (_ADDRESS_IN_USE, *_ADDRESS_IN_USE_OTHER)):
                    raise _AddressInUse
                raise BrokerStartError(
                    f"{self.kind}-server exited with status {process.returncode} while starting "
                    f"on port {self.port}; last log lines ({self.log_path}):\n{_tail(log)}"
                )
            if check(offset):
                return
            if time.monotonic() >= deadline:
                raise BrokerStartError(
                    f"{self.kind}-server (pid {process.pid}) not ready on port {self.port} in "
                    f"time; last log lines ({self.log_path}):\n{_tail(self._log_since(offset))}"
                )
            time.sleep(_POLL)

    def _redis_ready(self, offset: int) -> bool:
        # Cheap first: the log line comes after the bind and after loading the AOF, so no
        # client ever waits on a stranger that took the port, or on a server still loading.
        if _REDIS_READY not in self._log_since(offset):
            return False
        import redis  # the lab's client library; imported here to keep module import light
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis(
            host=self.host,
            port=self.port,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            retry=Retry(NoBackoff(), 0),  # this loop is the retry
        )
        try:
            if not client.ping():
                return False
            server = client.info("server")
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()
        return int(server.get("process_id", -1)) == self.pid

    def _rabbitmq_ready(self, offset: int) -> bool:
        """AMQP answers: the server's Connection.Start frame, naming our node (its default
        cluster name), comes back for the protocol header."""
        start = _amqp_start(self.host, self.port)
        # cluster_name is the node name with the machine's short host name: bl<port>@<host>
        if start is None or b"cluster_name" not in start:
            return False
        if self.node_name.partition("@")[0].encode() + b"@" not in start:
            return False
        # The statistics endpoint starts with the plugins, just after AMQP: wait for it too,
        # so the first run's unacked samples do not find it missing.
        if self.metrics_port is not None and not _listening(self.host, self.metrics_port):
            return False
        match = re.search(rb"version\S\x00\x00\x00.([0-9][0-9.]*)", start)
        if match:
            self.info["server_version"] = match.group(1).decode()
        return True

    def _tansu_ready(self, offset: int) -> bool:
        """A Kafka ApiVersions request gets its answer (correlation id echoed)."""
        return _kafka_api_versions(self.host, self.port)

    def _nats_ready(self, offset: int) -> bool:
        if _NATS_READY not in self._log_since(offset):
            return False
        info = _nats_info(self.host, self.port)
        if info is None or info.get("server_name") != self._server_name:
            return False
        if not info.get("jetstream"):
            raise BrokerStartError(f"nats-server on port {self.port} runs without JetStream")
        monitor = self._monitor_url()
        if monitor is None:
            # The server writes its ports file just after it starts listening (a busy machine
            # can show the client port first): not ready until monitoring can be found.
            return False
        self.info["server_version"] = info.get("version")
        self.info["monitor_url"] = monitor
        self.info["jetstream"] = self._jetstream_config()
        return True

    def _monitor_url(self) -> str | None:
        for ports_file in self.data_dir.glob(f"*_{self.pid}.ports"):
            with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
                return str(json.loads(ports_file.read_text())["monitoring"][0])
        return None

    def _jetstream_config(self) -> dict[str, Any] | None:
        """What the server says it applied (``/jsz?config=true``): sync_always, store_dir..."""
        url = self.info.get("monitor_url")
        if not url:
            return None
        try:
            with urllib.request.urlopen(f"{url}/jsz?config=true", timeout=2.0) as response:
                return dict(json.load(response).get("config", {}))
        except (OSError, ValueError):
            return None

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _require_running(self, action: str) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            raise BrokerError(f"cannot {action} {self.kind}-server: it is not running")
        return self._process

    @staticmethod
    def _sigkill_and_reap(process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        # Bounded: inside a signal handler another frame may hold Popen's wait lock.
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5.0)

    def _forget_process(self) -> None:
        if self._process is not None and self.kind == "rabbitmq":
            # The node's process group: helpers (erl_child_setup, inet_gethost) that outlived it.
            with contextlib.suppress(OSError):
                os.killpg(self._process.pid, signal.SIGKILL)
        self._process = None
        self.pid = None
        self.paused = False
        _unregister(self)


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
        return True
    return False


def _rabbitmq_plugins_dir(script: Path, folder: Path, plugins: tuple[str, ...]) -> Path | None:
    """A plugins folder of links to the applications a node needs: ``rabbit``, its
    dependencies and ``plugins`` with theirs, read from the installed ``.app`` files (about 30
    of the ~70 a Debian install ships). None when the install's layout is not the expected
    ``<home>/sbin/rabbitmq-server`` + ``<home>/plugins``: the node then uses its default."""
    installed = script.resolve().parent.parent / "plugins"
    if not installed.is_dir():
        return None
    apps: dict[str, tuple[Path, list[str]]] = {}
    for app_file in installed.glob("*/ebin/*.app"):
        text = app_file.read_text(encoding="utf-8", errors="replace")
        needs: list[str] = []
        for key in ("applications", "included_applications"):
            match = re.search(r"\{\s*" + key + r"\s*,\s*\[([^\]]*)\]", text)
            if match:
                needs += re.findall(r"[a-z][a-zA-Z0-9_]*", match.group(1))
        apps[app_file.stem] = (app_file.parent.parent, needs)
    wanted, todo = set(), ["rabbit", "rabbitmq_prelaunch", *plugins]
    while todo:
        app = todo.pop()
        if app in wanted or app not in apps:  # OTP's own applications live elsewhere
            continue
        wanted.add(app)
        todo += apps[app][1]
    if not {"rabbit", *plugins} <= wanted:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    for app in wanted:
        target = apps[app][0]
        link = folder / target.name
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
    return folder


class _AddressInUse(Exception):
    """The probed port was taken before the server could bind it."""


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty)"


def _amqp_start(host: str, port: int) -> bytes | None:
    """The payload of the Connection.Start frame an AMQP 0-9-1 server sends for the protocol
    header, or None if nothing AMQP answers."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as connection:
            connection.settimeout(1.0)
            connection.sendall(b"AMQP\x00\x00\x09\x01")
            data = b""
            while len(data) < 7 or len(data) < 8 + int.from_bytes(data[3:7], "big"):
                chunk = connection.recv(65536)
                if not chunk:
                    return None
                data += chunk
                if len(data) > 1 << 20:
                    return None
    except OSError:
        return None
    # frame type 1 (method), channel 0, class 10 (connection) method 10 (start)
    if data[0] != 1 or data[7:11] != b"\x00\x0a\x00\x0a":
        return None
    return data[7 : 7 + int.from_bytes(data[3:7], "big")]


def _kafka_api_versions(host: str, port: int) -> bool:
    """Whether a Kafka-protocol server answers an ApiVersions (v0) request."""
    client = b"brokerlab"
    body = struct.pack(">hhih", 18, 0, 424242, len(client)) + client
    try:
        with socket.create_connection((host, port), timeout=1.0) as connection:
            connection.settimeout(1.0)
            connection.sendall(struct.pack(">i", len(body)) + body)
            data = b""
            while len(data) < 8:
                chunk = connection.recv(4096)
                if not chunk:
                    return False
                data += chunk
    except OSError:
        return False
    return struct.unpack(">i", data[4:8])[0] == 424242


def _nats_info(host: str, port: int) -> dict[str, Any] | None:
    """The INFO line a NATS server sends first on every connection, or None."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as connection:
            data = b""
            while b"\r\n" not in data and len(data) < 65536:
                chunk = connection.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    line = data.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return None
    try:
        return dict(json.loads(line[5:]))
    except ValueError:
        return None


def embedded_for(
    target: str, broker: Broker, workdir: Path, *, behind_proxy: bool = False
) -> EmbeddedBroker:
    """An (unstarted) server for a real target, configured from the scenario's broker.

    Only server-level settings come from here (Redis AOF policy, JetStream sync interval);
    stream-level ones (storage, limits, dedup window, AckWait) are the adapter's job. The data
    folder is a fresh ``workdir/<kind>-XXXX`` so several brokers can share one run folder.
    ``behind_proxy``: the run's clients reach the broker through the lab's fault proxies; a
    Tansu broker then advertises a free port of its own (:attr:`EmbeddedBroker.advertised_port`)
    where the run's :class:`adapters.proxy.KafkaRouter` will listen, because Kafka clients
    connect wherever the broker's Metadata answers send them.
    """
    kinds = server_kinds()  # the target records' embedded-server strategies
    if target not in kinds:
        raise ValueError(f"no embedded broker for target {target!r}; use one of {_targets()}")
    kind = kinds[target]
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=workdir))
    embedded = EmbeddedBroker(kind, data_dir, persistence=broker.persistence)
    if behind_proxy and kind == "tansu":
        advertised = free_port()
        while advertised == embedded.port:  # the kernel may hand out a just-freed port again
            advertised = free_port()
        embedded.advertised_port = advertised
        embedded.info["advertised_listener"] = f"{embedded.host}:{embedded.advertised_port}"
    return embedded


def _targets() -> str:
    return ", ".join(server_kinds())


# --------------------------------------------------------------------------- notebook sessions

STATE_FILE = "brokers.json"


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialise ``brokers up/down`` on one state folder (two terminals, one notebook)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    handle = os.open(state_dir, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


def _read_state(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except ValueError as error:
        raise BrokerError(f"{path}: not valid JSON ({error}); remove it by hand") from None
    brokers = data.get("brokers") if isinstance(data, dict) else None
    if not isinstance(brokers, list):
        raise BrokerError(f"{path}: expected {{'brokers': [...]}}; remove it by hand")
    return [dict(entry) for entry in brokers]


def _write_state(state_dir: Path, entries: list[dict[str, Any]]) -> None:
    path = state_dir / STATE_FILE
    scratch = path.with_suffix(".json.tmp")
    scratch.write_text(json.dumps({"brokers": entries}, indent=2) + "\n", encoding="utf-8")
    scratch.replace(path)  # readers never see half a file


def _recorded_process(entry: dict[str, Any]) -> tuple[psutil.Process | None, str]:
    """The live process an entry describes, or None and why not.

    A pid alone proves nothing once the broker is gone (pids are reused), so the binary, the
    start time and the working folder (our data folder) must all still match.
    """
    try:
        process = psutil.Process(int(entry["pid"]))
        if process.status() == psutil.STATUS_ZOMBIE:
            return None, "exited"
        if abs(process.create_time() - float(entry["create_time"])) > 1.0:
            return None, "exited (pid reused by another process)"
        if os.path.realpath(process.exe()) != os.path.realpath(entry["binary"]):
            return None, "exited (pid reused by another program)"
        # Not the command line: redis-server rewrites its own to "redis-server host:port".
        # Both servers run in their data folder (we start them there; Redis chdirs to --dir).
        if os.path.realpath(process.cwd()) != os.path.realpath(entry["data_dir"]):
            return None, "exited (pid reused by another server)"
    except psutil.NoSuchProcess:
        return None, "exited"
    except psutil.AccessDenied:
        return None, "exited (pid now belongs to another user)"
    except (KeyError, TypeError, ValueError):
        return None, "unreadable state entry"
    return process, "running"


def _exited(process: psutil.Process, timeout: float) -> bool:
    """Wait until a process we do not parent has exited; a zombie counts as exited.

    Not ``psutil.Process.wait``: a detached server's parent is whoever adopted it, and where
    that is a container's init that never reaps, the zombie would look alive until timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)


def brokers_up(
    state_dir: Path, targets: list[str], broker: Broker | None = None
) -> list[dict[str, Any]]:
    """Start detached servers for ``targets`` (or keep the ones already up) and record them.

    Both NATS targets share one JetStream server. Server-level settings come from ``broker``
    (default: no persistence, default JetStream sync); a server already up is kept as it is,
    and its entry says which persistence it runs with. Returns one entry per server with
    ``status`` "started" or "already up".
    """
    state_dir = Path(state_dir)
    # Not a RabbitMQ node: it is several processes (the VM, its epmd) that a state entry of one
    # pid cannot vouch for; rabbitmq runs start their own node.
    target_kinds = {t: k for t, k in server_kinds().items() if k != "rabbitmq"}
    unknown = [target for target in targets if target not in target_kinds]
    if unknown or not targets:
        raise ValueError(f"unknown targets {unknown}; use one or more of {', '.join(target_kinds)}")
    kinds = list(dict.fromkeys(target_kinds[target] for target in targets))
    persistence = broker.persistence if broker is not None else Persistence()
    with _locked(state_dir):
        entries = {entry.get("kind"): entry for entry in _read_state(state_dir)}
        results: list[dict[str, Any]] = []
        for kind in kinds:
            entry = entries.get(kind)
            if entry is not None and _recorded_process(entry)[0] is not None:
                entry["targets"] = sorted(
                    set(entry.get("targets", [])) | {t for t in targets if target_kinds[t] == kind}
                )
                results.append({**entry, "status": "already up"})
                continue
            data_dir = state_dir / "brokers" / kind
            shutil.rmtree(data_dir, ignore_errors=True)  # a dead session's data is not ours now
            server = EmbeddedBroker(kind, data_dir, persistence=persistence, detached=True)
            server.start()
            assert server.pid is not None
            entry = {
                "kind": kind,
                "targets": sorted(t for t in targets if target_kinds[t] == kind),
                "pid": server.pid,
                "create_time": psutil.Process(server.pid).create_time(),
                "port": server.port,
                "url": server.url,
                "data_dir": str(server.data_dir),
                "log": str(server.log_path),
                "binary": str(server.binary.path),
                "version": server.binary.version,
                "persistence": persistence.model_dump(mode="json"),
                "monitor_url": server.info.get("monitor_url"),
                "started_at": time.time(),
            }
            entries[kind] = entry
            results.append({**entry, "status": "started"})
        _write_state(state_dir, list(entries.values()))
    return results


def brokers_status(state_dir: Path) -> list[dict[str, Any]]:
    """The recorded servers, each with ``alive`` and a ``state`` saying why (empty when none)."""
    out = []
    for entry in _read_state(Path(state_dir)):
        process, state = _recorded_process(entry)
        out.append({**entry, "alive": process is not None, "state": state})
    return out


def brokers_down(state_dir: Path, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Stop the recorded servers (SIGTERM, SIGKILL after ``timeout``) and remove the state.

    Only processes that are verifiably ours get a signal. Safe to call again: with no state
    it returns an empty list.
    """
    state_dir = Path(state_dir)
    results: list[dict[str, Any]] = []
    with _locked(state_dir):
        entries = _read_state(state_dir)
        for entry in entries:
            process, state = _recorded_process(entry)
            if process is None:
                results.append({**entry, "stopped": False, "state": state})
                continue
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
                process.resume()  # a paused server only handles SIGTERM once continued
            how = "stopped"
            if not _exited(process, timeout):
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
                _exited(process, 5.0)
                how = "killed"
            results.append({**entry, "stopped": True, "state": how})
        sessions = (state_dir / "brokers").resolve()
        for entry in entries:
            data_dir = Path(str(entry.get("data_dir", ""))).resolve()
            if data_dir.is_relative_to(sessions) and data_dir != sessions:
                shutil.rmtree(data_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            sessions.rmdir()  # only if empty: never remove what we did not create
        with contextlib.suppress(FileNotFoundError):
            (state_dir / STATE_FILE).unlink()
    return results


def connect_urls(state_dir: Path) -> dict[str, str]:
    """``{target: url}`` for every target a live recorded server can serve, for runs to reuse."""
    urls: dict[str, str] = {}
    for entry in brokers_status(state_dir):
        if entry["alive"]:
            for target, kind in server_kinds().items():
                if kind == entry["kind"]:
                    urls[target] = str(entry["url"])
    return urls
