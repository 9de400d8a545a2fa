"""The lab's discrete-event simulator (SimPy): ``simulate(scenario, seed) -> TargetResult``.

One model per delivery semantics (``sim/models``: log, queue, pubsub) on a shared engine
(``sim/engine.py``); named brokers are presets (``sim/presets.yaml``).
"""

from __future__ import annotations

from brokerlab.sim.run import simulate

__all__ = ["simulate"]
