"""The service's features, one module each, over the shared :class:`~api.runtime.Runtime`.

Each takes one frozen request object (built by its router) and a deadline, checks what depends
on the model, and runs one job in a worker pool that builds the complete answer: a JSON-ready
dict, or an :class:`~api.encodings.BinaryResult`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..metrics import Metrics
from ..registry import ModelRegistry
from ..runtime import Runtime
from ..settings import Settings
from .activations import Activations
from .atlas import Atlas
from .attributions import Attributions
from .decomposition import Decompositions
from .predict import Predictions


@dataclass(frozen=True)
class Features:
    runtime: Runtime
    predictions: Predictions
    activations: Activations
    decompositions: Decompositions
    attributions: Attributions
    atlas: Atlas

    @classmethod
    def build(cls, settings: Settings, registry: ModelRegistry, metrics: Metrics) -> "Features":
        runtime = Runtime(settings, registry, metrics)
        attributions = Attributions(runtime)
        return cls(runtime, Predictions(runtime), Activations(runtime, attributions), Decompositions(runtime), attributions, Atlas(runtime))

    async def close(self) -> None:
        await self.predictions.close()
        self.atlas.close()
        self.runtime.close()
