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
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer

from alr_monai.algorithms.losses import adjust_logits
from alr_monai.algorithms.policy import SelectionPolicy
from alr_monai.algorithms.selection import forget_rate_schedule
from alr_monai.distributed import (
    convert_to_global_batchnorm,
    gather_objects,
    gather_rows,
    global_batchnorm_sync,
    is_distributed,
)
from alr_monai.distributed import world_size as process_count
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


def _first_of_one(transform: Callable) -> Callable:
    def unwrapped(output: Any) -> Any:
        value = transform(output)
        return value[0] if isinstance(value, tuple) and len(value) == 1 else value

    unwrapped.__wrapped__ = transform  # type: ignore[attr-defined]
    return unwrapped


def _scalar_loss_transform(handler: Any) -> None:
    """Let MONAI's loss loggers read this trainer's one-dict output.

    MONAI's logging handlers (``MLFlowHandler``, ``StatsHandler``, ``TensorBoardStatsHandler``; ``--tracking
    mlflow`` adds the first with ``from_engine(['loss'], first=True)``) expect a decollated list of per-sample
    dicts, where ``first=True`` yields the loss itself. This trainer does not decollate (per-sample handlers read
    whole-batch tensors), so ``from_engine`` returns a one-element tuple and ``float()`` of it fails at the first
    iteration. A one-element tuple is unwrapped here, which is what the decollated path would have given.
    """
    from monai.handlers import MLFlowHandler, StatsHandler, TensorBoardStatsHandler

    if not isinstance(handler, (MLFlowHandler, StatsHandler, TensorBoardStatsHandler)):
        return
    transform = getattr(handler, "output_transform", None)
    if callable(transform) and not hasattr(transform, "__wrapped__"):
        handler.output_transform = _first_of_one(transform)


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
        class_log_prior: (C,) log prior of the GIVEN training labels, for ``logit_adjustment``.
        logit_adjustment: tau of the logit-adjusted loss (Menon et al. 2021): every peer's per-sample loss, for
            selection and for the update alike, is the cross-entropy of ``logits + tau * class_log_prior``; the
            network's plain logits then aim at balanced accuracy. 0 (default) is plain cross-entropy.
        distributed: train across the processes of ``torch.distributed`` (None: whenever a process group of
            more than one process exists). Each peer becomes its own ``DistributedDataParallel`` module, its batch
            norms take global-batch statistics (:class:`~alr_monai.distributed.GlobalBatchNorm`), and the
            per-sample outputs handlers see (``index``, ``label``, ``logits``, ``features``, ``losses``) are the
            GLOBAL batch gathered from every rank in rank order, so selection and per-sample statistics are those
            of one process on the same global batch; ``output["local"]`` is the slice of this rank's rows and
            ``output["image"]`` holds only this rank's images. A ``DistributedDataParallel`` around the whole
            ensemble (the model-zoo overlay's habit) is unwrapped and its peers wrapped one by one.
        loss_function: the per-sample loss ``(logits, labels) -> (B,)`` that ranks the batch and updates the
            peers (the bundle's ``loss`` key, ``torch.nn.CrossEntropyLoss(reduction="none")``); default: cross
            entropy. It must not reduce. VoG's closed-form last-layer gradient assumes cross entropy.
        channels_last: keep the peers' weights and every batch in channels-last memory format (``channels_last``
            for 2D, ``channels_last_3d`` for 3D, picked from the first batch): the same numbers, and faster
            convolutions on GPUs with tensor cores (AMP).

    Every peer's gradient is the mean over the samples its peer kept in the global batch: each rank sums its own
    kept losses and scales by ``world_size / global kept count``, and DDP averages over ranks.
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
        distributed: bool | None = None,
        class_log_prior: Sequence[float] | torch.Tensor | None = None,
        logit_adjustment: float = 0.0,
        loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        channels_last: bool = False,
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
        if isinstance(network, DistributedDataParallel):
            network = network.module
        if not isinstance(network, PeerEnsemble):
            raise TypeError(f"network must be an alr_monai.networks.PeerEnsemble, got {type(network).__name__}")
        if forget_rate is not None and not 0.0 <= forget_rate < 1.0:
            raise ValueError(f"forget_rate must be in [0, 1) or None, got {forget_rate}")
        if logit_adjustment < 0:
            raise ValueError(f"logit_adjustment must be >= 0, got {logit_adjustment}")
        if logit_adjustment > 0 and class_log_prior is None:
            raise ValueError("logit_adjustment > 0 needs class_log_prior (the given labels' log class prior)")
        self.class_log_prior = None if class_log_prior is None else torch.as_tensor(class_log_prior).float()
        self.logit_adjustment = float(logit_adjustment)
        self.network = network
        self.loss_function = loss_function
        self.optimizer = optimizer
        self.forget_rate = forget_rate
        self.num_gradual = num_gradual
        self.exponent = exponent
        self.class_forget_rates: torch.Tensor | None = None
        self.channels_last = bool(channels_last)
        self._memory_format: torch.memory_format | None = None
        self.selection_policy = SelectionPolicy() if selection_policy is None else selection_policy
        self.add_event_handler(Events.EPOCH_STARTED, lambda _engine: self.selection_policy.start_epoch())
        self._taps = [FeatureTap(peer) for peer in network.peers]
        self.distributed = is_distributed() if distributed is None else bool(distributed)
        self._train_peers: list[torch.nn.Module] = list(network.peers)
        if self.distributed:
            convert_to_global_batchnorm(network)
            device_ids = [torch.device(device)] if torch.device(device).type == "cuda" else None
            # One DDP module per peer: each peer's loss touches only its own parameters, and DDP must see every
            # parameter it syncs used in the backward of the module it wraps.
            self._train_peers = [DistributedDataParallel(peer, device_ids=device_ids) for peer in network.peers]
        # Handlers are attached after the taps and the events exist, so they can rely on both.
        if train_handlers:
            for handler in train_handlers:
                # None is an optional handler an overlay switched off (e.g. "selection_metrics": null).
                if handler is not None:
                    _scalar_loss_transform(handler)
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

    def _per_sample_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # logit adjustment (Menon et al. 2021): the loss sees logits + tau * log prior, inference the plain ones
        logits = adjust_logits(logits, self.class_log_prior, self.logit_adjustment)
        if self.loss_function is None:
            return F.cross_entropy(logits, targets, reduction="none")
        losses = self.loss_function(logits, targets)
        if losses.shape != targets.shape:
            raise ValueError(
                f"the co-teaching loss must give one value per sample (shape {tuple(targets.shape)}), got shape "
                f"{tuple(losses.shape)}: set reduction='none' (e.g. torch.nn.CrossEntropyLoss(reduction='none'))"
            )
        return losses

    def _to_channels_last(self, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs`` in channels-last format; the first call converts the peers' weights too (in place)."""
        if self._memory_format is None:
            if inputs.ndim not in (4, 5):
                raise ValueError(f"channels_last needs 2D or 3D batches (4 or 5 dims), got shape {tuple(inputs.shape)}")
            self._memory_format = torch.channels_last if inputs.ndim == 4 else torch.channels_last_3d
            # Module.to keeps the Parameter objects (it swaps their data), so the optimizer still holds them.
            self.network.to(memory_format=self._memory_format)
        return inputs.contiguous(memory_format=self._memory_format)

    def _iteration(self, engine: Engine, batchdata: dict[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        inputs, targets = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)[:2]
        if "index" not in batchdata:
            raise KeyError("co-teaching batches need an 'index' entry (each sample's position in the training set)")
        indices = torch.as_tensor(batchdata["index"]).long()
        targets = torch.as_tensor(targets).long().reshape(-1)
        if self.channels_last:
            inputs = self._to_channels_last(inputs)
        self.network.train()
        self.optimizer.zero_grad(set_to_none=True)

        use_amp = self.amp and self.scaler is not None
        autocast = torch.autocast("cuda") if use_amp else nullcontext()
        synchronised = global_batchnorm_sync(self.network) if self.distributed else nullcontext()
        with autocast, synchronised:
            logits = [peer(inputs) for peer in self._train_peers]
            features = [tap.pop() for tap in self._taps]
            losses = [self._per_sample_loss(out.float(), targets) for out in logits]

        # The global batch (this rank's rows alone in one process): selection and per-sample state see it whole.
        count = len(self._train_peers)
        gathered, local = gather_rows([indices.to(targets.device), targets, *logits, *features, *losses])
        forget_rate = self.current_forget_rate()
        output: dict[str, Any] = {
            Keys.IMAGE: inputs,
            Keys.LABEL: gathered[1],
            "index": gathered[0].cpu(),
            "logits": gathered[2 : 2 + count],
            "features": gathered[2 + count : 2 + 2 * count],
            "losses": gathered[2 + 2 * count :],
            "forget_rate": forget_rate,
            "local": local,
        }
        if self.distributed and "id" in batchdata:
            output["id"] = gather_objects([str(i) for i in batchdata["id"]])
        output["scores"] = {"loss": output["losses"]}
        engine.state.output = output
        engine.fire_event(CoTeachingEvents.LOSSES_COMPUTED)

        class_rates = self.current_class_forget_rates() if self.selection_policy.per_class else None
        keep = self.selection_policy.select(
            output["scores"], output[Keys.LABEL], forget_rate if class_rates is None else class_rates
        )
        force_keep = output.get("force_keep")
        if force_keep is not None:
            # Expert-verified samples are never dropped by the small-loss rule.
            keep = [k | force_keep for k in keep]
        output["keep"] = keep
        engine.fire_event(CoTeachingEvents.SELECTION_COMPLETED)

        # Each peer learns from the samples its peer chose (a single network learns from its own choice).
        chosen = [keep[(k + 1) % count] for k in range(count)]
        if self.distributed:
            # sum of this rank's kept losses / global kept count, times world size: DDP's average over ranks
            # then gives the mean over the global batch's kept samples, as one process would
            scale = float(process_count())
            update_losses = [
                losses[k][chosen[k][local]].sum() * scale / max(int(chosen[k].sum()), 1) for k in range(count)
            ]
        else:
            update_losses = [losses[k][chosen[k]].mean() for k in range(count)]
        total = torch.stack(update_losses).sum()
        if use_amp:
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            total.backward()
            self.optimizer.step()

        output[Keys.PRED] = torch.stack(output["logits"]).sum(0)
        if self.distributed:
            global_losses = [output["losses"][k][chosen[k]].mean() for k in range(count)]
            output[Keys.LOSS] = float(torch.stack(global_losses).sum()) / count
        else:
            output[Keys.LOSS] = float(total.detach()) / count
        return output
