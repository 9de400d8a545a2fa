"""The lab's discrete-event simulator (SimPy): ``simulate(scenario, seed) -> TargetResult``.

One model per delivery semantics (``sim/models``: log, queue, pubsub) on a shared engine
(``sim/engine.py``); named brokers are presets (``sim/presets.yaml``).
"""

from __future__ import annotations

if __name__ != "brokerlab.sim":  # pragma: no cover - only when imported by its folder name
    raise ImportError(
        "sim/ installs as brokerlab.sim: import brokerlab.sim (a second copy loaded as "
        "'sim' would have its own module state)"
    )

from brokerlab.sim.run import simulate

__all__ = ["simulate"]
