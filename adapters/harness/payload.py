"""Message payloads: the lab's own ids in a fixed header, zero padding up to the scenario's size.

Ids are the lab's own, never the broker's, so a delivery can be matched to its send whatever the
broker did to it (redelivery, reordering, a restart that renumbered everything).
"""

from __future__ import annotations

import struct

#: Message header: producer, seq, key, t_intended. Ids are the lab's own, never the broker's.
HEADER = struct.Struct("<IQqd")
_PADDING = bytes(1 << 20)


def encode_payload(producer: int, seq: int, key: int, t_intended: float, size: int) -> bytes:
    """Header plus zero padding up to ``size`` bytes (never shorter than the header)."""
    head = HEADER.pack(producer, seq, key, t_intended)
    pad = size - HEADER.size
    if pad <= 0:
        return head
    if pad <= len(_PADDING):
        return head + _PADDING[:pad]
    return head + bytes(pad)


def decode_payload(payload: bytes) -> tuple[int, int, int, float]:
    """``(producer, seq, key, t_intended)`` from a payload written by :func:`encode_payload`."""
    return HEADER.unpack_from(payload)


_unpack_header = HEADER.unpack_from


def payload_struct(size: int) -> struct.Struct:
    """A struct packing :data:`HEADER` and the zero padding of a ``size``-byte payload in one
    call: the same bytes as :func:`encode_payload` for that size."""
    return struct.Struct(f"{HEADER.format}{max(0, size - HEADER.size)}x")
