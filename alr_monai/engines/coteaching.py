"""Co-teaching trainer (Han et al. 2018) as a MONAI ``Trainer``.

One engine iteration runs every peer forward once, fires ``CoTeachingEvents.LOSSES_COMPUTED`` so handlers
can read per-sample losses and features (and offer VoG scores), selects each peer's small-loss samples,
fires ``CoTeachingEvents.SELECTION_COMPLETED``, then updates each peer on its PEER's selection. With one
peer it trains on its own selection, which with forget rate 0 is plain cross-entropy training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine, EventEnum, Events
from ignite.metrics import Metric
from monai.engines import Trainer
from monai.engines.utils import default_prepare_batch
from monai.utils.enums import CommonKeys as Keys
from torch.optim import Optimizer

from alr_monai.algorithms.policy import SelectionPolicy
from alr_monai.algorithms.selection import forget_rate_schedule
from alr_monai.networks import FeatureTap, PeerEnsemble


class CoTeachingEvents(EventEnum):
    """Events fired inside a co-teaching iteration.

    ``LOSSES_COMPUTED``: ``engine.state.output`` holds ``index``, ``label``, and per peer ``logits``,
    ``features`` and ``losses`` (lists, one entry per peer), and ``scores``, a dict of named per-sample
    criteria (``{"loss": losses}`` to start with). A scorer handler adds its own entry (a list of per-peer
    scores for the batch, lower = keep), e.g. ``output["scores"]["vog"]``; the trainer's
    :class:`~alr_monai.algorithms.policy.SelectionPolicy` decides which of them pick the samples. A handler may
    also set ``output["force_keep"]`` (a boolean batch mask of samples every peer must keep, such as
    expert-verified labels).
    ``SELECTION_COMPLETED``: ``output["keep"]`` holds each peer's boolean selection.
    """

    LOSSES_COMPUTED = "losses_computed"
    SELECTION_COMPLETED = "selection_completed"


class CoTeachingTrainer(Trainer):
    """Trains the peers of a :class:`PeerEnsemble` with co-teaching small-loss selection.

    Args:
        device: where to train.
        max_epochs: epochs to run.
        train_data_loader: yields dict batches with ``image``, ``label`` and ``index`` (position in the
            training set, which the per-sample handlers key on).
        network: the peers to train.
        optimizer: one optimizer over all peers' parameters (each peer's loss touches only its own parameters,
            so this equals one optimizer per peer).
        forget_rate: final fraction of each batch to drop. None means "unknown": no sample is dropped until a
            handler (for example ``NoiseRateEstimateHandler``) sets ``engine.forget_rate`` from the data. Such a
            handler may also set ``engine.class_forget_rates``, a (C,) tensor of final rates per GIVEN class,
            which a per-class ``selection_policy`` cuts at (each ramped like the global rate).
        num_gradual: epochs over which the forget rate ramps up from 0.
        exponent: the ramp reaches ``forget_rate ** exponent`` at its end, as in the Co-teaching code.
        epoch_length: iterations per epoch, default ``len(train_data_loader)``.
        non_blocking: non-blocking host-to-device copies.
        prepare_batch: parses ``(image, label)`` from a batch.
        key_train_metric: optional metric on the summed logits.
        additional_metrics: more metrics.
        train_handlers: handlers to attach; None entries are skipped, so a bundle overlay can switch an optional
            handler off by setting its key to null.
        amp: automatic mixed precision on CUDA.
        selection_policy: decides the kept samples from the batch's named scores; default: one small-loss cut
            over the batch with no other criterion (plain Co-teaching).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: PeerEnsemble,
        optimizer: Optimizer,
        forget_rate: float | None = None,
        num_gradual: int = 10,
        exponent: float = 1.0,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        key_train_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        selection_policy: SelectionPolicy | None = None,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            handlers=None,
            amp=amp,
            event_names=[CoTeachingEvents],
            decollate=False,
        )
        if not isinstance(network, PeerEnsemble):
            raise TypeError(f"network must be an alr_monai.networks.PeerEnsemble, got {type(network).__name__}")
        if forget_rate is not None and not 0.0 <= forget_rate < 1.0:
            raise ValueError(f"forget_rate must be in [0, 1) or None, got {forget_rate}")
        self.network = network
        self.optimizer = optimizer
        self.forget_rate = forget_rate
        self.num_gradual = num_gradual
        self.exponent = exponent
        self.class_forget_rates: torch.Tensor | None = None
        self.selection_policy = SelectionPolicy() if selection_policy is None else selection_policy
        self.add_event_handler(Events.EPOCH_STARTED, lambda _engine: self.selection_policy.start_epoch())
        self._taps = [FeatureTap(peer) for peer in network.peers]
        # Handlers are attached after the taps and the events exist, so they can rely on both.
        if train_handlers:
            for handler in train_handlers:
                # None is an optional handler an overlay switched off (e.g. "selection_metrics": null).
                if handler is not None:
                    handler.attach(self)

    def current_forget_rate(self, epoch: int | None = None) -> float:
        """The forget rate for a 0-based ``epoch`` (default: the epoch now running)."""
        if self.forget_rate is None:
            return 0.0
        epoch = self.state.epoch - 1 if epoch is None else epoch
        return forget_rate_schedule(epoch, self.forget_rate, self.num_gradual, self.exponent)

    def current_class_forget_rates(self, epoch: int | None = None) -> torch.Tensor | None:
        """Per-class forget rates for a 0-based ``epoch`` (default: now), or None when none were set."""
        if self.class_forget_rates is None:
            return None
        epoch = self.state.epoch - 1 if epoch is None else epoch
        rates = [float(r) for r in self.class_forget_rates]
        return torch.tensor([forget_rate_schedule(epoch, r, self.num_gradual, self.exponent) for r in rates])

    def _iteration(self, engine: Engine, batchdata: dict[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        inputs, targets = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)[:2]
        if "index" not in batchdata:
            raise KeyError("co-teaching batches need an 'index' entry (each sample's position in the training set)")
        indices = torch.as_tensor(batchdata["index"]).long()
        targets = torch.as_tensor(targets).long().reshape(-1)
        peers = self.network.peers
        self.network.train()
        self.optimizer.zero_grad(set_to_none=True)

        use_amp = self.amp and self.scaler is not None
        autocast = torch.autocast("cuda") if use_amp else nullcontext()
        with autocast:
            logits = [peer(inputs) for peer in peers]
            features = [tap.pop() for tap in self._taps]
            losses = [F.cross_entropy(out.float(), targets, reduction="none") for out in logits]

        forget_rate = self.current_forget_rate()
        output: dict[str, Any] = {
            Keys.IMAGE: inputs,
            Keys.LABEL: targets,
            "index": indices,
            "logits": [out.detach() for out in logits],
            "features": [f.detach() for f in features],
            "losses": [loss.detach() for loss in losses],
            "forget_rate": forget_rate,
        }
        output["scores"] = {"loss": output["losses"]}
        engine.state.output = output
        engine.fire_event(CoTeachingEvents.LOSSES_COMPUTED)

        class_rates = self.current_class_forget_rates() if self.selection_policy.per_class else None
        keep = self.selection_policy.select(
            output["scores"], targets, forget_rate if class_rates is None else class_rates
        )
        force_keep = output.get("force_keep")
        if force_keep is not None:
            # Expert-verified samples are never dropped by the small-loss rule.
            keep = [k | force_keep for k in keep]
        output["keep"] = keep
        engine.fire_event(CoTeachingEvents.SELECTION_COMPLETED)

        # Each peer learns from the samples its peer chose (a single network learns from its own choice).
        update_losses = [losses[k][keep[(k + 1) % len(peers)]].mean() for k in range(len(peers))]
        total = torch.stack(update_losses).sum()
        if use_amp:
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            total.backward()
            self.optimizer.step()

        output[Keys.PRED] = torch.stack(output["logits"]).sum(0)
        output[Keys.LOSS] = float(total.detach()) / len(peers)
        return output
