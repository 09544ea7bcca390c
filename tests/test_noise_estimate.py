from __future__ import annotations

import numpy as np
import pytest
import torch

from alr_monai.algorithms import noise_estimate
from alr_monai.algorithms.noise_estimate import estimate_noise_rate, gmm_clean_probability


def _bimodal_losses(n: int, noise_rate: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean losses near 0 (half-normal), noisy losses around 2.5, as after a short warm-up."""
    noisy = torch.rand(n, generator=generator) < noise_rate
    clean_losses = (0.3 * torch.randn(n, generator=generator)).abs()
    noisy_losses = 2.5 + 0.5 * torch.randn(n, generator=generator)
    return torch.where(noisy, noisy_losses, clean_losses), noisy


@pytest.mark.parametrize("noise_rate", [0.2, 0.4, 0.6])
def test_global_gmm_recovers_known_noise_rate(noise_rate):
    losses, noisy = _bimodal_losses(2000, noise_rate, torch.Generator().manual_seed(0))
    truth = noisy.float().mean().item()
    assert estimate_noise_rate(losses) == pytest.approx(truth, abs=0.05)


def test_clean_probability_separates_modes_and_is_deterministic():
    losses, noisy = _bimodal_losses(1000, 0.4, torch.Generator().manual_seed(1))
    clean = gmm_clean_probability(losses, seed=3)
    assert clean.shape == losses.shape and clean.dtype == torch.float32
    assert ((clean > 0.5) == ~noisy).float().mean() > 0.95
    assert torch.equal(clean, gmm_clean_probability(losses, seed=3))


def test_per_class_protects_a_rare_clean_high_loss_class():
    generator = torch.Generator().manual_seed(2)
    losses, labels, noisy = [], [], []
    for cls in range(2):  # two common classes with 40% noise
        class_losses, class_noisy = _bimodal_losses(1000, 0.4, generator)
        losses.append(class_losses)
        noisy.append(class_noisy)
        labels.append(torch.full((1000,), cls))
    # A rare class, all correctly labelled, whose losses are high only because it is rare.
    losses.append(2.2 + 0.3 * torch.randn(150, generator=generator))
    noisy.append(torch.zeros(150, dtype=torch.bool))
    labels.append(torch.full((150,), 2))
    losses, labels, noisy = torch.cat(losses), torch.cat(labels), torch.cat(noisy)

    truth = noisy.float().mean().item()
    global_estimate = estimate_noise_rate(losses)
    per_class_estimate = estimate_noise_rate(losses, labels, num_classes=3, per_class=True)
    assert global_estimate > truth + 0.04  # the rare class counted as noise
    assert abs(per_class_estimate - truth) < abs(global_estimate - truth) - 0.02


def test_small_classes_fall_back_to_global_fit():
    losses, _ = _bimodal_losses(500, 0.3, torch.Generator().manual_seed(4))
    labels = torch.zeros(500, dtype=torch.long)
    labels[:5] = 1  # too few samples for their own mixture
    global_clean = gmm_clean_probability(losses)
    per_class_clean = gmm_clean_probability(losses, labels, per_class=True, min_class_samples=10)
    torch.testing.assert_close(per_class_clean[:5], global_clean[:5])


def test_degenerate_and_invalid_inputs():
    assert estimate_noise_rate(torch.full((50,), 0.7)) == 0.0
    with pytest.raises(ValueError):
        estimate_noise_rate(torch.tensor([0.1, float("nan"), 0.3]))
    with pytest.raises(ValueError):
        estimate_noise_rate(torch.rand(10), method="oracle")
    with pytest.raises(ValueError):
        estimate_noise_rate(torch.rand(10), per_class=True)


def test_estimate_is_clipped(monkeypatch):
    # If the mixture called every sample noisy, the estimate must still leave something to train on.
    monkeypatch.setattr(noise_estimate, "_fit_clean_posterior", lambda losses, seed: np.zeros_like(losses))
    assert noise_estimate.estimate_noise_rate(torch.rand(100)) == pytest.approx(0.95)
