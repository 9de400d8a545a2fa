"""Recording: the sends table as preallocated columns, deliveries as append-only lists.

Cheap per message: sends go into NumPy columns indexed by plan row (a worker process fills its
producers' rows of shared columns in place); deliveries are appended to plain lists and turned
into tables once, at the end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from brokerlab.adapters.harness.adapter import Received
from brokerlab.adapters.harness.payload import HEADER
from brokerlab.core.load import LoadPlan
from brokerlab.core.trace import make_deliveries, make_sends, msg_ids
from brokerlab.core.vocabulary import OUTCOMES, OutcomeCode

ACKED, FAILED, UNKNOWN = (int(code) for code in OutcomeCode)
#: Batches at least this long are marked completed with NumPy instead of one by one.
VECTOR_MIN = 32

_unpack_header = HEADER.unpack_from


class SendLog:
    """The sends table as preallocated columns, one row per plan row."""

    def __init__(self, plan: LoadPlan) -> None:
        n = len(plan)
        self.plan = plan
        self.t_sent = np.full(n, np.nan)
        self.t_acked = np.full(n, np.nan)
        self.outcome = np.full(n, FAILED, dtype="int8")  # never sent = failed, attempts 0
        self.attempts = np.zeros(n, dtype="int16")
        self.uncertain = np.zeros(n, dtype=bool)  # some attempt ended without an answer
        self.settled = np.zeros(n, dtype=bool)

    def table(self, t0: float) -> Any:
        plan = self.plan
        return make_sends(
            plan.producer,
            plan.seq,
            plan.key,
            plan.size,
            plan.t_intended,
            self.t_sent - t0,
            self.t_acked - t0,
            # from the codes: no column of 1 string per message to build and hash again
            pd.Categorical.from_codes(self.outcome, categories=OUTCOMES),
            self.attempts,
        )


class DeliveryLog:
    """Deliveries as append-only lists (cheap per message), plus completion per plan message."""

    def __init__(self, plan: LoadPlan) -> None:
        self.producer: list[int] = []
        self.seq: list[int] = []
        self.consumer: list[int] = []
        self.delivery_no: list[int] = []
        self.t_delivered: list[float] = []
        self.t_done: list[float] = []
        counts = np.bincount(plan.producer, minlength=int(plan.producer.max(initial=-1)) + 1)
        #: producer-major position of (producer, seq) = start[producer] + seq
        self.start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype("int64").tolist()
        self.per_producer = counts.tolist()
        self.done = np.zeros(len(plan), dtype=bool)
        self.completed = 0
        self.unexpected = 0

    def position(self, producer: int, seq: int) -> int:
        """Producer-major position of a message, or -1 if the plan never had it."""
        if producer < len(self.start) and 0 <= seq < self.per_producer[producer]:
            return self.start[producer] + seq
        return -1

    def record(
        self, received: Sequence[Received], consumer: int, t_delivered: float
    ) -> tuple[int, list[int]]:
        """Append one fetched batch (``t_done`` still NaN): its first row and each message's
        producer-major position (-1: not in the plan). One pass per column, no per-message
        calls beyond decoding the header."""
        heads = [_unpack_header(item[0]) for item in received]
        producers = [head[0] for head in heads]
        seqs = [head[1] for head in heads]
        n = len(received)
        first_row = len(self.t_done)
        self.producer += producers
        self.seq += seqs
        self.consumer += [consumer] * n
        self.delivery_no += [item[1] for item in received]
        self.t_delivered += [t_delivered] * n
        self.t_done += [math.nan] * n
        start, per, count = self.start, self.per_producer, len(self.start)
        positions = [
            start[p] + q if p < count and q < per[p] else -1
            for p, q in zip(producers, seqs, strict=True)
        ]
        return first_row, positions

    def complete(self, positions: Sequence[int]) -> None:
        """Mark messages completed (positions from :meth:`record`); count first completions."""
        done = self.done
        if len(positions) < VECTOR_MIN:
            for position in positions:
                if position >= 0 and not done[position]:
                    done[position] = True
                    self.completed += 1
            return
        found = np.asarray(positions, dtype="int64")
        fresh = found[found >= 0]
        fresh = fresh[~done[fresh]]
        if len(fresh):
            done[fresh] = True
            self.completed += len(np.unique(fresh))  # a batch may hold one message twice

    def table(self, t0: float) -> Any:
        return make_deliveries(
            msg_ids(np.asarray(self.producer, dtype="int64"), np.asarray(self.seq, dtype="int64")),
            np.asarray(self.consumer, dtype="int32"),
            np.asarray(self.delivery_no, dtype="int32"),
            np.asarray(self.t_delivered, dtype="float64") - t0,
            np.asarray(self.t_done, dtype="float64") - t0,
        )


def producer_major(plan: LoadPlan) -> np.ndarray:
    """Producer-major position of every plan row (see :meth:`DeliveryLog.position`): the index
    of its completed flag."""
    return np.asarray(DeliveryLog(plan).start, dtype="int64")[plan.producer] + plan.seq
