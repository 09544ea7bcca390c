"""Rank the suspected-noisy pool with the current model: deterministic inference, then an acquisition function.

Scores always come from eval-mode inference on un-augmented images (the reference code scored augmented
images in train mode). BALD switches on only the dropout layers, for ``mc_samples`` stochastic passes.
``label_quality`` ranks by ``1 - p(given label)`` with the labels the pool loader carries (the pool's samples are
unanswered, so those are their given labels).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from alr_monai.algorithms.acquisition import (
    ACQUISITION_NAMES,
    SCORE_FUNCTIONS,
    bald,
    enable_mc_dropout,
    kcenter_greedy,
    label_quality,
    select_top,
    select_top_per_class,
    suspect_entropy,
)
from alr_monai.evaluation import predict

QUOTA_MODES: tuple[str, ...] = ("off", "given", "predicted")
"""``relabel#class_quota``: no quota; the pool's given labels, in proportion to their counts; the model's
predicted labels, evenly."""


SCORE_MEANINGS: dict[str, str] = {
    "entropy": "the entropy of the model's predicted class probabilities (0 = sure; ln C = no idea)",
    "least_confidence": "1 - the model's top class probability",
    "margin": "1 - (the model's top class probability - its second)",
    "bald": "BALD: how much the MC-dropout passes disagree (mutual information)",
    "coreset": "the coreset pick order (1 = picked first, falling to 0)",
    "random": "a random number (the random baseline: the order means nothing)",
    "label_quality": "1 - the model's probability of the given label (cleanlab's self-confidence, turned round)",
}
"""What the query file's ``score`` column is, per acquisition; for every one, higher = more worth a look."""


def score_meaning(acquisition: str) -> str:
    """One line a person reads beside a query: what its ``score`` is under ``acquisition``."""
    what = SCORE_MEANINGS.get(acquisition, f"the {acquisition} acquisition's score")
    return f"{what} (relabel#acquisition {acquisition}); higher = more worth a look, and the round asks the highest"


def quota_mode(value: str | bool | None) -> str:
    """``value`` as one of :data:`QUOTA_MODES`; true and false (the key was a switch before) mean given and off."""
    if value is None or value is False:
        return "off"
    if value is True:
        return "given"
    if value not in QUOTA_MODES:
        raise ValueError(f"class_quota must be one of {list(QUOTA_MODES)}, got {value!r}")
    return value


@dataclass
class Acquisition:
    """The result of ranking a pool: dataset indices picked (in pick order) and per-pick details."""

    indices: list[int]
    scores: list[float]
    predicted_labels: list[int]
    predicted_probabilities: list[float]


def _cuda_devices(device) -> list[int]:
    device = torch.device(device)
    return [device.index or 0] if device.type == "cuda" else []


@torch.no_grad()
def _mc_probabilities(
    network: nn.Module, dataloader: Iterable, device, mc_samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``mc_samples`` stochastic passes with only the dropout layers on.

    The dropout masks come from a seed drawn from ``generator`` (seed 0 without one): the same generator gives
    the same masks, so a round killed after writing its query recomputes the same query.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else 0
    torch.manual_seed(seed)  # inside acquire's fork_rng: the global RNG is restored afterwards
    was_training = network.training
    try:
        if enable_mc_dropout(network) == 0:
            raise ValueError(
                "BALD needs dropout layers for MC sampling, and this network has none: set "
                "network_def#dropout > 0 (for example 0.3), or choose another acquisition function"
            )
        passes = []
        for _ in range(mc_samples):
            probs = [torch.softmax(network(batch["image"].to(device)).float(), 1).cpu() for batch in dataloader]
            passes.append(torch.cat(probs))
        return torch.stack(passes)
    finally:
        network.train(was_training)


def acquire(
    method: str,
    network: nn.Module,
    pool_loader: Iterable,
    budget: int,
    device: str | torch.device,
    labelled_loader: Iterable | None = None,
    mc_samples: int = 10,
    generator: torch.Generator | None = None,
    class_quota: str | bool = "off",
) -> Acquisition:
    """Pick up to ``budget`` pool samples for the expert.

    Args:
        method: one of ``ACQUISITION_NAMES`` (random, entropy, least_confidence, margin, bald, coreset,
            label_quality).
        network: the current model (a ``PeerEnsemble``; its summed logits give the probabilities).
        pool_loader: deterministic loader (no shuffling, no augmentation) over the pool; batches carry
            ``image``, ``label`` and ``index``.
        budget: how many to pick (fewer if the pool is smaller).
        device: where to run inference.
        labelled_loader: loader over the trusted samples, for coreset (their embeddings are the first centres).
        mc_samples: stochastic passes for BALD.
        generator: RNG for "random" and for BALD's dropout masks (seeded by the caller per round, so a resumed
            run picks the same samples). The global RNG is left as it was.
        class_quota: split the budget over classes, each share filled by its own top scores (not for coreset,
            which spreads its picks by embedding already): ``"given"`` over the pool's given labels in proportion
            to their counts; ``"predicted"`` evenly over the labels the model predicts for the pool, so that the
            classes balanced accuracy weighs equally get equal attention however rare they are; ``"off"``.
    """
    if method not in ACQUISITION_NAMES:
        raise ValueError(f"unknown acquisition {method!r}; choose one of {list(ACQUISITION_NAMES)}")
    class_quota = quota_mode(class_quota)
    # Scoring leaves the global RNG (dropout during training, DataLoader seeds) exactly as it found it.
    with torch.random.fork_rng(devices=_cuda_devices(device)):
        return _acquire(
            method, network, pool_loader, budget, device, labelled_loader, mc_samples, generator, class_quota
        )


def _acquire(
    method, network, pool_loader, budget, device, labelled_loader, mc_samples, generator, class_quota
) -> Acquisition:
    outputs = predict(network, pool_loader, device, with_features=method == "coreset")
    probs = torch.softmax(outputs["logits"], 1)
    confidence, predicted = probs.max(1)
    if method == "coreset":
        labelled = (
            predict(network, labelled_loader, device, with_features=True)["features"] if labelled_loader else None
        )
        positions = kcenter_greedy(outputs["features"], labelled, budget)
        # Coreset has no per-sample score; report the pick order as a descending score.
        scores = torch.zeros(len(probs))
        scores[positions] = torch.linspace(1.0, 0.0, len(positions)) if len(positions) > 1 else 1.0
    else:
        if method == "bald":
            scores = bald(_mc_probabilities(network, pool_loader, device, mc_samples, generator))
        elif method == "label_quality":
            scores = label_quality(probs, outputs["labels"])
        elif method == "suspect_entropy":
            scores = suspect_entropy(probs, outputs["labels"])
        else:
            scores = SCORE_FUNCTIONS[method](probs, generator=generator)
        if class_quota == "given":
            positions = select_top_per_class(scores, outputs["labels"], budget)
        elif class_quota == "predicted":
            positions = select_top_per_class(scores, predicted, budget, split="even")
        else:
            positions = select_top(scores, budget)
    positions = positions.long()
    return Acquisition(
        indices=outputs["index"][positions].tolist(),
        scores=scores[positions].tolist(),
        predicted_labels=predicted[positions].tolist(),
        predicted_probabilities=confidence[positions].tolist(),
    )
