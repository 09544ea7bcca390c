"""Variance-of-Gradients handler: closed-form last-layer gradients from the training forward pass."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events

from alr_monai.algorithms.vog import VoGBuffer, last_layer_gradient, normalise_per_class
from alr_monai.engines.coteaching import CoTeachingEvents

VOG_KEEP = ("low", "high")


class VoGHandler:
    """Tracks each sample's last-layer gradient per epoch and offers VoG scores to the selection.

    At every ``LOSSES_COMPUTED`` it writes each peer's per-sample gradient (weight row of the labelled class
    plus its bias, in closed form from the logits and features already computed: no extra pass) into that
    peer's ring buffer of ``num_snapshots`` epochs. Once the buffer is full and the forget-rate ramp is over,
    it registers the batch's scores as ``output["scores"]["vog"]`` (oriented so lower = keep); the trainer's
    selection policy takes its ``fill`` share of each kept set by that order among the samples the loss did not
    pick. Once two epochs are recorded, the mean and standard deviation of the raw VoG over the training set
    are metrics (``vog_mean``, ``vog_std``).

    Args:
        num_samples: training-set size.
        num_classes: number of classes, for the per-class normalisation.
        num_snapshots: K, how many epochs of gradients VoG spans.
        class_normalise: z-score VoG within each labelled class (Agarwal et al.), so a rare class is not
            judged against the gradients of a frequent one.
        keep: "low" keeps the lowest VoG (stable samples), "high" the highest.
        mix_ratio: 0 switches the scores off (nothing is offered); the share itself is the selection policy's
            ``fill["vog"]`` (the bundle wires both to ``vog#mix_ratio``).
        dtype: "float32" or "float16" storage for the N x D x K buffer.
        start_epoch: first epoch (1-based) whose selection may use VoG; default: the epoch after the trainer's
            ``num_gradual`` ramp.
        buffer_device: where the buffers live. "cpu" (default) whatever the training device, so the largest
            per-sample state never takes accelerator memory (1 GB of GPU memory at 50k samples in float32); each
            batch's gradients (B x (D + 1) per peer) are copied there, and the scores handed to the selection are
            moved back to the batch's device. None keeps the buffers on the features' device.
        sketch_dim: keep a ``sketch_dim``-value random projection of each gradient instead of its D + 1 values
            (:func:`~alr_monai.algorithms.vog.sketch_matrix`); None, or a gradient of at most ``sketch_dim``
            values, keeps the exact gradients. The bundle's default is 8 in float16: 178 bytes of buffers per
            sample instead of 5178 (exact, float32), with the same phase-1 results within seed noise
            (docs/BENCHMARKS.md "Memory").

    Memory (per training sample, D = penultimate feature size, P peers, K = ``num_snapshots``): the snapshots
    P x K x (D + 1) x 4 bytes (2 in float16), the ``seen`` flags P x K bytes, the cached raw and oriented scores
    P x 2 x 4 bytes and the label 8 bytes. For the bundle's network (D = 128), K = 5 and P = 2: 5194 bytes in
    float32, 2614 in float16 (see :meth:`state_bytes`). VoG is the std over a sliding window of the last K
    epochs, so every value in the window must be kept to drop the oldest one exactly: K x (D + 1) values per peer
    is the floor for the exact statistic (a running Welford mean/variance cannot forget the oldest epoch).
    ``sketch_dim`` m replaces D + 1 by m in that formula (m = 8, float16: 194 bytes per sample in all).
    Scoring at each epoch end works in chunks of 4096 samples, so its float32 temporaries do not grow with N.
    """

    def __init__(
        self,
        num_samples: int,
        num_classes: int,
        num_snapshots: int = 5,
        class_normalise: bool = True,
        keep: str = "low",
        mix_ratio: float = 0.2,
        dtype: str = "float32",
        start_epoch: int | None = None,
        buffer_device: str | torch.device | None = "cpu",
        sketch_dim: int | None = None,
    ) -> None:
        if keep not in VOG_KEEP:
            raise ValueError(f"keep must be one of {VOG_KEEP}, got {keep!r}")
        if not 0.0 <= mix_ratio <= 1.0:
            raise ValueError(f"mix_ratio must be in [0, 1], got {mix_ratio}")
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        self.num_samples = num_samples
        self.num_classes = num_classes
        self.num_snapshots = num_snapshots
        self.class_normalise = class_normalise
        self.keep = keep
        self.mix_ratio = mix_ratio
        self.dtype = getattr(torch, dtype)
        self.start_epoch = start_epoch
        self.buffer_device = None if buffer_device is None else torch.device(buffer_device)
        self.sketch_dim = None if sketch_dim in (None, 0) else int(sketch_dim)
        self.buffers: list[VoGBuffer] = []
        self.labels = torch.full((num_samples,), -1, dtype=torch.long)
        self._oriented: list[torch.Tensor] = []

    def attach(self, engine: Engine) -> None:
        if self.start_epoch is None:
            self.start_epoch = int(getattr(engine, "num_gradual", 0)) + 1
        engine.add_event_handler(CoTeachingEvents.LOSSES_COMPUTED, self._on_losses)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._commit)

    def _ensure_buffers(self, num_peers: int, dim: int, device: torch.device) -> None:
        if not self.buffers:
            where = device if self.buffer_device is None else self.buffer_device
            self.buffers = [self._new_buffer(dim, where) for _ in range(num_peers)]

    def _new_buffer(self, dim: int, device: torch.device) -> VoGBuffer:
        # Every peer's buffer projects with the same matrix, so their scores stay comparable. A gradient no longer
        # than the sketch is kept exact: projecting it would save nothing.
        sketch_dim = self.sketch_dim if self.sketch_dim is not None and self.sketch_dim < dim else None
        return VoGBuffer(
            self.num_samples, dim, self.num_snapshots, dtype=self.dtype, device=device, sketch_dim=sketch_dim
        )

    def _on_losses(self, engine: Engine) -> None:
        output = engine.state.output
        index, labels = output["index"], output["label"]
        features, logits = output["features"], output["logits"]
        batch_device = logits[0].device
        self._ensure_buffers(len(logits), features[0].shape[1] + 1, features[0].device)
        buffer_index = index.to(self.buffers[0].device)
        for buffer, peer_logits, peer_features in zip(self.buffers, logits, features, strict=True):
            buffer.record(buffer_index, last_layer_gradient(peer_logits.float(), peer_features.float(), labels))
        self.labels[index.cpu()] = labels.cpu()
        if self.active(engine):
            output["scores"]["vog"] = [scores[buffer_index].to(batch_device) for scores in self._oriented]

    def active(self, engine: Engine) -> bool:
        """Whether this epoch's selection uses VoG: a full buffer, past the ramp, and a non-zero mix."""
        ready = bool(self.buffers) and all(b.ready for b in self.buffers) and len(self._oriented) == len(self.buffers)
        return ready and self.mix_ratio > 0 and engine.state.epoch >= (self.start_epoch or 1)

    def _commit(self, engine: Engine) -> None:
        for buffer in self.buffers:
            buffer.commit()
        self._oriented = [self._orient(buffer.scores()) for buffer in self.buffers]
        raw = self.scores()
        raw = raw[torch.isfinite(raw)]
        if raw.numel() > 1:  # how spread the training set's gradients still are (TensorBoard selection/vog_*)
            engine.state.metrics["vog_mean"] = float(raw.mean())
            engine.state.metrics["vog_std"] = float(raw.std())

    def _orient(self, scores: torch.Tensor) -> torch.Tensor:
        # The trainer keeps the lowest scores; flip the sign when high VoG is to be kept.
        if self.class_normalise:
            # samples never seen in training (label -1, e.g. outside a training subset) have no class to compare
            labels = self.labels.to(scores.device)
            seen = labels >= 0
            normalised = torch.full_like(scores, float("nan"), dtype=torch.float32)
            normalised[seen] = normalise_per_class(scores[seen], labels[seen], self.num_classes)
            scores = normalised
        return scores if self.keep == "low" else -scores

    def scores(self) -> torch.Tensor:
        """(N,) VoG averaged over peers (raw, not normalised; NaN until 2 epochs are recorded)."""
        if not self.buffers:
            return torch.full((self.num_samples,), float("nan"))
        return torch.stack([b.scores().float().cpu() for b in self.buffers]).mean(0)

    def state_bytes(self) -> int:
        """Bytes of per-sample state held now: the buffers, the cached oriented scores and the labels.

        0 for the buffers until the first batch (their size needs the feature size); see the class docstring
        for the formula and :func:`~alr_monai.algorithms.vog.vog_bytes_per_sample`.
        """
        tensors = [self.labels, *self._oriented]
        return sum(buffer.state_bytes() for buffer in self.buffers) + sum(t.numel() * t.element_size() for t in tensors)

    def state_dict(self) -> dict:
        state: dict = {"labels": self.labels, "num_buffers": len(self.buffers)}
        for k, buffer in enumerate(self.buffers):
            for key, value in buffer.state_dict().items():
                state[f"buffer{k}.{key}"] = value
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.labels.copy_(state_dict["labels"])
        num_buffers = int(state_dict["num_buffers"])
        if num_buffers == 0:
            self.buffers, self._oriented = [], []
            return
        buffers = []
        for k in range(num_buffers):
            prefix = f"buffer{k}."
            sub = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
            # The feature size comes from the saved buffer; VoGBuffer.load_state_dict checks the rest. A
            # checkpoint loaded with map_location="cuda" must not pull the buffer onto the GPU.
            device = sub["snapshots"].device if self.buffer_device is None else self.buffer_device
            buffer = self._new_buffer(int(sub["dim"]), device)
            buffer.load_state_dict(sub)
            buffers.append(buffer)
        self.buffers = buffers
        self._oriented = [self._orient(b.scores()) for b in self.buffers] if self.buffers[0].num_committed else []
