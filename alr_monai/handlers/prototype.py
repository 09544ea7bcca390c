"""Prototype-distance scorer for the co-teaching selection policy (registers the score ``"prototype"``)."""

from __future__ import annotations

from ignite.engine import Engine, Events

from alr_monai.algorithms.prototype import PrototypeAccumulator, cosine_distance_to_prototypes
from alr_monai.engines.coteaching import CoTeachingEvents


class PrototypeDistanceHandler:
    """Offers each sample's cosine distance to its given class's prototype as ``output["scores"]["prototype"]``.

    Each peer's prototypes are the mean unit-norm penultimate features of the samples that peer's selection
    kept in the previous epoch (see :mod:`alr_monai.algorithms.prototype`); the features come from the
    training forward pass, so the score costs no extra pass. From the second epoch on the score is offered;
    a class without a prototype yet gets NaN (the policy ranks NaN last within its fill, and the primary rank
    combination ignores it).

    Args:
        num_classes: number of classes.
        min_count: samples a class needs in an epoch's selection to refresh its prototype.

    Memory: no per-sample state; per peer a few C x D class sums and prototypes (independent of N).
    """

    def __init__(self, num_classes: int, min_count: int = 2) -> None:
        self.num_classes = num_classes
        self.min_count = min_count
        self.accumulators: list[PrototypeAccumulator] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(CoTeachingEvents.LOSSES_COMPUTED, self._score)
        engine.add_event_handler(CoTeachingEvents.SELECTION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._commit)

    def _ensure(self, num_peers: int) -> None:
        while len(self.accumulators) < num_peers:
            self.accumulators.append(PrototypeAccumulator(self.num_classes, self.min_count))

    def _score(self, engine: Engine) -> None:
        output = engine.state.output
        self._ensure(len(output["features"]))
        if any(acc.prototypes is None for acc in self.accumulators):
            return
        output["scores"]["prototype"] = [
            cosine_distance_to_prototypes(features, output["label"], acc.prototypes, acc.valid)
            for features, acc in zip(output["features"], self.accumulators, strict=True)
        ]

    def _accumulate(self, engine: Engine) -> None:
        output = engine.state.output
        for features, keep, acc in zip(output["features"], output["keep"], self.accumulators, strict=True):
            acc.add(features[keep], output["label"][keep])

    def _commit(self, _engine: Engine) -> None:
        for acc in self.accumulators:
            acc.commit()

    def state_dict(self) -> dict:
        state: dict = {"num_peers": len(self.accumulators)}
        for k, acc in enumerate(self.accumulators):
            for key, value in acc.state_dict().items():
                state[f"peer{k}.{key}"] = value
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.accumulators = []
        self._ensure(int(state_dict["num_peers"]))
        for k, acc in enumerate(self.accumulators):
            acc.load_state_dict({key: state_dict[f"peer{k}.{key}"] for key in ("prototypes", "valid")})
