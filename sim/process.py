"""The broker process as a collaborator of the engine: its servers, and whether it is running.

The engine is given a process class at construction (as Ciw is given node and server classes)
and calls four things on it: :meth:`BrokerProcess.serve` (run a piece of broker work on the
parallel FIFO servers), :meth:`BrokerProcess.receive` (something reached the broker over a
connection), :meth:`BrokerProcess.timer_due` (the ack timer fired: may it act now?) and
:attr:`BrokerProcess.up`. A fault-free run gets :class:`BrokerProcess`, which is always up and
does no fault checks; a run with a broker kill or pause gets :class:`FaultedBrokerProcess`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

from brokerlab.sim.events import Call, Clock

#: (callback, argument) of a piece of broker work
Work = tuple[Callable[[Any], None], Any]


class BrokerProcess:
    """A broker that never stops: ``servers`` parallel FIFO servers shared by all its work."""

    def __init__(self, env: Clock, servers: int):
        self.env = env
        self.servers = servers
        self.busy = 0
        self.queue: deque[tuple[float, Callable[[Any], None], Any]] = deque()
        #: in-order releases of this process's work (a kill empties them)
        self.ordered: list[InOrder] = []

    @property
    def up(self) -> bool:
        """Running (not paused, not killed)."""
        return True

    @property
    def down(self) -> bool:
        """Killed and not restarted: its clients' connections are refused."""
        return False

    def serve(self, duration: float, fn: Callable[[Any], None], arg: Any) -> None:
        """Run ``fn(arg)`` after ``duration`` of work on a free server (or when one frees)."""
        if self.busy < self.servers:
            self.busy += 1
            Call(self.env, duration, self._served, (fn, arg))
        else:
            self.queue.append((duration, fn, arg))

    def _served(self, job: Work) -> None:
        if self.queue:
            duration, fn, arg = self.queue.popleft()
            Call(self.env, duration, self._served, (fn, arg))
        else:
            self.busy -= 1
        job[0](job[1])

    def receive(self, fn: Callable[[Any], None], arg: Any) -> None:
        """Something reached the broker: it handles it now."""
        fn(arg)

    def timer_due(self) -> bool:
        """The ack timer fired: it acts now."""
        return True


class InOrder:
    """Work of one connection, done on the parallel servers and released in the order taken.

    Parallel servers with random service times finish out of order, but a broker applies one
    producer's publishes and writes one consumer's deliveries (one fetch reply, one channel) in
    the order it took them: work that finishes early waits for the work of its connection taken
    before it. The servers' costs and ceiling are unchanged (each piece still takes its own
    time on its own server); only the release waits. A kill drops the waiting work with the
    work in service (:meth:`BrokerProcess.kill` calls :meth:`clear`).
    """

    def __init__(self, process: BrokerProcess, connections: int):
        self.process = process
        self.taken: list[deque[Any]] = [deque() for _ in range(connections)]
        #: finished before their turn: item -> callback
        self.early: dict[Any, Callable[[Any], None]] = {}
        process.ordered.append(self)

    def serve(self, duration: float, connection: int, fn: Callable[[Any], None], arg: Any) -> None:
        """``fn(arg)`` after ``duration`` of work, not before earlier work of ``connection``.

        ``arg`` must be unique among the connection's work in service (a row, a message, an
        attempt)."""
        self.taken[connection].append(arg)
        self.process.serve(duration, self._finished, (connection, fn, arg))

    def _finished(self, job: tuple[int, Callable[[Any], None], Any]) -> None:
        connection, fn, arg = job
        taken = self.taken[connection]
        if not taken or taken[0] != arg:
            self.early[arg] = fn
            return
        taken.popleft()
        fn(arg)
        early = self.early
        while taken and taken[0] in early:
            head = taken.popleft()
            early.pop(head)(head)

    def clear(self) -> None:
        for taken in self.taken:
            taken.clear()
        self.early.clear()


def reorders(servers: int, duration: Any) -> bool:
    """Whether parallel servers can finish work out of the order it started: more than one
    server and random durations (equal work on FIFO servers finishes in the order it started)."""
    return servers > 1 and getattr(duration, "dist", None) != "constant"


UP, PAUSED, DOWN = 0, 1, 2


class FaultedBrokerProcess(BrokerProcess):
    """A broker process that can be paused (SIGSTOP) and killed (SIGKILL), then restarted.

    Work reaching it (arrivals, service completions, the ack timer) goes through one gate: done
    at once when up, held in arrival order while paused (TCP queues it; it is served on resume),
    dropped while down (the process is gone). What a kill loses from storage is the engine's
    business (:meth:`synced_since` says which writes a power loss takes).
    """

    def __init__(self, env: Clock, servers: int):
        super().__init__(env, servers)
        self.state = UP
        #: bumped by a kill: service completions started before it are void
        self.epoch = 0
        #: when the process last (re)started: periodic syncs count from here
        self.started = 0.0
        self.held: list[Work] = []
        #: the ack timer came due during a pause: it runs after the held work on resume
        self.timer_held = False

    @property
    def up(self) -> bool:
        return self.state == UP

    @property
    def down(self) -> bool:
        return self.state == DOWN

    def serve(self, duration: float, fn: Callable[[Any], None], arg: Any) -> None:
        if self.busy < self.servers:
            self.busy += 1
            Call(self.env, duration, self._served_in, (fn, arg, self.epoch))
        else:
            self.queue.append((duration, fn, arg))

    def _served_in(self, job: tuple[Callable[[Any], None], Any, int]) -> None:
        fn, arg, epoch = job
        if epoch != self.epoch:
            return  # the process was killed mid-operation
        if self.state == PAUSED:
            self.held.append((self._served_in, job))  # a stopped process finishes after resume
            return
        if self.queue:
            duration, next_fn, next_arg = self.queue.popleft()
            Call(self.env, duration, self._served_in, (next_fn, next_arg, epoch))
        else:
            self.busy -= 1
        fn(arg)

    def receive(self, fn: Callable[[Any], None], arg: Any) -> None:
        """Now if up, after the pause if paused, never if down."""
        if self.state == UP:
            fn(arg)
        elif self.state == PAUSED:
            self.held.append((fn, arg))

    def timer_due(self) -> bool:
        if self.state == PAUSED:
            self.timer_held = True  # redelivery waits out the pause (see resume)
            return False
        return True

    def kill(self) -> None:
        """The process dies: servers idle, queued and held work gone, timers void."""
        self.state = DOWN
        self.epoch += 1
        self.busy = 0
        self.queue.clear()
        self.held.clear()
        self.timer_held = False
        for ordered in self.ordered:
            ordered.clear()

    def restart(self) -> bool:
        """Start a killed process again; False if it was not down."""
        if self.state != DOWN:
            return False
        self.state = UP
        self.started = self.env.now
        return True

    def pause(self) -> None:
        if self.state == UP:
            self.state = PAUSED

    def resume(self) -> tuple[list[Work], bool]:
        """Run again: the work held during the pause, in arrival order, and whether the ack
        timer came due meanwhile (the caller runs it after the held work)."""
        if self.state != PAUSED:
            return [], False
        self.state = UP
        held, self.held = self.held, []
        timer, self.timer_held = self.timer_held, False
        return held, timer

    def synced_since(self, interval: float) -> float:
        """Time of the last periodic sync (every ``interval`` since the last start)."""
        started = self.started
        return started + math.floor((self.env.now - started) / interval) * interval
