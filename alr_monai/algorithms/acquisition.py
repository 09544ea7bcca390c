"""Acquisition functions for active relabeling: which suspected-noisy samples an expert should look at first.

Every score is "higher = more worth an expert's look". Uncertainty scores take softmax probabilities of shape
(N, C) computed with the model in eval mode on un-augmented images. BALD takes (T, N, C) probabilities from T
stochastic passes with MC dropout on (:func:`enable_mc_dropout`); a network without dropout gets one from
:func:`add_dropout_before_last_linear`. Coreset (k-center greedy) works on embeddings, not scores. Label quality
(cleanlab's self-confidence) also needs each sample's GIVEN label.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = [
    "ACQUISITION_NAMES",
    "CLASS_QUOTAS",
    "EMBEDDING_ACQUISITIONS",
    "LABEL_ACQUISITIONS",
    "MC_ACQUISITIONS",
    "SCORE_FUNCTIONS",
    "add_dropout_before_last_linear",
    "bald",
    "class_quotas",
    "enable_mc_dropout",
    "even_quotas",
    "entropy",
    "find_last_linear",
    "kcenter_greedy",
    "label_quality",
    "least_confidence",
    "margin",
    "random_scores",
    "select_top",
    "select_top_per_class",
    "suspect_entropy",
]

_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def _check_probs(probs: Tensor) -> None:
    if probs.ndim != 2:
        raise ValueError(f"probs must have shape (N, C), got {tuple(probs.shape)}")


def _entropy_last_dim(probs: Tensor) -> Tensor:
    # xlogy gives 0 * log 0 = 0, so one-hot rows have entropy exactly 0.
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


def entropy(probs: Tensor) -> Tensor:
    """Shannon entropy (nats) of each row of ``probs`` (N, C) -> (N,)."""
    _check_probs(probs)
    return _entropy_last_dim(probs)


def least_confidence(probs: Tensor) -> Tensor:
    """``1 - max_c p_c`` for each row of ``probs`` (N, C) -> (N,)."""
    _check_probs(probs)
    return 1.0 - probs.max(dim=1).values


def margin(probs: Tensor) -> Tensor:
    """``1 - (p_top1 - p_top2)`` for each row of ``probs`` (N, C) -> (N,); needs C >= 2."""
    _check_probs(probs)
    if probs.shape[1] < 2:
        raise ValueError("margin needs at least two classes")
    top2 = probs.topk(2, dim=1).values
    return 1.0 - (top2[:, 0] - top2[:, 1])


def label_quality(probs: Tensor, labels: Tensor) -> Tensor:
    """``1 - p_given`` for each row of ``probs`` (N, C) and its GIVEN label in ``labels`` (N,) -> (N,).

    cleanlab's self-confidence label-quality score (``cleanlab.rank.get_label_quality_scores`` with
    ``method="self_confidence"`` returns ``p_given``) turned into "higher = more likely mislabelled": the samples
    whose given label the model believes least come first.
    """
    _check_probs(probs)
    labels = torch.as_tensor(labels, device=probs.device).long().reshape(-1)
    if labels.shape[0] != probs.shape[0]:
        raise ValueError(f"got {labels.shape[0]} labels for {probs.shape[0]} rows of probabilities")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= probs.shape[1]):
        raise ValueError(f"labels must be class indices in [0, {probs.shape[1]})")
    return 1.0 - probs.gather(1, labels[:, None]).squeeze(1)


def suspect_entropy(probs: Tensor, labels: Tensor) -> Tensor:
    """Uncertainty weighted by label suspicion: ``H(p) / log C * (1 - p_given)`` -> (N,), in [0, 1].

    Entropy alone spends labels on samples the model is unsure about whatever their label says; label quality
    alone on samples whose true class the model already predicts (the expert's answer then teaches it little).
    The product asks where both hold: the model doubts the given label AND does not know the answer yet, which
    is where, with a weak network, an answer both fixes a label and teaches the model something.
    """
    _check_probs(probs)
    num_classes = probs.shape[1]
    normalised = _entropy_last_dim(probs) / torch.log(torch.tensor(float(max(num_classes, 2))))
    return normalised.clamp(0.0, 1.0) * label_quality(probs, labels)


def bald(mc_probs: Tensor) -> Tensor:
    """BALD mutual information from MC-dropout samples (Houlsby et al. 2011; Gal et al. 2017).

    ``H(mean_t p_t) - mean_t H(p_t)``: high when the passes are each confident but disagree.

    Args:
        mc_probs: shape (T, N, C), softmax probabilities of T stochastic forward passes.

    Returns:
        Tensor of shape (N,), clamped at 0 (the mutual information is non-negative; tiny negative values are
        rounding error).
    """
    if mc_probs.ndim != 3:
        raise ValueError(f"mc_probs must have shape (T, N, C), got {tuple(mc_probs.shape)}")
    predictive = _entropy_last_dim(mc_probs.mean(dim=0))
    expected = _entropy_last_dim(mc_probs).mean(dim=0)
    return (predictive - expected).clamp_min(0.0)


def random_scores(n: int, generator: torch.Generator) -> Tensor:
    """Uniform random scores, shape (n,), on the generator's device (the random baseline)."""
    return torch.rand(n, generator=generator, device=generator.device)


def _ignore_generator(score_fn: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
    @functools.wraps(score_fn)
    def wrapped(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return score_fn(probs)

    return wrapped


def _random_from_probs(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Random scores, one per row of ``probs``; a fresh CPU generator if none is given."""
    _check_probs(probs)
    if generator is None:
        generator = torch.Generator()
    return random_scores(probs.shape[0], generator).to(probs.device)


SCORE_FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "random": _random_from_probs,
    "entropy": _ignore_generator(entropy),
    "least_confidence": _ignore_generator(least_confidence),
    "margin": _ignore_generator(margin),
}
"""Acquisitions computed from probabilities: ``SCORE_FUNCTIONS[name](probs, generator=None) -> (N,)``.

Only "random" uses the generator. "bald" is not here because it needs (T, N, C) MC-dropout probabilities
(:func:`bald`), "coreset" because it needs embeddings and returns picks, not scores (:func:`kcenter_greedy`), and
"label_quality" because it needs the given labels (:func:`label_quality`).
"""

MC_ACQUISITIONS: tuple[str, ...] = ("bald",)
EMBEDDING_ACQUISITIONS: tuple[str, ...] = ("coreset",)
LABEL_ACQUISITIONS: tuple[str, ...] = ("label_quality", "suspect_entropy")
ACQUISITION_NAMES: tuple[str, ...] = (
    *SCORE_FUNCTIONS,
    *MC_ACQUISITIONS,
    *EMBEDDING_ACQUISITIONS,
    *LABEL_ACQUISITIONS,
)


def class_quotas(classes: Tensor, budget: int) -> dict[int, int]:
    """Split ``budget`` over the classes in proportion to their counts in ``classes`` (largest remainder, ties to
    the smaller class index); no class gets more than it has."""
    values, counts = torch.unique(classes, return_counts=True)
    total = int(counts.sum())
    budget = min(int(budget), total)
    if total == 0:
        return {}
    exact = counts.double() * budget / total
    quotas = exact.floor().long()
    order = torch.argsort(-(exact - quotas), stable=True)
    for position in order[: budget - int(quotas.sum())]:
        quotas[position] += 1
    return {int(v): int(q) for v, q in zip(values, quotas, strict=True)}


def even_quotas(classes: Tensor, budget: int) -> dict[int, int]:
    """Split ``budget`` as evenly as the classes in ``classes`` allow: a class with fewer members than its share
    takes them all and its unused share goes to the others (water-filling); a remainder too small to share goes
    one each to the smaller class indices. No class gets more than it has."""
    values, counts = torch.unique(classes, return_counts=True)
    budget = min(int(budget), int(counts.sum()))
    quotas = torch.zeros_like(counts)
    remaining = budget
    while remaining > 0:
        open_classes = quotas < counts
        share = remaining // int(open_classes.sum())
        if share == 0:
            quotas[torch.nonzero(open_classes).flatten()[:remaining]] += 1
            break
        added = torch.clamp(counts - quotas, max=share) * open_classes
        quotas += added
        remaining -= int(added.sum())
    return {int(v): int(q) for v, q in zip(values, quotas, strict=True)}


CLASS_QUOTAS: dict[str, Callable[[Tensor, int], dict[int, int]]] = {
    "proportional": class_quotas,
    "even": even_quotas,
}
"""How :func:`select_top_per_class` splits a budget over classes."""


def select_top_per_class(scores: Tensor, classes: Tensor, budget: int, split: str = "proportional") -> Tensor:
    """Like :func:`select_top`, but each class gets a quota of the budget and fills it with its own highest
    scores, so a class whose samples score low is still looked at. Picks are returned highest score first.

    Args:
        scores: shape (N,).
        classes: shape (N,), the class each sample counts towards (e.g. its given or its predicted label).
        budget: how many to pick; clipped to N.
        split: ``"proportional"`` (each class's share of ``classes``, :func:`class_quotas`) or ``"even"``
            (the same for every class present, :func:`even_quotas`).
    """
    if classes.shape != scores.shape:
        raise ValueError(f"classes {tuple(classes.shape)} and scores {tuple(scores.shape)} must match")
    if split not in CLASS_QUOTAS:
        raise ValueError(f"unknown quota split {split!r}; choose one of {list(CLASS_QUOTAS)}")
    picked = []
    for value, quota in CLASS_QUOTAS[split](classes, budget).items():
        members = torch.nonzero(classes == value).flatten()
        picked.append(members[select_top(scores[members], quota)])
    if not picked:
        return torch.zeros(0, dtype=torch.long)
    positions = torch.cat(picked)
    return positions[select_top(scores[positions], positions.numel())]


def select_top(scores: Tensor, budget: int) -> Tensor:
    """Positions of the ``budget`` highest scores, highest first; ties by position, NaN ranks last.

    Args:
        scores: shape (N,).
        budget: how many to pick; clipped to N.

    Returns:
        int64 tensor of shape (min(budget, N),) on the device of ``scores``.
    """
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {tuple(scores.shape)}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    scores = scores.detach()
    # Two stable sorts: by score descending (NaN as -inf), then NaN after every number, even -inf.
    order = torch.argsort(torch.nan_to_num(scores, nan=-torch.inf), descending=True, stable=True)
    order = order[torch.argsort(torch.isnan(scores[order]).to(torch.uint8), stable=True)]
    return order[: min(budget, scores.numel())]


def _squared_distances_to(points: Tensor, point_norms: Tensor, centres: Tensor, chunk_size: int) -> Tensor:
    """Squared Euclidean distance from each point to its nearest centre, in blocks of ``chunk_size`` rows.

    Uses ``|a|^2 - 2 a.b + |b|^2`` so the work is matrix products (one matrix-vector product per k-center
    step), an order of magnitude faster on CPU than pairwise differences, and never an N x D temporary.
    """
    centre_norms = centres.square().sum(dim=1)
    if centres.shape[0] == 1:
        # The per-step case: one matrix-vector product over the whole pool, no chunking needed.
        return (point_norms - 2.0 * (points @ centres[0]) + centre_norms[0]).clamp_min(0.0)
    nearest = torch.full((points.shape[0],), torch.inf, dtype=points.dtype, device=points.device)
    for start in range(0, points.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        for c_start in range(0, centres.shape[0], chunk_size):
            cols = slice(c_start, c_start + chunk_size)
            products = points[rows] @ centres[cols].T
            distances = (point_norms[rows, None] - 2.0 * products + centre_norms[None, cols]).clamp_min(0.0)
            nearest[rows] = torch.minimum(nearest[rows], distances.min(dim=1).values)
    return nearest


def kcenter_greedy(
    pool_embeddings: Tensor,
    labelled_embeddings: Tensor | None,
    budget: int,
    chunk_size: int = 4096,
) -> Tensor:
    """Coreset selection by k-center greedy (Sener & Savarese, ICLR 2018).

    Repeatedly picks the pool point farthest (Euclidean) from its nearest centre, where the centres are the
    labelled points and the points already picked. Without labelled points, the first pick is the pool point
    farthest from the pool mean, so the result is deterministic. Ties go to the lowest position.

    Args:
        pool_embeddings: shape (N, D).
        labelled_embeddings: shape (M, D), or None / M = 0 for none.
        budget: number of points to pick; clipped to N.
        chunk_size: rows per distance block; memory is O(chunk_size**2 + N), never O(N * M).

    Returns:
        int64 tensor of pool positions in pick order, on the device of ``pool_embeddings``.
    """
    if pool_embeddings.ndim != 2:
        raise ValueError(f"pool_embeddings must have shape (N, D), got {tuple(pool_embeddings.shape)}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    compute_dtype = torch.promote_types(pool_embeddings.dtype, torch.float32)
    pool = pool_embeddings.detach().to(compute_dtype)
    budget = min(budget, pool.shape[0])
    picks = torch.empty((budget,), dtype=torch.long, device=pool.device)
    if budget == 0:
        return picks

    pool_norms = pool.square().sum(dim=1)
    has_labelled = labelled_embeddings is not None and labelled_embeddings.shape[0] > 0
    if has_labelled:
        if labelled_embeddings.ndim != 2 or labelled_embeddings.shape[1] != pool.shape[1]:
            raise ValueError(
                f"labelled_embeddings must have shape (M, {pool.shape[1]}), got {tuple(labelled_embeddings.shape)}"
            )
        labelled = labelled_embeddings.detach().to(device=pool.device, dtype=compute_dtype)
        nearest = _squared_distances_to(pool, pool_norms, labelled, chunk_size)
    else:
        # The mean only chooses the first pick; it is not a centre, so every point starts infinitely far.
        first_pick = int(
            torch.argmax(_squared_distances_to(pool, pool_norms, pool.mean(dim=0, keepdim=True), chunk_size))
        )
        nearest = torch.full((pool.shape[0],), torch.inf, dtype=pool.dtype, device=pool.device)

    for step in range(budget):
        # argmax returns the first maximum: ties go to the lowest position.
        pick = first_pick if step == 0 and not has_labelled else int(torch.argmax(nearest))
        picks[step] = pick
        nearest = torch.minimum(nearest, _squared_distances_to(pool, pool_norms, pool[pick : pick + 1], chunk_size))
        # Never pick a point twice, even when duplicates make every remaining distance 0.
        nearest[picks[: step + 1]] = -torch.inf
    return picks


def enable_mc_dropout(model: nn.Module) -> int:
    """Put ``model`` in eval mode with every dropout module in train mode, for MC-dropout inference.

    Batch norm and the rest stay in eval mode, so only dropout is stochastic.

    Returns:
        The number of dropout modules switched on; 0 means MC sampling would return identical passes.
    """
    model.eval()
    count = 0
    for module in model.modules():
        if isinstance(module, _DROPOUT_TYPES):
            module.train()
            count += 1
    return count


def _last_linear_name(model: nn.Module) -> str:
    name = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            name = module_name
    if name is None:
        raise ValueError(f"{type(model).__name__} has no torch.nn.Linear layer; VoG and MC dropout need one")
    return name


def find_last_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` registered in ``model`` (the classifier head of monai.networks.nets classifiers).

    Its input is the penultimate feature vector that VoG and coreset use; register a forward hook on it.

    Raises:
        ValueError: if the model has no ``nn.Linear``.
    """
    return model.get_submodule(_last_linear_name(model))


def add_dropout_before_last_linear(model: nn.Module, p: float) -> nn.Module:
    """Wrap the last ``nn.Linear`` as ``nn.Sequential(nn.Dropout(p), linear)`` in place, for MC-dropout BALD.

    The same linear object is kept, so hooks registered on it (before or after) still fire and
    :func:`find_last_linear` still returns it. Its parameter names gain a ``.1`` (e.g. ``fc.weight`` becomes
    ``fc.1.weight``): wrap before loading a checkpoint saved from a wrapped model. Calling this again on a
    model it already wrapped only updates ``p``.

    Args:
        model: a network containing at least one ``nn.Linear``, not itself an ``nn.Linear``.
        p: dropout probability in ``[0, 1)``.

    Returns:
        ``model``, modified in place.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    name = _last_linear_name(model)
    if name == "":
        raise ValueError("model is itself an nn.Linear; wrap it in a container module first")
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    linear = getattr(parent, child_name)
    if isinstance(parent, nn.Sequential) and len(parent) == 2 and parent[1] is linear and type(parent[0]) is nn.Dropout:
        parent[0].p = p
        return model
    setattr(parent, child_name, nn.Sequential(nn.Dropout(p), linear))
    return model
