"""Delivery checks on hand-built traces: each anomaly counted exactly, and only where it belongs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from trace_builders import deliveries_table, sends_table

from brokerlab.core.checks import COUNT_KEYS, MAX_IDS, check_delivery
from brokerlab.core.trace import DELIVERIES_SCHEMA, SENDS_SCHEMA, empty

NAN = math.nan


def test_clean_run_counts_every_message_once():
    """Every acked message delivered once, in order: no anomaly of any kind."""
    sends = sends_table([0, 0, 0], [0, 1, 2])
    deliveries = deliveries_table(["0:0", "0:1", "0:2"], [0.1, 0.2, 0.3])
    check = check_delivery(sends, deliveries)
    assert check.counts() == {
        "sent": 3,
        "acked": 3,
        "delivered": 3,
        "unique": 3,
        "lost": 0,
        "unprocessed": 0,
        "duplicates": 0,
        "out_of_order": 0,
        "redelivered": 0,
        "failed": 0,
        "unknown": 0,
    }
    assert check.unexpected == 0
    assert check.recovered == 0


def test_counts_have_exactly_the_contract_keys():
    """counts() returns the metrics.json keys, in contract order, nothing more."""
    check = check_delivery(sends_table([0], [0]), deliveries_table(["0:0"], [0.1]))
    assert tuple(check.counts()) == COUNT_KEYS


def test_acked_message_never_delivered_is_lost():
    """An acknowledged message no consumer received is lost, and its id is reported."""
    sends = sends_table([0, 0, 0], [0, 1, 2])
    deliveries = deliveries_table(["0:0", "0:2"], [0.1, 0.3])
    check = check_delivery(sends, deliveries)
    assert check.lost == 1
    assert check.lost_ids == ("0:1",)
    assert check.unique == 2


def test_fire_and_forget_publish_never_delivered_is_lost():
    """Outcome acked with no t_acked (NATS core) counts as sent, so undelivered means lost."""
    sends = sends_table([0, 0], [0, 1], t_acked=[NAN, NAN])
    check = check_delivery(sends, deliveries_table(["0:0"], [0.1]))
    assert check.acked == 2
    assert check.lost == 1


def test_failed_publish_never_delivered_is_not_lost():
    """A publish the broker refused was never promised: not lost, counted as failed."""
    sends = sends_table([0, 0], [0, 1], t_acked=[0.001, NAN], outcome=["acked", "failed"])
    check = check_delivery(sends, deliveries_table(["0:0"], [0.1]))
    assert check.failed == 1
    assert check.lost == 0


def test_failed_publish_that_shows_up_is_fine():
    """A 'failed' publish that was delivered anyway is neither lost nor unexpected."""
    sends = sends_table([0], [0], t_acked=[NAN], outcome=["failed"])
    check = check_delivery(sends, deliveries_table(["0:0"], [0.1]))
    assert (check.failed, check.lost, check.unexpected, check.unique) == (1, 0, 0, 1)


def test_unknown_outcome_that_shows_up_is_recovered():
    """A timed-out publish later delivered is recovered: not lost, not unexpected."""
    outcome = ["unknown", "unknown"]
    sends = sends_table([0, 0], [0, 1], t_acked=[NAN, NAN], outcome=outcome)
    check = check_delivery(sends, deliveries_table(["0:0"], [0.1]))
    assert check.unknown == 2
    assert check.recovered == 1
    assert check.lost == 0
    assert check.unexpected == 0


def test_redelivery_is_a_duplicate_and_a_redelivery():
    """A broker redelivery (delivery_no 2) counts once as duplicate and once as redelivered."""
    sends = sends_table([0, 0], [0, 1])
    deliveries = deliveries_table(["0:0", "0:1", "0:0"], [0.1, 0.2, 0.5], delivery_no=[1, 1, 2])
    check = check_delivery(sends, deliveries)
    assert (check.delivered, check.unique, check.duplicates, check.redelivered) == (3, 2, 1, 1)
    assert check.duplicate_ids == ("0:0",)


def test_republished_message_is_a_duplicate_but_not_a_redelivery():
    """A retried publish without dedup arrives twice with delivery_no 1: duplicate only."""
    sends = sends_table([0], [0])
    deliveries = deliveries_table(["0:0", "0:0"], [0.1, 0.2])
    check = check_delivery(sends, deliveries)
    assert (check.duplicates, check.redelivered) == (1, 0)


def test_delivery_of_an_id_never_sent_is_unexpected_only():
    """A stray id is counted once as unexpected and in no delivery count of known messages."""
    sends = sends_table([0], [0])
    deliveries = deliveries_table(["0:0", "7:7", "7:7"], [0.1, 0.2, 0.3])
    check = check_delivery(sends, deliveries)
    assert check.unexpected == 1
    assert check.unexpected_ids == ("7:7",)
    assert (check.delivered, check.unique, check.duplicates) == (1, 1, 0)


def test_reordering_within_a_key_counts_the_overtaken_message():
    """Seqs 0, 2, 1 of one key: seq 1 arrived after seq 2, so one message is out of order."""
    sends = sends_table([0, 0, 0], [0, 1, 2], key=[5, 5, 5])
    deliveries = deliveries_table(["0:0", "0:2", "0:1"], [0.1, 0.2, 0.3])
    check = check_delivery(sends, deliveries)
    assert check.out_of_order == 1
    assert check.out_of_order_ids == ("0:1",)


def test_keyless_producer_is_one_sequence():
    """Without keys a producer's messages form one sequence, so any overtaking counts."""
    sends = sends_table([0, 0, 0, 0], [0, 1, 2, 3])
    deliveries = deliveries_table(["0:3", "0:0", "0:1", "0:2"], [0.1, 0.2, 0.3, 0.4])
    check = check_delivery(sends, deliveries)
    assert check.out_of_order == 3


def test_different_keys_may_interleave():
    """Messages of different keys overtaking each other are not out of order."""
    sends = sends_table([0, 0, 0, 0], [0, 1, 2, 3], key=[1, 2, 1, 2])
    deliveries = deliveries_table(["0:1", "0:3", "0:0", "0:2"], [0.1, 0.2, 0.3, 0.4])
    assert check_delivery(sends, deliveries).out_of_order == 0


def test_producers_sharing_a_key_are_independent():
    """Two producers' sequences on one key are judged separately."""
    sends = sends_table([0, 1, 0, 1], [0, 0, 1, 1], key=[9, 9, 9, 9])
    # producer 1's seq 1 arrives before producer 0's seq 0: fine, different producers
    deliveries = deliveries_table(["1:0", "1:1", "0:0", "0:1"], [0.1, 0.2, 0.3, 0.4])
    assert check_delivery(sends, deliveries).out_of_order == 0


def test_order_is_judged_by_first_delivery():
    """A redelivery of an early message after later ones does not make it out of order."""
    sends = sends_table([0, 0], [0, 1])
    deliveries = deliveries_table(["0:0", "0:1", "0:0"], [0.1, 0.2, 0.3], delivery_no=[1, 1, 2])
    assert check_delivery(sends, deliveries).out_of_order == 0


def test_first_delivery_is_by_time_not_row():
    """Rows written out of time order are put back in time order before judging order."""
    sends = sends_table([0, 0], [0, 1])
    deliveries = deliveries_table(["0:1", "0:0"], [0.2, 0.1])
    check = check_delivery(sends, deliveries)
    assert check.out_of_order == 0
    np.testing.assert_allclose(check.first_delivered, [0.1, 0.2])


def test_same_time_ties_break_by_row_order():
    """Deliveries at the same microsecond keep the order the trace recorded them in."""
    sends = sends_table([0, 0], [0, 1])
    deliveries = deliveries_table(["0:1", "0:0"], [0.1, 0.1])
    assert check_delivery(sends, deliveries).out_of_order == 1


def test_first_done_is_the_earliest_finished_attempt():
    """A consumer dying mid-message (t_done NaN) leaves the message's completion to a retry."""
    sends = sends_table([0, 0], [0, 1])
    deliveries = deliveries_table(
        ["0:0", "0:0", "0:1"], [0.1, 0.4, 0.2], delivery_no=[1, 2, 1], t_done=[NAN, 0.5, NAN]
    )
    check = check_delivery(sends, deliveries)
    np.testing.assert_allclose(check.first_delivered, [0.1, 0.2])
    np.testing.assert_allclose(check.first_done, [0.5, NAN])


def test_taken_and_never_finished_is_unprocessed_not_lost():
    """Ack before processing, consumer crash: delivered, no t_done, never redelivered.

    Known answer: 2 of 3 messages die in the consumer's hands, so unprocessed 2 and lost 0
    (before this count existed the run showed no loss at all)."""
    sends = sends_table([0, 0, 0], [0, 1, 2])
    deliveries = deliveries_table(["0:0", "0:1", "0:2"], [0.1, 0.2, 0.3], t_done=[0.15, NAN, NAN])
    check = check_delivery(sends, deliveries)
    assert (check.lost, check.unprocessed, check.unique) == (0, 2, 3)
    assert check.unprocessed_ids == ("0:1", "0:2")
    assert check.counts()["unprocessed"] == 2


def test_redelivered_and_processed_later_is_not_unprocessed():
    """A message whose first attempt died but whose redelivery finished is fine."""
    sends = sends_table([0], [0])
    deliveries = deliveries_table(["0:0", "0:0"], [0.1, 0.5], delivery_no=[1, 2], t_done=[NAN, 0.6])
    check = check_delivery(sends, deliveries)
    assert (check.unprocessed, check.duplicates) == (0, 1)


def test_redelivered_but_never_finished_is_unprocessed_once():
    """Every attempt died: one unprocessed message, however many attempts it had."""
    sends = sends_table([0, 0], [0, 1])
    deliveries = deliveries_table(
        ["0:0", "0:0", "0:1"], [0.1, 0.5, 0.2], delivery_no=[1, 2, 1], t_done=[NAN, NAN, 0.3]
    )
    assert check_delivery(sends, deliveries).unprocessed == 1


def test_unexpected_ids_are_never_unprocessed():
    """A stray id that never finished is unexpected only: unprocessed counts sent messages."""
    sends = sends_table([0], [0])
    deliveries = deliveries_table(["0:0", "7:7"], [0.1, 0.2], t_done=[0.15, NAN])
    check = check_delivery(sends, deliveries)
    assert (check.unprocessed, check.unexpected) == (0, 1)


def test_no_deliveries_loses_every_acked_message():
    """With an empty deliveries table every acknowledged message is lost."""
    sends = sends_table([0, 0, 0], [0, 1, 2], outcome=["acked", "failed", "unknown"])
    check = check_delivery(sends, empty(DELIVERIES_SCHEMA))
    assert (check.lost, check.delivered, check.unique, check.out_of_order) == (1, 0, 0, 0)


def test_empty_trace_has_all_zero_counts():
    """A run that sent nothing gives zeros, not an error."""
    check = check_delivery(empty(SENDS_SCHEMA), empty(DELIVERIES_SCHEMA))
    assert set(check.counts().values()) == {0}


def test_example_ids_are_capped_but_counts_are_not():
    """Reports get at most MAX_IDS example ids; the count stays complete."""
    n = MAX_IDS + 50
    check = check_delivery(sends_table([0] * n, range(n)), empty(DELIVERIES_SCHEMA))
    assert check.lost == n
    assert len(check.lost_ids) == MAX_IDS


def test_repeated_message_ids_in_sends_are_rejected():
    """Sends must hold one row per message; a repeated id is a target bug, not a statistic."""
    sends = sends_table([0, 0], [3, 3])
    with pytest.raises(ValueError, match="repeated msg_id"):
        check_delivery(sends, deliveries_table(["0:3"], [0.1]))
