"""One broker model per delivery semantics; named brokers pick one through ``sim/presets.yaml``."""

from __future__ import annotations

from brokerlab.sim.engine import Simulation
from brokerlab.sim.models.log import LogModel
from brokerlab.sim.models.pubsub import PubSubModel
from brokerlab.sim.models.queue import QueueModel

#: preset ``model`` name -> class
MODELS: dict[str, type[Simulation]] = {
    LogModel.model: LogModel,
    QueueModel.model: QueueModel,
    PubSubModel.model: PubSubModel,
}

__all__ = ["MODELS", "LogModel", "PubSubModel", "QueueModel"]
