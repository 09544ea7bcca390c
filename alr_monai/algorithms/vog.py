"""Variance of Gradients (Agarwal et al., CVPR 2022), adapted to the last linear layer of a classifier.

For each training sample we keep, at each of the last K epochs, the gradient of its own cross-entropy loss
with respect to the last linear layer's parameters for its labelled class (weight row ``y`` and bias ``y``).
That gradient has a closed form from the forward pass already done for training,
``(softmax(logits)_y - 1) * [1, features]``, so no second pass over the data and no per-sample autograd is
needed. VoG is the mean over gradient dimensions of the (population) standard deviation across the snapshots.

For data sets too large to hold K x (D + 1) values per sample, :class:`VoGBuffer` can store a random
projection of each gradient instead (``sketch_dim``): see :func:`sketch_matrix`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["VoGBuffer", "last_layer_gradient", "normalise_per_class", "sketch_matrix", "vog_bytes_per_sample"]


def last_layer_gradient(logits: Tensor, features: Tensor, labels: Tensor) -> Tensor:
    """Per-sample gradient of cross-entropy w.r.t. the last linear layer's parameters of the labelled class.

    For ``logits = features @ W.T + b`` and the per-sample loss ``CE(logits_i, y_i)`` (no batch mean),
    ``d loss / d b_y = p_y - 1`` and ``d loss / d W_y = (p_y - 1) * features``.

    Args:
        logits: shape (B, C), the output of the last linear layer.
        features: shape (B, D), the input of the last linear layer (penultimate features).
        labels: shape (B,), integer class labels (the given, possibly noisy, labels).

    Returns:
        Tensor of shape (B, D + 1), bias component first, detached, in the promoted dtype of
        ``logits`` and ``features`` and on their device. The softmax is evaluated in at least float32 so
        half-precision logits do not lose the ``p_y - 1`` factor for confident samples.
    """
    if logits.ndim != 2 or features.ndim != 2:
        raise ValueError(f"logits and features must be 2-D, got {tuple(logits.shape)} and {tuple(features.shape)}")
    if labels.shape != (logits.shape[0],) or features.shape[0] != logits.shape[0]:
        raise ValueError(
            f"batch sizes differ: logits {tuple(logits.shape)}, features {tuple(features.shape)}, "
            f"labels {tuple(labels.shape)}"
        )
    out_dtype = torch.promote_types(logits.dtype, features.dtype)
    softmax_dtype = torch.promote_types(out_dtype, torch.float32)
    with torch.no_grad():
        probs = torch.softmax(logits.detach().to(softmax_dtype), dim=1)
        coeff = (probs.gather(1, labels.to(probs.device, torch.long).view(-1, 1)) - 1.0).to(out_dtype)
        features = features.detach().to(out_dtype)
        ones = torch.ones((features.shape[0], 1), dtype=out_dtype, device=features.device)
        return coeff * torch.cat([ones, features], dim=1)


def sketch_matrix(dim: int, sketch_dim: int, seed: int = 0) -> Tensor:
    """A fixed Gaussian projection from ``dim`` gradient values to ``sketch_dim`` (Johnson-Lindenstrauss).

    Entries are i.i.d. N(0, 1/sketch_dim), drawn from a generator seeded with ``seed`` on the CPU, so every
    process and every resume builds the same matrix. For any vector ``v``, ``E ||v @ R||^2 = ||v||^2``; since
    the projection is linear, the summed variance of the projected snapshots estimates the summed variance of
    the gradient dimensions (the trace of their covariance across epochs), with a relative spread of about
    ``sqrt(2 / sketch_dim)`` per sample.

    Returns:
        float32 tensor of shape (dim, sketch_dim).
    """
    if dim < 1 or sketch_dim < 1:
        raise ValueError(f"dim and sketch_dim must be >= 1, got {dim} and {sketch_dim}")
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn((dim, sketch_dim), generator=generator, dtype=torch.float32) / float(sketch_dim) ** 0.5


class VoGBuffer:
    """Ring buffer of per-sample gradient snapshots (one per epoch) with cached VoG scores.

    Layout: ``snapshots`` has shape (K, N, D) in ``dtype`` (float16 halves the memory; statistics are always
    computed in float32), and a bool mask ``seen`` of shape (K, N) records which samples were written in each
    slot. A sample missing from an epoch (e.g. a dropped last batch) simply has one snapshot fewer: its VoG is
    the std over the slots it was seen in, and NaN if it has fewer than two. A mask, rather than NaN fill, keeps
    stale values from K epochs ago out of the statistics without rewriting the whole slot each epoch.

    With ``sketch_dim`` set, each gradient is projected by :func:`sketch_matrix` before it is stored, so a
    snapshot holds ``sketch_dim`` values instead of D. The score is then ``sqrt(sum of the projected variances /
    D)``: an estimate of the root mean square over the D dimensions of the std across snapshots, rather than their
    mean (the two order samples alike; docs/BENCHMARKS.md "Memory" has the measured agreement).

    Usage per epoch: :meth:`record` for every batch, then :meth:`commit`. ``commit`` recomputes the scores over
    the last K committed snapshots and caches them, so :meth:`scores` during the next epoch is a cheap lookup
    that is not disturbed by the slot the new epoch overwrites. If the same sample index is recorded twice in
    one epoch, the last write wins.

    Args:
        num_samples: N, the number of training samples (indices are ``0..N-1``).
        dim: D, the gradient dimension (``features_dim + 1`` for :func:`last_layer_gradient`).
        num_snapshots: K, how many epochs of snapshots the variance is taken over (>= 2).
        dtype: storage dtype of the snapshots, float32 or float16 (or float64/bfloat16).
        device: where the buffer lives; CPU keeps GPU memory free for the networks.
        sketch_dim: store a ``sketch_dim``-value random projection of each gradient instead of its D values
            (None: exact). Must be below D to save anything.
        sketch_seed: seed of the projection matrix.
    """

    def __init__(
        self,
        num_samples: int,
        dim: int,
        num_snapshots: int = 5,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        sketch_dim: int | None = None,
        sketch_seed: int = 0,
    ) -> None:
        if num_samples < 1 or dim < 1:
            raise ValueError(f"num_samples and dim must be >= 1, got {num_samples} and {dim}")
        if num_snapshots < 2:
            raise ValueError(f"num_snapshots must be >= 2 to have a variance, got {num_snapshots}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating point dtype, got {dtype}")
        self.num_samples = int(num_samples)
        self.dim = int(dim)
        self.num_snapshots = int(num_snapshots)
        self.dtype = dtype
        self.device = torch.device(device)
        if sketch_dim is not None and not 1 <= int(sketch_dim) < self.dim:
            raise ValueError(
                f"sketch_dim must be in [1, {self.dim}) for gradients of {self.dim} values, got {sketch_dim}"
            )
        self.sketch_dim = None if sketch_dim is None else int(sketch_dim)
        self.sketch_seed = int(sketch_seed)
        self._sketch = None if self.sketch_dim is None else sketch_matrix(self.dim, self.sketch_dim, self.sketch_seed)
        if self._sketch is not None:
            self._sketch = self._sketch.to(self.device)
        stored_dim = self.dim if self.sketch_dim is None else self.sketch_dim
        self._snapshots = torch.zeros((num_snapshots, num_samples, stored_dim), dtype=dtype, device=self.device)
        self._seen = torch.zeros((num_snapshots, num_samples), dtype=torch.bool, device=self.device)
        self._position = 0
        self._num_committed = 0
        self._scores = torch.full((num_samples,), float("nan"), dtype=torch.float32, device=self.device)

    def state_bytes(self) -> int:
        """Bytes held by the buffer's per-sample tensors (snapshots, seen mask, cached scores)."""
        return sum(t.numel() * t.element_size() for t in (self._snapshots, self._seen, self._scores))

    @property
    def num_committed(self) -> int:
        """Number of epochs committed so far (not capped at K)."""
        return self._num_committed

    @property
    def ready(self) -> bool:
        """True once K snapshots have been committed, i.e. the scores use the full window."""
        return self._num_committed >= self.num_snapshots

    @property
    def position(self) -> int:
        """Ring slot the current (open) epoch writes to."""
        return self._position

    def record(self, indices: Tensor, grads: Tensor) -> None:
        """Write per-sample gradients of the current epoch.

        Args:
            indices: shape (B,), dataset indices of the samples in ``0..N-1``.
            grads: shape (B, D), e.g. from :func:`last_layer_gradient`; any device and float dtype.
        """
        indices = indices.detach().to(device=self.device, dtype=torch.long).view(-1)
        if grads.shape != (indices.numel(), self.dim):
            raise ValueError(f"grads must have shape ({indices.numel()}, {self.dim}), got {tuple(grads.shape)}")
        if indices.numel() == 0:
            return
        if int(indices.min()) < 0 or int(indices.max()) >= self.num_samples:
            raise IndexError(f"sample indices must be in [0, {self.num_samples}), got {indices.min()}..{indices.max()}")
        grads = grads.detach()
        if self._sketch is not None:
            # projected in float32 on the gradients' device: only sketch_dim values per sample cross to the buffer
            grads = grads.to(torch.float32) @ self._sketch.to(grads.device)
        # cast before the copy to the buffer's device: half the transfer in float16, the same stored values
        self._snapshots[self._position, indices] = grads.to(self.dtype).to(self.device)
        self._seen[self._position, indices] = True

    def commit(self) -> None:
        """Close the epoch: cache the scores over the last K snapshots, then advance the ring."""
        self._num_committed += 1
        self._scores = self._compute_scores()
        self._position = (self._position + 1) % self.num_snapshots
        # The next epoch overwrites the oldest snapshot; forget it now so that a sample missing next epoch
        # is not scored on a value from K epochs ago.
        self._seen[self._position] = False

    def scores(self, indices: Tensor | None = None) -> Tensor:
        """Cached VoG scores as of the last :meth:`commit`.

        Args:
            indices: optional dataset indices; if given, only those samples' scores are returned.

        Returns:
            float32 tensor on the buffer's device, shape (N,) or ``indices.shape``: mean over the D dims of the
            population std across the sample's committed snapshots; NaN with fewer than two snapshots.
        """
        if indices is None:
            return self._scores.clone()
        return self._scores[indices.to(device=self.device, dtype=torch.long)]

    def _compute_scores(self, chunk_size: int = 4096) -> Tensor:
        # Called from commit(), when every slot with seen=True holds a committed snapshot. Chunked over samples
        # so a float32 copy of 50k x 513 x 5 never materialises at once.
        scores = torch.empty((self.num_samples,), dtype=torch.float32, device=self.device)
        for start in range(0, self.num_samples, chunk_size):
            stop = min(start + chunk_size, self.num_samples)
            values = self._snapshots[:, start:stop].to(torch.float32)  # (K, n, D)
            weights = self._seen[:, start:stop].to(torch.float32).unsqueeze(-1)  # (K, n, 1)
            counts = weights.sum(dim=0)  # (n, 1)
            safe_counts = counts.clamp_min(1.0)
            mean = (values * weights).sum(dim=0) / safe_counts
            variance = (((values - mean) ** 2) * weights).sum(dim=0) / safe_counts
            if self._sketch is None:
                chunk_scores = variance.sqrt().mean(dim=1)
            else:  # summed projected variance ~ summed variance over the D gradient dims
                chunk_scores = (variance.sum(dim=1) / self.dim).sqrt()
            scores[start:stop] = torch.where(counts.squeeze(1) >= 2, chunk_scores, float("nan"))
        return scores

    def state_dict(self) -> dict[str, Tensor | int]:
        """Everything needed to resume exactly, with str keys and tensor/int values (``weights_only``-safe).

        Like ``nn.Module.state_dict``, the tensors are the buffer's own (not copies): a checkpoint of a
        200k-sample buffer would otherwise hold a second 1 GB copy while it is written. Save it (or clone it)
        before the next :meth:`record`.
        """
        return {
            "num_samples": self.num_samples,
            "dim": self.dim,
            "num_snapshots": self.num_snapshots,
            "snapshots": self._snapshots,
            "seen": self._seen,
            "position": self._position,
            "num_committed": self._num_committed,
            "scores": self._scores,
            "sketch_dim": 0 if self.sketch_dim is None else self.sketch_dim,
            "sketch_seed": self.sketch_seed,
        }

    def load_state_dict(self, state_dict: dict[str, Tensor | int]) -> None:
        """Restore a :meth:`state_dict`, including the cached scores, the ring position and an open epoch.

        Snapshots are cast to this buffer's dtype and moved to its device (exact when the dtypes match).

        Raises:
            KeyError: if a key is missing.
            ValueError: if N, D or K differ from this buffer's, or a tensor has the wrong shape.
        """
        missing = {"num_samples", "dim", "num_snapshots", "snapshots", "seen", "position", "num_committed", "scores"}
        missing -= set(state_dict)
        if missing:
            raise KeyError(f"VoGBuffer state_dict is missing keys: {sorted(missing)}")
        expected = (self.num_samples, self.dim, self.num_snapshots)
        found = (int(state_dict["num_samples"]), int(state_dict["dim"]), int(state_dict["num_snapshots"]))
        if found != expected:
            raise ValueError(
                f"VoGBuffer state_dict has (num_samples, dim, num_snapshots) = {found}, this buffer has {expected}"
            )
        # checkpoints written before the sketch option hold exact snapshots
        sketch = (int(state_dict.get("sketch_dim", 0)) or None, int(state_dict.get("sketch_seed", 0)))
        if sketch[0] != self.sketch_dim or (sketch[0] is not None and sketch[1] != self.sketch_seed):
            raise ValueError(
                f"VoGBuffer state_dict has (sketch_dim, sketch_seed) = {sketch}, this buffer has "
                f"({self.sketch_dim}, {self.sketch_seed}); set vog#sketch_dim as in the run that wrote it"
            )
        snapshots, seen, scores = state_dict["snapshots"], state_dict["seen"], state_dict["scores"]
        shapes = {
            "snapshots": (tuple(snapshots.shape), tuple(self._snapshots.shape)),
            "seen": (tuple(seen.shape), tuple(self._seen.shape)),
            "scores": (tuple(scores.shape), tuple(self._scores.shape)),
        }
        for key, (got, want) in shapes.items():
            if got != want:
                raise ValueError(f"VoGBuffer state_dict[{key!r}] has shape {got}, expected {want}")
        position = int(state_dict["position"])
        if not 0 <= position < self.num_snapshots:
            raise ValueError(f"VoGBuffer state_dict position {position} is outside [0, {self.num_snapshots})")
        self._snapshots = snapshots.detach().to(device=self.device, dtype=self.dtype).clone()
        self._seen = seen.detach().to(device=self.device, dtype=torch.bool).clone()
        self._scores = scores.detach().to(device=self.device, dtype=torch.float32).clone()
        self._position = position
        self._num_committed = int(state_dict["num_committed"])


def vog_bytes_per_sample(
    dim: int,
    num_snapshots: int = 5,
    num_peers: int = 2,
    dtype: torch.dtype = torch.float32,
    sketch_dim: int | None = None,
) -> int:
    """Bytes per training sample held by ``num_peers`` :class:`VoGBuffer` objects.

    Per peer: K snapshots of ``dim`` values (``dim`` = D + 1 for :func:`last_layer_gradient`; ``sketch_dim``
    values when sketched), K bool ``seen`` flags and one float32 cached score. For the bundle's network
    (D = 128), K = 5 and 2 peers that is 2 x (5 x 129 x 4 + 5 + 4) = 5178 bytes in float32, 2598 bytes in float16
    and 2 x (5 x 8 x 2 + 5 + 4) = 178 bytes with ``sketch_dim`` 8 in float16.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    stored = dim if sketch_dim is None else sketch_dim
    return num_peers * (num_snapshots * stored * itemsize + num_snapshots + 4)


def normalise_per_class(scores: Tensor, labels: Tensor, num_classes: int, eps: float = 1e-8) -> Tensor:
    """Z-score the scores within each labelled class, as the VoG paper does before ranking.

    ``(s - mean_c) / (std_c + eps)`` with the population std over the finite scores of class ``c``. NaN
    scores stay NaN and are left out of the statistics; finite scores of a class with fewer than two finite
    values become 0 (no spread to compare against).

    Args:
        scores: shape (N,), e.g. :meth:`VoGBuffer.scores`.
        labels: shape (N,), the labelled class of each sample, in ``0..num_classes-1``.
        num_classes: number of classes.
        eps: added to the std so a constant class gives 0 rather than a division by zero.

    Returns:
        float32 tensor of shape (N,) on the device of ``scores``.
    """
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"scores and labels must be 1-D of equal shape, got {tuple(scores.shape)}, {labels.shape}")
    labels = labels.to(device=scores.device, dtype=torch.long)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    scores = scores.detach().to(torch.float32)
    finite = torch.isfinite(scores)
    # Statistics in float64: the scores can be tiny (small gradients) and classes large.
    values = torch.where(finite, scores, 0.0).to(torch.float64)
    weights = finite.to(torch.float64)
    counts = torch.zeros(num_classes, dtype=torch.float64, device=scores.device).index_add_(0, labels, weights)
    sums = torch.zeros_like(counts).index_add_(0, labels, values)
    means = sums / counts.clamp_min(1.0)
    squared = ((values - means[labels]) ** 2) * weights
    stds = (torch.zeros_like(counts).index_add_(0, labels, squared) / counts.clamp_min(1.0)).sqrt()
    normalised = (values - means[labels]) / (stds[labels] + eps)
    normalised = torch.where(counts[labels] >= 2, normalised, 0.0).to(torch.float32)
    return torch.where(finite, normalised, scores)
