"""Delivery checks: what a run's deliveries say about the broker's guarantees, after a final drain.

The checks follow Jepsen's total-queue checker, extended with ordering. Every message is
identified by the lab's own ``msg_id`` (``producer:seq``), never by a broker id, so the same code
judges the simulator and every real broker:

- lost: the broker acknowledged the message (or, fire-and-forget, the publish call succeeded:
  outcome ``acked`` with no ``t_acked``) and no consumer ever received it;
- unprocessed: a consumer received the message but no delivery of it was ever processed to the
  end (no ``t_done`` on any attempt): e.g. acked before processing, then the consumer crashed,
  so the broker never offers it again. For the business it is as gone as a lost message, which
  is why ``max_lost`` holds against lost + unprocessed;
- duplicates: deliveries beyond the first of a message (at-least-once allows them; we count);
- redelivered: deliveries the broker itself marked as repeats (``delivery_no > 1``); a publish
  retried without a dedup id gives a duplicate that the broker does not mark;
- unexpected: delivered ids that were never sent (always a bug, in a broker or in the harness);
- recovered: unknown-outcome publishes (timeouts) that were delivered after all;
- out of order: a message first delivered after a later message (higher ``seq``) of the same
  producer and key; keyless messages form one sequence per producer.

Everything is vectorised: one hash join of the two id columns, then NumPy and a pandas groupby.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

#: How many example ids of each anomaly a check keeps for reports; the counts are always complete.
MAX_IDS = 100

#: The ``counts`` keys of metrics.json, in the order they are written.
COUNT_KEYS: tuple[str, ...] = (
    "sent",
    "acked",
    "delivered",
    "unique",
    "lost",
    "unprocessed",
    "duplicates",
    "out_of_order",
    "redelivered",
    "failed",
    "unknown",
)


@dataclass(frozen=True)
class DeliveryCheck:
    """Counts of each delivery anomaly, with up to :data:`MAX_IDS` example ids of each.

    ``first_delivered`` and ``first_done`` are per row of the sends table (NaN when never): the
    time of a message's first delivery and its earliest finished processing. The latency
    analysis reuses them instead of joining the tables a second time.
    """

    sent: int
    acked: int
    failed: int
    unknown: int
    delivered: int
    unique: int
    lost: int
    unprocessed: int
    duplicates: int
    out_of_order: int
    redelivered: int
    unexpected: int
    recovered: int
    lost_ids: tuple[str, ...] = ()
    unprocessed_ids: tuple[str, ...] = ()
    duplicate_ids: tuple[str, ...] = ()
    out_of_order_ids: tuple[str, ...] = ()
    unexpected_ids: tuple[str, ...] = ()
    first_delivered: np.ndarray = field(
        default_factory=lambda: np.empty(0), compare=False, repr=False
    )
    first_done: np.ndarray = field(default_factory=lambda: np.empty(0), compare=False, repr=False)

    def counts(self) -> dict[str, int]:
        """The ``counts`` object of metrics.json (exactly the contract's keys)."""
        return {key: getattr(self, key) for key in COUNT_KEYS}


def _strings(column: pd.Series) -> pa.Array:
    """An id column as one Arrow string array (zero-copy for Arrow-backed pandas strings)."""
    array = pa.array(column, from_pandas=True)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return array.cast(pa.large_string())


def _message_index(sends: pd.DataFrame, deliveries: pd.DataFrame) -> np.ndarray:
    """For every delivery row, the row of its message in ``sends``, or -1 if never sent.

    A hash join in Arrow: about ten times faster than ``pandas.Index.get_indexer`` on strings.
    """
    sent_ids = _strings(sends["msg_id"])
    if pc.count_distinct(sent_ids, mode="all").as_py() != len(sent_ids):
        raise ValueError("sends has repeated msg_id values; a trace has one row per message")
    index = pc.index_in(_strings(deliveries["msg_id"]), value_set=sent_ids)
    return index.fill_null(-1).to_numpy(zero_copy_only=False).astype("int64")


def _examples(ids: pd.Series, rows: np.ndarray) -> tuple[str, ...]:
    """The ids of the first :data:`MAX_IDS` ``rows``, as plain strings (only those converted)."""
    return tuple(str(value) for value in ids.iloc[rows[:MAX_IDS]])


def _out_of_order(sends: pd.DataFrame, message: np.ndarray) -> np.ndarray:
    """Which first-delivered messages came after a higher ``seq`` of the same producer and key.

    ``message`` are sends rows (each once) in the order of their first delivery (time, then
    deliveries row). A running maximum of ``seq`` per
    (producer, key) that exceeds a message's own ``seq`` means a later message overtook it.
    Returns the sends rows that are out of order.
    """
    if len(message) == 0:
        return message
    in_delivery_order = pd.DataFrame(
        {
            "producer": sends["producer"].to_numpy()[message],
            "key": sends["key"].to_numpy()[message],
            "seq": sends["seq"].to_numpy()[message],
        }
    )
    highest_so_far = in_delivery_order.groupby(["producer", "key"], sort=False)["seq"].cummax()
    late = highest_so_far.to_numpy() > in_delivery_order["seq"].to_numpy()
    return message[late]


def check_delivery(sends: pd.DataFrame, deliveries: pd.DataFrame) -> DeliveryCheck:
    """Check a drained run's deliveries against its sends (see the module docstring).

    Counts are per message (``unique``, ``lost``, ``unprocessed``, ``out_of_order``,
    ``unexpected`` are distinct ids) except ``delivered``, ``duplicates`` and ``redelivered``,
    which count delivery rows of messages that were sent; deliveries of unexpected ids are only
    counted as unexpected.
    """
    n_sends = len(sends)
    outcome = sends["outcome"]
    acked = outcome.eq("acked").to_numpy(dtype=bool, na_value=False)
    failed = outcome.eq("failed").to_numpy(dtype=bool, na_value=False)
    unknown = outcome.eq("unknown").to_numpy(dtype=bool, na_value=False)

    message = _message_index(sends, deliveries)
    known = message >= 0
    t_delivered = deliveries["t_delivered"].to_numpy(dtype="float64")
    t_done = deliveries["t_done"].to_numpy(dtype="float64")
    delivery_no = deliveries["delivery_no"].to_numpy()

    # Known deliveries grouped by message, each group in delivery order (time, then row: lexsort
    # is stable), so the first row of a group is the message's first delivery.
    rows = np.flatnonzero(known)
    rows = rows[np.lexsort((t_delivered[rows], message[rows]))]
    grouped = message[rows]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]]) if len(rows) else rows
    delivered_messages = grouped[starts]
    first_row = rows[starts]

    first_delivered = np.full(n_sends, np.nan)
    first_delivered[delivered_messages] = t_delivered[first_row]
    first_done = np.full(n_sends, np.nan)
    if len(rows):
        # fmin ignores NaN (consumer died before finishing) unless every attempt is NaN
        first_done[delivered_messages] = np.fmin.reduceat(t_done[rows], starts)

    deliveries_per_message = np.bincount(message[known], minlength=n_sends)
    was_delivered = deliveries_per_message > 0
    lost = acked & ~was_delivered
    # every attempt ended without t_done (fmin gave NaN): taken, never finished, never retried
    unprocessed = was_delivered & np.isnan(first_done)
    duplicated = deliveries_per_message > 1

    by_first_delivery = np.lexsort((first_row, t_delivered[first_row]))
    late = _out_of_order(sends, delivered_messages[by_first_delivery])

    # few or none in a sound run, so only those ids are converted
    strays = deliveries["msg_id"].iloc[np.flatnonzero(~known)].fillna("<missing id>")
    unexpected_ids = strays.unique()
    delivered = int(known.sum())
    unique = int(was_delivered.sum())
    ids = sends["msg_id"]
    return DeliveryCheck(
        sent=n_sends,
        acked=int(acked.sum()),
        failed=int(failed.sum()),
        unknown=int(unknown.sum()),
        delivered=delivered,
        unique=unique,
        lost=int(lost.sum()),
        unprocessed=int(unprocessed.sum()),
        duplicates=delivered - unique,
        out_of_order=len(late),
        redelivered=int(np.count_nonzero(delivery_no[known] > 1)),
        unexpected=len(unexpected_ids),
        recovered=int((unknown & was_delivered).sum()),
        lost_ids=_examples(ids, np.flatnonzero(lost)),
        unprocessed_ids=_examples(ids, np.flatnonzero(unprocessed)),
        duplicate_ids=_examples(ids, np.flatnonzero(duplicated)),
        # in the order they were (late) delivered, which is how a reader would look for them
        out_of_order_ids=_examples(ids, late),
        unexpected_ids=tuple(str(value) for value in unexpected_ids[:MAX_IDS]),
        first_delivered=first_delivered,
        first_done=first_done,
    )
