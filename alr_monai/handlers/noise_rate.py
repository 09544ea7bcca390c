"""Estimate the label-noise rate from the data and hand it to the co-teaching schedule."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import torch
from ignite.engine import Engine, Events

from alr_monai.algorithms.noise_estimate import (
    ENSEMBLE_METHODS,
    NOISE_ESTIMATION_METHODS,
    VALIDATION_METHODS,
    combine_estimates,
    confident_joint_val_rates,
    confusion_inversion_rates,
    gmm_clean_probability,
    noise_rate_from_clean_probability,
    prototype_matching_rates,
)
from alr_monai.handlers.selection import SmallLossSelectionHandler


def _eval_pass(network: torch.nn.Module, loader: Iterable, with_features: bool) -> dict[str, torch.Tensor]:
    """Eval-mode pass of every peer: mean softmax (N, C), labels, indices, and per-peer features (P, N, D)."""
    from alr_monai.networks import FeatureTap

    peers = list(getattr(network, "peers", [network]))
    device = next(network.parameters()).device
    taps = [FeatureTap(peer) for peer in peers] if with_features else []
    was_training = network.training
    network.eval()
    probs, features, labels, indices = [], [], [], []
    try:
        with torch.no_grad():
            for batch in loader:
                images = batch["image"].to(device)
                probs.append(torch.stack([torch.softmax(peer(images).float(), -1) for peer in peers]).mean(0).cpu())
                if taps:
                    features.append(torch.stack([tap.pop().float() for tap in taps]).cpu())
                labels.append(torch.as_tensor(batch["label"]).long().reshape(-1).cpu())
                index = batch.get("index")
                indices.append(torch.as_tensor(index).long().reshape(-1) if index is not None else torch.empty(0))
    finally:
        for tap in taps:
            tap.remove()
        network.train(was_training)
    out = {"probs": torch.cat(probs), "labels": torch.cat(labels), "index": torch.cat(indices)}
    if taps:
        out["features"] = torch.cat(features, 1)
    return out


def separable_balanced_accuracy(num_classes: int) -> float:
    """The validation balanced accuracy a model needs before its validation-calibrated noise estimate is trusted.

    A seventh of the way from chance (1/C) to perfect: twice chance for 8 classes, as before, and 0.57 for a
    binary task, where "twice chance" would demand a perfect model and so never trusted the estimate.
    """
    chance = 1.0 / num_classes
    return chance + (1.0 - chance) / 7.0


def _balanced_accuracy(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean recall over the classes present in ``labels`` of the argmax of ``probs``."""
    present = [c for c in range(num_classes) if (labels == c).any()]
    predicted = probs.argmax(1)
    recalls = [float((predicted[labels == c] == c).double().mean()) for c in present]
    return sum(recalls) / max(len(recalls), 1)


def _class_means(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Mean of ``values`` over the samples of each label (NaN for a label no sample has)."""
    return [float(values[labels == c].mean()) if (labels == c).any() else math.nan for c in range(num_classes)]


class NoiseRateEstimateHandler:
    """After epoch ``estimate_epoch``, estimate the noise rate from the data.

    A hospital never knows its noise rate; the reference code set the forget rate to the injected truth. When
    the trainer's ``forget_rate`` is None, the estimate (clipped to ``max_rate``) becomes the forget rate; the
    ramp started at 0, so nothing was dropped before the estimate existed. The estimate is logged as
    ``noise_rate_estimate`` every time, and ``noise_rate_true`` too when a simulation supplies it.

    Methods:
        ``"gmm"`` (default): two-component mixture over the training pass's per-sample losses (per given class
        with ``per_class``); needs nothing but the selection tracker.
        ``"confusion_inversion"``, ``"prototype_matching"``, ``"confident_joint_val"``: per-given-class
        estimators calibrated on the expert-clean validation set (see
        :mod:`alr_monai.algorithms.noise_estimate`). At the estimate epoch the handler runs ONE extra eval-mode
        pass (no augmentation, no gradients) of every peer over ``train_loader`` and ``val_loader``: about a
        third of a training epoch's compute for the training set plus one validation pass, once per run.
        The global estimate is the class-size-weighted mean of the per-class rates; the per-class rates are
        kept in ``class_estimates`` and logged as ``noise_rate_estimate/<class>``. When the model's validation
        balanced accuracy at the estimate epoch has not covered a seventh of the way from chance to perfect (it
        does not yet tell the classes apart, so every class looks alike), a warning says so and the per-class loss
        mixture estimates instead. A seventh is twice chance for 8 classes and 0.57 for 2, where twice chance
        would be a perfect score.
        The per-class estimates (clipped to ``max_rate``) also become the trainer's ``class_forget_rates``,
        which a per-class selection policy cuts at.

    Args:
        selection: the tracker holding the epoch's per-sample losses and labels.
        num_classes: number of classes.
        estimate_epoch: 1-based epoch after which to estimate (after a short warm-up).
        method: ``"gmm"`` or one of :data:`~alr_monai.algorithms.noise_estimate.VALIDATION_METHODS`.
        per_class: for ``"gmm"``: fit within each labelled class (protects rare clean classes).
        max_rate: upper bound on the forget rate taken from the estimate.
        true_rate: the injected rate, in simulation only, for logging.
        network: the peers (a ``PeerEnsemble`` or one network); required by the validation methods.
        train_loader: the training set WITHOUT augmentation, batches with ``image``, ``label`` (given) and
            ``index``; required by the validation methods.
        val_loader: the expert-clean validation set, batches with ``image`` and ``label``; required by the
            validation methods.
        true_labels: simulation only, the true training labels by index, to log each given class's true noise
            rate (``noise_rate_true/<class>``) next to its estimate. Never used to estimate.
        class_names: names for the per-class metrics (default: the class indices).

    Memory: kept across epochs only the simulation's true labels (8 bytes per training sample) and per-class
    rates. The validation methods' one eval pass holds, for that epoch only, the training set's mean softmax
    (C x 4 bytes per sample), label and index (16 bytes), and for ``"prototype_matching"`` every peer's
    features: P x D x 4 bytes per sample (1 KiB for 2 peers and D = 128; at 200k samples about 200 MB, plus
    float64 normalised copies inside the estimator).
    """

    def __init__(
        self,
        selection: SmallLossSelectionHandler,
        num_classes: int,
        estimate_epoch: int = 2,
        method: str = "gmm",
        per_class: bool = True,
        max_rate: float = 0.9,
        true_rate: float | None = None,
        network: torch.nn.Module | None = None,
        train_loader: Iterable | None = None,
        val_loader: Iterable | None = None,
        true_labels: Sequence[int] | torch.Tensor | None = None,
        class_names: Sequence[str] | None = None,
        latest_epoch: int | None = None,
        plateau_delta: float = 0.02,
        disagreement_tolerance: float = 0.15,
    ) -> None:
        known = NOISE_ESTIMATION_METHODS + VALIDATION_METHODS + ("ensemble",)
        if method not in known:
            raise ValueError(f"unknown noise estimation method {method!r}; choose from {known}")
        if latest_epoch is not None and latest_epoch < estimate_epoch:
            raise ValueError(f"latest_epoch ({latest_epoch}) must be >= estimate_epoch ({estimate_epoch})")
        if method in VALIDATION_METHODS + ("ensemble",) or latest_epoch is not None:
            missing = [
                name
                for name, value in (("network", network), ("train_loader", train_loader), ("val_loader", val_loader))
                if value is None
            ]
            if missing:
                raise ValueError(
                    f"noise estimation method {method!r} (or a latest_epoch) needs {', '.join(missing)} "
                    "(an eval-mode pass over the un-augmented training set and the expert-clean validation set)"
                )
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.selection = selection
        self.num_classes = num_classes
        self.estimate_epoch = estimate_epoch
        self.method = method
        self.per_class = per_class
        self.max_rate = max_rate
        self.true_rate = true_rate
        self.network = network
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.true_labels = None if true_labels is None else torch.as_tensor(true_labels).long().reshape(-1)
        self.class_names = [str(c) for c in range(num_classes)] if class_names is None else list(class_names)
        self.latest_epoch = latest_epoch
        self.plateau_delta = plateau_delta
        self.disagreement_tolerance = disagreement_tolerance
        self.estimate: float | None = None
        self.class_estimates: list[float] | None = None
        # what each estimator said (ensemble), the epoch the estimate was made, the classes cut cautiously
        self.estimator_rates: dict[str, list[float]] = {}
        self.estimated_at: int | None = None
        self._last_val_balanced: float | None = None
        self._class_truth: list[float] | None = None
        self.logger = logging.getLogger(__name__)

    def _combined(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The ensemble's per-class spread and flags, from the estimators' rates (None before an ensemble estimate)."""
        if not self.estimator_rates:
            return None
        rates = {name: torch.tensor(values, dtype=torch.float64) for name, values in self.estimator_rates.items()}
        _, spread, flagged = combine_estimates(rates, self.disagreement_tolerance)
        return spread, flagged

    @property
    def disagreement(self) -> float | None:
        """The largest spread (max - min) of the ensemble's estimators over the classes."""
        combined = self._combined()
        return None if combined is None else float(torch.nan_to_num(combined[0], nan=0.0).max())

    @property
    def cautious_classes(self) -> list[str]:
        """The classes whose estimators span more than ``disagreement_tolerance``."""
        combined = self._combined()
        if combined is None:
            return []
        return [name for name, flag in zip(self.class_names, combined[1].tolist(), strict=True) if flag]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._apply_estimate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _apply_estimate(self, engine: Engine) -> None:
        # A resumed run restores the estimate from the checkpoint, but not the trainer's forget rate.
        if self.estimate is not None and getattr(engine, "forget_rate", 0.0) is None:
            self._hand_over(engine)

    def _hand_over(self, engine: Engine) -> None:
        """The estimate becomes the trainer's forget rate, and the per-class estimates its per-class rates."""
        engine.forget_rate = min(self.estimate, self.max_rate)
        if self.class_estimates is not None and hasattr(engine, "class_forget_rates"):
            rates = torch.tensor(self.class_estimates, dtype=torch.float64)
            # a class absent from the training set has a NaN estimate: it has nothing to cut
            engine.class_forget_rates = torch.nan_to_num(rates, nan=0.0).clamp(0.0, self.max_rate)

    def _with_features(self) -> bool:
        return self.method in ("prototype_matching", "ensemble")

    def _uses_validation(self) -> bool:
        return self.method in VALIDATION_METHODS + ("ensemble",) or self.latest_epoch is not None

    def _ready(self, epoch: int, val: dict[str, torch.Tensor], max_epochs: int | None = None) -> bool:
        """Whether the network has learned enough to estimate: its validation balanced accuracy has reached
        :func:`separable_balanced_accuracy` and stopped rising fast (by less than ``plateau_delta`` since the
        last epoch), or ``latest_epoch`` has come, or the run's last epoch (a run shorter than ``latest_epoch``
        still estimates). Without ``latest_epoch``, ``estimate_epoch`` decides alone."""
        if self.latest_epoch is None:
            return True
        balanced = _balanced_accuracy(val["probs"], val["labels"], self.num_classes)
        previous, self._last_val_balanced = self._last_val_balanced, balanced
        if epoch >= self.latest_epoch or (max_epochs is not None and epoch >= max_epochs):
            return True
        learned = balanced >= separable_balanced_accuracy(self.num_classes)
        return learned and previous is not None and balanced - previous < self.plateau_delta

    def _estimate_from_validation(self, val: dict[str, torch.Tensor], epoch: int) -> tuple[float, list[float]] | None:
        train = _eval_pass(self.network, self.train_loader, self._with_features())
        if train["index"].numel() != train["labels"].numel():
            raise KeyError("train_loader batches need an 'index' entry (each sample's position in the training set)")
        order = torch.argsort(train["index"])
        given = train["labels"][order]
        if not self._classes_separable(val["probs"], val["labels"], epoch):
            return None
        methods = ENSEMBLE_METHODS if self.method == "ensemble" else (self.method,)
        by_method: dict[str, torch.Tensor] = {}
        for method in methods:
            if method == "prototype_matching":
                by_method[method] = prototype_matching_rates(
                    train["features"][:, order], given, val["features"], val["labels"], self.num_classes
                )
            elif method == "confusion_inversion":
                by_method[method] = confusion_inversion_rates(
                    train["probs"][order], given, val["probs"], val["labels"], self.num_classes
                )
            elif method == "confident_joint_val":
                by_method[method] = confident_joint_val_rates(
                    train["probs"][order], given, val["probs"], val["labels"], self.num_classes
                )
            else:
                by_method[method] = torch.tensor(self._estimate_from_losses()[1], dtype=torch.float64)
        if self.method == "ensemble":
            rates = combine_estimates(by_method, self.disagreement_tolerance)[0]
            self.estimator_rates = {name: [float(r) for r in values] for name, values in by_method.items()}
        else:
            rates = by_method[self.method]
        counts = torch.bincount(given, minlength=self.num_classes).double()
        rates = torch.nan_to_num(rates, nan=0.0)
        overall = float((rates * counts).sum() / counts.sum().clamp_min(1.0))
        if self.true_labels is not None and len(self.true_labels) != len(given):
            raise ValueError(f"{len(self.true_labels)} true labels for {len(given)} training samples")
        self._record_class_truth(train["index"][order], given)
        return overall, [float(r) for r in rates]

    def _record_class_truth(self, index: torch.Tensor, given: torch.Tensor) -> None:
        """Simulation only: each given class's true noise rate, logged next to its estimate (never estimates)."""
        if self.true_labels is None:
            return
        wrong = self.true_labels[index] != given
        self._class_truth = _class_means(wrong.double(), given, self.num_classes)

    def _classes_separable(self, probs: torch.Tensor, labels: torch.Tensor, epoch: int) -> bool:
        # The validation-calibrated estimates assume the model tells the classes apart; a model that has learnt
        # nothing yet makes every class look alike and the estimate arbitrary (it read 0 everywhere on a tiny
        # 1-epoch run), so the handler falls back to the loss mixture then.
        balanced = _balanced_accuracy(probs, labels, self.num_classes)
        needed = separable_balanced_accuracy(self.num_classes)
        if balanced < needed:
            self.logger.warning(
                f"noise rate estimate ({self.method}): validation balanced accuracy at epoch {epoch} is "
                f"{balanced:.2f}, under {needed:.2f} (a seventh of the way from chance to perfect); the model does "
                "not yet separate the classes, so the per-class loss mixture (gmm) estimates instead (estimate "
                "later: a larger noise_estimate#latest_epoch, or noise_estimate#estimate_epoch)"
            )
            return False
        return True

    def _estimate_from_losses(self) -> tuple[float, list[float] | None]:
        seen = self.selection.seen
        losses, labels = self.selection.mean_loss()[seen], self.selection.labels[seen]
        if self.true_labels is not None and len(self.true_labels) == len(seen):
            self._record_class_truth(torch.nonzero(seen).reshape(-1), labels)
        # one mixture fit gives both the global rate and, per class, the mean noisy posterior
        clean = gmm_clean_probability(losses, labels, self.num_classes, per_class=self.per_class)
        estimate = noise_rate_from_clean_probability(clean)
        if not self.per_class:
            return estimate, None
        return estimate, _class_means(1.0 - clean.double(), labels, self.num_classes)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if self.estimate is None and epoch >= self.estimate_epoch:
            val = _eval_pass(self.network, self.val_loader, self._with_features()) if self._uses_validation() else None
            if val is None or self._ready(epoch, val, engine.state.max_epochs):
                self._estimate(engine, val)
        if self.estimated_at is not None:
            engine.state.metrics["noise_estimate_epoch"] = self.estimated_at
        if self.disagreement is not None:
            engine.state.metrics["noise_estimate_disagreement"] = self.disagreement
            engine.state.metrics["noise_estimate_cautious_classes"] = len(self.cautious_classes)
        for method, rates in self.estimator_rates.items():
            engine.state.metrics[f"noise_rate_estimate_{method}"] = self._weighted(rates)
        if self.estimate is not None:
            engine.state.metrics["noise_rate_estimate"] = self.estimate
        if self.class_estimates is not None:
            for name, rate in zip(self.class_names, self.class_estimates, strict=True):
                engine.state.metrics[f"noise_rate_estimate/{name}"] = rate
        if self._class_truth is not None:
            for name, rate in zip(self.class_names, self._class_truth, strict=True):
                engine.state.metrics[f"noise_rate_true/{name}"] = rate
        if self.true_rate is not None:
            engine.state.metrics["noise_rate_true"] = self.true_rate
        engine.state.metrics["forget_rate"] = engine.current_forget_rate(engine.state.epoch - 1)
        class_rates = getattr(engine, "current_class_forget_rates", lambda _epoch: None)(engine.state.epoch - 1)
        if class_rates is not None:
            for name, rate in zip(self.class_names, class_rates.tolist(), strict=True):
                engine.state.metrics[f"forget_rate/{name}"] = rate

    def _weighted(self, rates: Sequence[float]) -> float:
        """Class-size-weighted mean of per-class rates (the given labels' sizes)."""
        counts = torch.bincount(self.selection.labels[self.selection.seen], minlength=self.num_classes).double()
        values = torch.nan_to_num(torch.tensor(list(rates), dtype=torch.float64), nan=0.0)
        return float((values * counts).sum() / counts.sum().clamp_min(1.0))

    def _estimate(self, engine: Engine, val: dict[str, torch.Tensor] | None) -> None:
        epoch = engine.state.epoch
        uses_val = self.method in VALIDATION_METHODS + ("ensemble",)
        found = self._estimate_from_validation(val, epoch) if uses_val and val is not None else None
        self.estimate, self.class_estimates = found if found is not None else self._estimate_from_losses()
        self.estimated_at = epoch
        message = f"noise rate estimate after epoch {epoch}: {self.estimate:.3f}"
        if getattr(engine, "forget_rate", 0.0) is None:
            self._hand_over(engine)
            message += f" -> forget rate {engine.forget_rate:.3f}"
        if self.true_rate is not None:
            message += f" (simulation truth {self.true_rate:.3f})"
        if self.class_estimates is not None:
            message += "; per given class: " + ", ".join(
                f"{name} {rate:.2f}" for name, rate in zip(self.class_names, self.class_estimates, strict=True)
            )
        self.logger.info(message)
        if self.cautious_classes:
            self.logger.warning(
                f"noise rate estimators disagree on {', '.join(self.cautious_classes)}: no majority of them agrees "
                f"within {self.disagreement_tolerance:.2f} (the closest majority spans up to {self.disagreement:.2f}),"
                " so the rates (the median) and the trusted sets of these classes are uncertain; an audit in the "
                "first round (--relabel#audit_per_class 3) measures them (overall rate per estimator: "
                + "; ".join(f"{m} {self._weighted(r):.2f}" for m, r in self.estimator_rates.items())
                + ")"
            )

    def state_dict(self) -> dict:
        state = {"estimate": -1.0 if self.estimate is None else float(self.estimate)}
        if self.class_estimates is not None:
            state["class_estimates"] = torch.tensor(self.class_estimates, dtype=torch.float64)
        if self._class_truth is not None:
            state["class_truth"] = torch.tensor(self._class_truth, dtype=torch.float64)
        state["estimated_at"] = -1 if self.estimated_at is None else int(self.estimated_at)
        state["last_val_balanced"] = -1.0 if self._last_val_balanced is None else float(self._last_val_balanced)
        state["estimator_rates"] = {
            name: torch.tensor(rates, dtype=torch.float64) for name, rates in self.estimator_rates.items()
        }
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        estimate = float(state_dict["estimate"])
        self.estimate = None if estimate < 0 else estimate
        # Checkpoints written before the per-class methods existed have only the global estimate.
        class_estimates = state_dict.get("class_estimates")
        self.class_estimates = None if class_estimates is None else [float(r) for r in class_estimates]
        class_truth = state_dict.get("class_truth")
        self._class_truth = None if class_truth is None else [float(r) for r in class_truth]
        # checkpoints written before the ensemble and the adaptive estimate epoch lack these keys
        estimated_at = int(state_dict.get("estimated_at", -1))
        self.estimated_at = None if estimated_at < 0 else estimated_at
        if self.estimated_at is None and self.estimate is not None:
            self.estimated_at = self.estimate_epoch
        last = float(state_dict.get("last_val_balanced", -1.0))
        self._last_val_balanced = None if last < 0 else last
        self.estimator_rates = {
            name: [float(r) for r in rates] for name, rates in state_dict.get("estimator_rates", {}).items()
        }
