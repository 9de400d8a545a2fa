"""Random draws for the simulator: whole chunks drawn with NumPy, handed out one at a time.

A simulation needs one processing time per delivery, one delay per network hop and one service
time per broker operation, but cannot know in advance how many (redeliveries, drops). Drawing
them one by one from NumPy is slow; drawing a fixed-size chunk and iterating over a Python list is
fast and still deterministic for a seed, because chunks are always the same size.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from brokerlab.core.load import draw
from brokerlab.core.scenario import Constant, Distribution, Empirical, Exponential, Uniform

#: Samples drawn at once; a constant so that a seed always yields the same sequence.
CHUNK = 65_536


def is_zero(dist: Distribution) -> bool:
    """True when every sample is 0, so the simulator can skip the step (and its event) entirely."""
    match dist:
        case Constant(value=value):
            return value == 0
        case Exponential(mean=mean):
            return mean == 0
        case Uniform(max=high):
            return high == 0
        case Empirical(values=values):
            return all(v == 0 for v in values)
    return False


def samples(dist: Distribution, rng: np.random.Generator) -> Iterator[float]:
    """Endless samples of ``dist`` as Python floats (``next()`` is the cheap way to take one)."""
    if isinstance(dist, Constant):
        return itertools.repeat(float(dist.value))
    return _chunks(dist, rng)


def step_samples(dist: Distribution | None, rng: np.random.Generator) -> Iterator[float] | None:
    """Samples of a step's time, or None when there is none or it is always 0 (the simulator
    then skips the step and its event)."""
    return None if dist is None or is_zero(dist) else samples(dist, rng)


def _chunks(dist: Distribution, rng: np.random.Generator) -> Iterator[float]:
    # The same chunks, drawn as lazily as a generator would, but chained in C: ``next()`` is a
    # list iterator's step, not a generator's resumption (one sample per message and step).
    chunks = map(lambda _: draw(dist, rng, CHUNK).tolist(), itertools.repeat(None))
    return itertools.chain.from_iterable(chunks)
