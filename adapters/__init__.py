"""Real brokers: one record per target (:mod:`.targets`), adapters, the load harness, embedded
broker control.

``run_real`` is imported lazily so that ``import brokerlab.adapters.embedded`` does not pull in the
Redis and NATS clients.
"""

from __future__ import annotations

if __name__ != "brokerlab.adapters":  # pragma: no cover - only when imported by its folder name
    raise ImportError(
        "adapters/ installs as brokerlab.adapters: import brokerlab.adapters (a second copy "
        "loaded as 'adapters' would have its own module state)"
    )

from typing import Any

__all__ = ["run_real"]


def __getattr__(name: str) -> Any:
    if name in ("run_real", "run_real_async"):
        from brokerlab.adapters import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'brokerlab.adapters' has no attribute {name!r}")
