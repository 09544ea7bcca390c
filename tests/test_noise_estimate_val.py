"""Per-given-class noise-rate estimators calibrated on an expert-clean validation set (synthetic data).

The synthetic "model" draws each sample's logits and features from a distribution that depends on its TRUE
class only, identically for training and validation samples, as label noise independent of the image implies.
The long-tailed training set has a rare given class that is 85% noise (symmetric noise concentrating in a rare
class) and a rare class that is entirely clean.
"""

from __future__ import annotations

import pytest
import torch

from alr_monai.algorithms.noise_estimate import (
    confident_joint_val_rates,
    confusion_inversion_rates,
    estimate_noise_rate,
    gmm_clean_probability,
    prototype_matching_rates,
    simplex_mixture_weights,
)

NUM_CLASSES = 5
DIM = 16
NOISY_RARE, CLEAN_RARE = 3, 4


def _model_outputs(true: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and features of samples of the given TRUE classes (depends on the true class only)."""
    prototypes = torch.randn(NUM_CLASSES, DIM, generator=torch.Generator().manual_seed(123)) * 1.5
    logits = 2.5 * torch.nn.functional.one_hot(true, NUM_CLASSES).float()
    logits = logits + 1.2 * torch.randn(len(true), NUM_CLASSES, generator=generator)
    features = prototypes[true] + torch.randn(len(true), DIM, generator=generator)
    return torch.softmax(logits, -1), features


def _dataset(seed: int = 0, val_per_class: tuple[int, ...] = (200, 200, 200, 60, 60)) -> dict:
    generator = torch.Generator().manual_seed(seed)
    # given class: (true-class composition) -> classes 0-2 large with mild noise, 3 rare and 85% wrong, 4 rare clean
    composition = {
        0: [(0, 900), (1, 60), (2, 40)],
        1: [(1, 540), (0, 40), (2, 20)],
        2: [(2, 360), (0, 25), (1, 15)],
        NOISY_RARE: [(NOISY_RARE, 30), (0, 80), (1, 50), (2, 40)],
        CLEAN_RARE: [(CLEAN_RARE, 60)],
    }
    given, true = [], []
    for label, parts in composition.items():
        for cls, count in parts:
            given += [label] * count
            true += [cls] * count
    given, true = torch.tensor(given), torch.tensor(true)
    train_probs, train_features = _model_outputs(true, generator)
    val_labels = torch.cat([torch.full((n,), c) for c, n in enumerate(val_per_class)])
    val_probs, val_features = _model_outputs(val_labels, generator)
    truth = torch.tensor([float((true[given == c] != c).double().mean()) for c in range(NUM_CLASSES)])
    return {
        "given": given,
        "true": true,
        "train_probs": train_probs,
        "train_features": train_features,
        "val_labels": val_labels,
        "val_probs": val_probs,
        "val_features": val_features,
        "truth": truth,
    }


def _estimate(method: str, data: dict, **kwargs) -> torch.Tensor:
    if method == "prototype_matching":
        return prototype_matching_rates(
            data["train_features"], data["given"], data["val_features"], data["val_labels"], NUM_CLASSES, **kwargs
        )
    func = {"confusion_inversion": confusion_inversion_rates, "confident_joint_val": confident_joint_val_rates}[method]
    return func(data["train_probs"], data["given"], data["val_probs"], data["val_labels"], NUM_CLASSES, **kwargs)


METHODS = ["confusion_inversion", "prototype_matching", "confident_joint_val"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [0, 1])
def test_rare_class_that_is_85_percent_noise_is_estimated_within_0_1(method, seed):
    data = _dataset(seed)
    assert data["truth"][NOISY_RARE] == pytest.approx(0.85)
    rates = _estimate(method, data)
    assert rates.shape == (NUM_CLASSES,) and rates.dtype == torch.float64
    assert abs(float(rates[NOISY_RARE]) - 0.85) <= 0.1


def test_clean_rare_class_is_not_starved_and_large_classes_are_close():
    """The recommended estimator, on four synthetic draws: the clean rare class (60 samples) reads near 0."""
    for seed in range(4):
        data = _dataset(seed)
        rates = _estimate("prototype_matching", data)
        assert float(rates[CLEAN_RARE]) <= 0.05
        assert (rates[:3] - data["truth"][:3]).abs().max() <= 0.05
        assert ((rates >= 0) & (rates <= 1)).all()


@pytest.mark.parametrize("method", ["confusion_inversion", "confident_joint_val"])
def test_softmax_estimators_do_not_starve_the_clean_rare_class_on_average(method):
    """From softmax vectors of 60 samples the estimate is noisier (one draw read 0.18), but unbiased enough."""
    estimates = [float(_estimate(method, _dataset(seed))[CLEAN_RARE]) for seed in range(4)]
    assert sum(estimates) / len(estimates) <= 0.1
    assert max(estimates) <= 0.2


def test_loss_mixture_misreads_the_mostly_noisy_rare_class():
    """Why the new estimators exist: within a class that is 85% noise the loss mixture has nothing to split."""
    data = _dataset(0)
    losses = -torch.log(data["train_probs"].gather(1, data["given"][:, None]).squeeze(1))
    clean = gmm_clean_probability(losses, data["given"], NUM_CLASSES, per_class=True)
    gmm_rate = 1.0 - float(clean[data["given"] == NOISY_RARE].mean())
    assert abs(gmm_rate - 0.85) > 0.15
    assert abs(
        float(
            confusion_inversion_rates(
                data["train_probs"], data["given"], data["val_probs"], data["val_labels"], NUM_CLASSES
            )[NOISY_RARE]
        )
        - 0.85
    ) < abs(gmm_rate - 0.85)
    # The global estimator is still there, unchanged, and answers for the whole set.
    assert 0.0 <= estimate_noise_rate(losses, data["given"], NUM_CLASSES, per_class=True) <= 0.95


@pytest.mark.parametrize("method", METHODS)
def test_class_absent_from_validation_gets_the_weighted_mean_of_the_others(method):
    data = _dataset(0, val_per_class=(200, 200, 200, 60, 0))
    rates = _estimate(method, data)
    assert torch.isfinite(rates).all() and ((rates >= 0) & (rates <= 1)).all()
    if method != "confident_joint_val":
        counts = torch.bincount(data["given"], minlength=NUM_CLASSES).double()
        expected = float((rates[:CLEAN_RARE] * counts[:CLEAN_RARE]).sum() / counts[:CLEAN_RARE].sum())
        assert float(rates[CLEAN_RARE]) == pytest.approx(expected)
    # the other classes are still estimated from their own evidence
    assert abs(float(rates[NOISY_RARE]) - 0.85) <= 0.12


@pytest.mark.parametrize("method", METHODS)
def test_few_samples_and_empty_given_class(method):
    data = _dataset(0)
    keep = (data["given"] != CLEAN_RARE) | (torch.arange(len(data["given"])) % 20 == 0)  # 3 samples left
    for key in ("given", "true", "train_probs", "train_features"):
        data[key] = data[key][keep]
    assert int((data["given"] == CLEAN_RARE).sum()) == 3
    rates = _estimate(method, data)
    assert torch.isfinite(rates).all() and ((rates >= 0) & (rates <= 1)).all()

    empty = data["given"] != CLEAN_RARE
    for key in ("given", "true", "train_probs", "train_features"):
        data[key] = data[key][empty]
    rates = _estimate(method, data)
    assert torch.isfinite(rates).all() and ((rates >= 0) & (rates <= 1)).all()
    assert abs(float(rates[NOISY_RARE]) - 0.85) <= 0.1


def test_peer_features_are_accepted():
    data = _dataset(0)
    two_peers = torch.stack([data["train_features"], data["train_features"] * 2.0])
    val_two = torch.stack([data["val_features"], data["val_features"] * 2.0])
    rates = prototype_matching_rates(two_peers, data["given"], val_two, data["val_labels"], NUM_CLASSES)
    single = prototype_matching_rates(
        data["train_features"], data["given"], data["val_features"], data["val_labels"], NUM_CLASSES
    )
    torch.testing.assert_close(rates, single, atol=1e-6, rtol=0)


def test_simplex_mixture_weights_recover_a_known_mixture():
    components = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    weights = torch.tensor([0.1, 0.0, 0.6, 0.3], dtype=torch.float64)
    found = simplex_mixture_weights(weights @ components.double(), components)
    torch.testing.assert_close(found, weights, atol=1e-6, rtol=0)
    assert float(found.sum()) == pytest.approx(1.0) and (found >= 0).all()


def _enumerated_optimum(components: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The simplex least-squares optimum by trying every support (exponential; fine for K <= 6)."""
    import itertools

    a, b = components.double(), target.double()
    best, best_weights = float("inf"), None
    for size in range(1, a.shape[0] + 1):
        for support in itertools.combinations(range(a.shape[0]), size):
            rows = list(support)
            kkt = torch.zeros(size + 1, size + 1, dtype=torch.float64)
            kkt[:size, :size] = a[rows] @ a[rows].T
            kkt[:size, size] = kkt[size, :size] = 1.0
            solution = torch.linalg.lstsq(kkt, torch.cat([a[rows] @ b, torch.ones(1, dtype=torch.float64)])).solution
            if (solution[:size] < -1e-12).any():
                continue
            weights = torch.zeros(a.shape[0], dtype=torch.float64)
            weights[rows] = solution[:size].clamp_min(0.0)
            objective = float(((a.T @ weights - b) ** 2).sum())
            if objective < best:
                best, best_weights = objective, weights
    return best_weights


@pytest.mark.parametrize("seed", range(6))
def test_simplex_mixture_weights_are_the_exact_optimum(seed):
    # Targets outside the components' hull, so the optimum sits on a face of the simplex (some weights 0).
    generator = torch.Generator().manual_seed(seed)
    size, dim = 3 + seed % 4, 4 + 3 * seed
    components = torch.randn(size, dim, generator=generator, dtype=torch.float64)
    target = torch.randn(dim, generator=generator, dtype=torch.float64) * 1.5
    found = simplex_mixture_weights(target, components)
    torch.testing.assert_close(found, _enumerated_optimum(components, target), atol=1e-10, rtol=0)
    assert float(found.sum()) == pytest.approx(1.0, abs=1e-12) and (found >= 0).all()


def test_simplex_mixture_weights_are_exact_for_a_weak_models_class_means():
    # Class-mean softmax vectors of a network that barely separates the classes: near-uniform, ill-conditioned.
    # 3000 steps of projected gradient stopped 0.04 away from this optimum; the active-set solution is exact.
    generator = torch.Generator().manual_seed(0)
    noise = 0.2 * torch.randn(6, 6, generator=generator, dtype=torch.float64)
    components = torch.softmax(0.6 * torch.eye(6, dtype=torch.float64) + noise, -1)
    target = torch.softmax(0.5 * torch.randn(6, generator=generator, dtype=torch.float64), -1)
    found = simplex_mixture_weights(target, components)
    torch.testing.assert_close(found, _enumerated_optimum(components, target), atol=1e-10, rtol=0)


def test_simplex_mixture_weights_with_dependent_components_fall_back_to_gradient_descent():
    # Two identical components: the optimum is not unique, the active-set systems are singular, and the
    # iterative solver still returns a minimiser on the simplex.
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(3, 6, generator=generator, dtype=torch.float64)
    components = torch.cat([base, base[:1]])
    target = 0.5 * base[0] + 0.5 * base[1]
    found = simplex_mixture_weights(target, components)
    assert float(found.sum()) == pytest.approx(1.0, abs=1e-9) and (found >= 0).all()
    assert float(((components.T @ found - target) ** 2).sum()) < 1e-10
    assert float(found[0] + found[3]) == pytest.approx(0.5, abs=1e-5)


def test_invalid_inputs_are_named():
    data = _dataset(0)
    with pytest.raises(ValueError, match="given labels"):
        confusion_inversion_rates(data["train_probs"], data["given"][:-1], data["val_probs"], data["val_labels"], 5)
    with pytest.raises(ValueError, match="validation labels must lie"):
        confusion_inversion_rates(data["train_probs"], data["given"], data["val_probs"], data["val_labels"] + 1, 5)
    with pytest.raises(ValueError, match="NaN"):
        bad = data["train_probs"].clone()
        bad[0, 0] = float("nan")
        confident_joint_val_rates(bad, data["given"], data["val_probs"], data["val_labels"], 5)
    with pytest.raises(ValueError, match="width"):
        confusion_inversion_rates(data["train_probs"], data["given"], data["val_probs"][:, :4], data["val_labels"], 5)
