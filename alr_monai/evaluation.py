"""Deterministic inference and held-out evaluation of a trained peer ensemble."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from alr_monai.algorithms.metrics import classification_metrics
from alr_monai.distributed import is_main_process
from alr_monai.utils import atomic_write_json


@torch.no_grad()
def predict(
    network: nn.Module, dataloader: Iterable, device: str | torch.device, with_features: bool = False
) -> dict[str, torch.Tensor]:
    """Run ``network`` in eval mode (no augmentation comes from the loader's transforms) over ``dataloader``.

    Returns:
        ``logits`` (N, C), ``labels`` (N,), ``index`` (N,), and with ``with_features`` the penultimate
        ``features`` (N, D) of the first peer (for coreset acquisition).
    """
    from alr_monai.networks import FeatureTap

    was_training = network.training
    network.eval()
    tap = FeatureTap(network.peers[0] if hasattr(network, "peers") else network) if with_features else None
    logits, labels, index, features = [], [], [], []
    try:
        for batch in dataloader:
            out = network(batch["image"].to(device))
            logits.append(out.float().cpu())
            labels.append(torch.as_tensor(batch["label"]).long().reshape(-1))
            index.append(torch.as_tensor(batch["index"]).long().reshape(-1))
            if tap is not None:
                features.append(tap.pop().float().cpu())
    finally:
        if tap is not None:
            tap.remove()
        network.train(was_training)
    result = {"logits": torch.cat(logits), "labels": torch.cat(labels), "index": torch.cat(index)}
    if tap is not None:
        result["features"] = torch.cat(features)
    return result


def evaluate_loader(network: nn.Module, dataloader: Iterable, num_classes: int, device: str | torch.device) -> dict:
    """Deterministic inference over ``dataloader`` and the classification report of the summed logits."""
    outputs = predict(network, dataloader, device)
    probs = torch.softmax(outputs["logits"], 1)
    return classification_metrics(outputs["labels"], probs.argmax(1), probs, num_classes=num_classes)


def evaluate_checkpoint(
    network: nn.Module,
    dataloader: Iterable,
    class_names: Sequence[str],
    device: str | torch.device,
    checkpoint: str | Path | None = None,
    metrics_file: str | Path | None = None,
    split: str = "test",
) -> dict:
    """Load ``checkpoint`` (a ``{"model": state_dict}`` file or a bare state dict, see
    :func:`alr_monai.networks.load_weights`) into ``network``, evaluate it
    on ``dataloader`` and, if ``metrics_file`` is given, add the result under ``split`` in that JSON file.

    The checkpoint is the one chosen on the validation set; held-out metrics never choose a model.
    """
    if checkpoint is not None:
        from alr_monai.networks import load_weights

        load_weights(network, checkpoint, device, hint="evaluate it with the network settings it was trained with")
    report = evaluate_loader(network, dataloader, len(class_names), device)
    report["checkpoint"] = None if checkpoint is None else str(checkpoint)
    report["class_names"] = list(class_names)
    if metrics_file is not None and is_main_process():
        path = Path(metrics_file)
        summary = json.loads(path.read_text()) if path.exists() else {}
        summary[split] = report
        atomic_write_json(path, summary)
    return report
