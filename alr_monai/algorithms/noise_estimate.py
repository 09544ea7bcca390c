"""Estimate the label-noise rate from per-sample training losses.

A hospital never knows its noise rate, yet co-teaching needs a forget rate. Early in training, networks fit
clean labels before noisy ones, so per-sample losses are bimodal: the low-loss mode is mostly clean, the
high-loss mode mostly noisy. As in DivideMix (Li et al., ICLR 2020) we fit a two-component 1-D Gaussian mixture
to min-max normalised losses; the noise rate is the mean posterior of the high-mean component.

Per-class fitting protects rare classes: a rare, clean class can have large losses only because it is rare,
and a global fit would count all of it as noisy. Fitting within each labelled class compares each sample only
with samples of the same given label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.mixture import GaussianMixture
from torch import Tensor

__all__ = [
    "ENSEMBLE_METHODS",
    "NOISE_ESTIMATION_METHODS",
    "VALIDATION_METHODS",
    "combine_estimates",
    "confident_joint_val_rates",
    "confusion_inversion_rates",
    "estimate_noise_rate",
    "expert_corrected_rates",
    "gmm_clean_probability",
    "noise_rate_from_clean_probability",
    "prototype_matching_rates",
    "simplex_mixture_weights",
]

NOISE_ESTIMATION_METHODS: tuple[str, ...] = ("gmm",)
MAX_NOISE_RATE = 0.95


def _fit_clean_posterior(losses: np.ndarray, seed: int) -> np.ndarray:
    """Posterior of the low-mean component for 1-D float64 losses; all clean if there is nothing to split."""
    low, high = float(losses.min()), float(losses.max())
    if losses.size < 2 or high - low <= 1e-12:
        return np.ones_like(losses)
    normalised = ((losses - low) / (high - low)).reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, max_iter=100, tol=1e-2, reg_covar=5e-4, random_state=seed)
    gmm.fit(normalised)
    return gmm.predict_proba(normalised)[:, int(np.argmin(gmm.means_.ravel()))]


def gmm_clean_probability(
    losses: Tensor,
    labels: Tensor | None = None,
    num_classes: int | None = None,
    per_class: bool = False,
    seed: int = 0,
    min_class_samples: int = 10,
) -> Tensor:
    """Each sample's posterior probability of belonging to the low-loss (clean) mixture component.

    Args:
        losses: per-sample losses, shape (N,), finite.
        labels: given labels, shape (N,); required when ``per_class`` is True.
        num_classes: number of classes; inferred from ``labels`` if None.
        per_class: fit one mixture per labelled class. Classes with fewer than ``min_class_samples`` samples
            keep the posteriors of the global fit.
        seed: random state of the mixture initialisation (results are deterministic for a given seed).
        min_class_samples: smallest class that gets its own fit.

    Returns:
        float32 tensor of shape (N,) on the device of ``losses``. If all losses are equal (nothing to split),
        every sample is clean (probability 1).
    """
    if losses.ndim != 1:
        raise ValueError(f"losses must be 1-D, got shape {tuple(losses.shape)}")
    values = losses.detach().to("cpu", torch.float64).numpy()
    if values.size == 0:
        raise ValueError("losses is empty")
    if not np.isfinite(values).all():
        raise ValueError("losses contain NaN or inf; drop those samples before estimating the noise rate")

    clean = _fit_clean_posterior(values, seed)
    if per_class:
        if labels is None:
            raise ValueError("per_class=True needs labels")
        if labels.shape != losses.shape:
            raise ValueError(f"labels shape {tuple(labels.shape)} must match losses {tuple(losses.shape)}")
        given = labels.detach().to("cpu", torch.long).numpy()
        num_classes = int(given.max()) + 1 if num_classes is None else num_classes
        if given.min() < 0 or given.max() >= num_classes:
            raise ValueError(f"labels must be in [0, {num_classes}), got {given.min()}..{given.max()}")
        for cls in range(num_classes):
            members = given == cls
            if members.sum() >= max(2, min_class_samples):
                clean[members] = _fit_clean_posterior(values[members], seed)
    return torch.as_tensor(clean, dtype=torch.float32).to(losses.device)


def estimate_noise_rate(
    losses: Tensor,
    labels: Tensor | None = None,
    num_classes: int | None = None,
    method: str = "gmm",
    per_class: bool = False,
    seed: int = 0,
) -> float:
    """Estimate the fraction of wrong labels from per-sample losses (e.g. after a few warm-up epochs).

    Args:
        losses: per-sample cross-entropy losses over the training set, shape (N,).
        labels: given labels, shape (N,); needed for ``per_class``.
        num_classes: number of classes; inferred from ``labels`` if None.
        method: ``"gmm"`` (the only method so far; see :data:`NOISE_ESTIMATION_METHODS`).
        per_class: fit within each labelled class and average weighted by class size, so that a rare clean
            class with high losses is not counted as noise.
        seed: random state of the mixture fit.

    Returns:
        Estimated noise rate, clipped to ``[0, 0.95]``.
    """
    if method not in NOISE_ESTIMATION_METHODS:
        raise ValueError(f"unknown noise estimation method {method!r}; choose from {NOISE_ESTIMATION_METHODS}")
    clean = gmm_clean_probability(losses, labels=labels, num_classes=num_classes, per_class=per_class, seed=seed)
    return noise_rate_from_clean_probability(clean)


def noise_rate_from_clean_probability(clean: Tensor) -> float:
    """The noise rate from per-sample clean posteriors (:func:`gmm_clean_probability`), clipped to [0, 0.95].

    The mean over samples of the noisy posterior is the class-size-weighted average of per-class rates.
    """
    rate = float(1.0 - clean.double().mean())
    return float(min(max(rate, 0.0), MAX_NOISE_RATE))


# ---------------------------------------------------------------------------------------------- per given class
#
# Under symmetric noise on a long-tailed set the noise concentrates in the rare GIVEN classes (at 60% noise on
# the embedded set, 83-92% of the samples labelled basophil / lymphocyte / monocyte are wrong). A two-component
# loss mixture inside such a class splits it about in half, because its clean and wrong samples have similar
# losses. The estimators below use the expert-clean VALIDATION set as a sample of what a correctly labelled
# member of each class looks like to the model, which a mixture fitted on noisy labels cannot know.
#
# The key identity: if the label noise depends on the true class only (symmetric, pairflip, any transition
# matrix), then for ANY per-sample statistic g(x) (softmax vector, penultimate feature),
#     E[g(x) | given = i] = sum_y P(true = y | given = i) * E[g(x) | true = y],
# and the validation set estimates the right-hand means. The weights P(true = y | given = i) are then the
# non-negative, sum-to-one solution of a small least-squares problem, and the noise rate of given class i is
# 1 - P(true = i | given = i). This is black-box shift estimation (Lipton et al., ICML 2018) applied to each
# given class as its own "target" population. Its known bias: the model has been trained on the given labels,
# so training samples look more like their given class than validation samples of their true class do
# (memorisation); early in training (the estimate epoch) that bias is small.

VALIDATION_METHODS: tuple[str, ...] = ("confident_joint_val", "confusion_inversion", "prototype_matching")


def _check_inputs(
    train_probs: Tensor, given: Tensor, val_probs: Tensor, val_labels: Tensor, num_classes: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if train_probs.ndim != 2 or val_probs.ndim != 2:
        raise ValueError(
            f"scores must be 2-D (samples, dims), got {tuple(train_probs.shape)} and {tuple(val_probs.shape)}"
        )
    if train_probs.shape[1] != val_probs.shape[1]:
        raise ValueError(f"train and validation scores differ in width: {train_probs.shape[1]} vs {val_probs.shape[1]}")
    given = given.detach().to("cpu", torch.long).reshape(-1)
    val_labels = val_labels.detach().to("cpu", torch.long).reshape(-1)
    if given.numel() != train_probs.shape[0]:
        raise ValueError(f"{given.numel()} given labels for {train_probs.shape[0]} training rows")
    if val_labels.numel() != val_probs.shape[0]:
        raise ValueError(f"{val_labels.numel()} validation labels for {val_probs.shape[0]} validation rows")
    for name, labels in (("given labels", given), ("validation labels", val_labels)):
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got {int(labels.min())}..{int(labels.max())}")
    train = train_probs.detach().to("cpu", torch.float64)
    val = val_probs.detach().to("cpu", torch.float64)
    if not (torch.isfinite(train).all() and torch.isfinite(val).all()):
        raise ValueError("scores contain NaN or inf")
    return train, given, val, val_labels


def _fill_missing(rates: Tensor, counts: Tensor) -> Tensor:
    """Classes with no estimate (NaN) get the count-weighted mean of the estimated ones (0 if there are none)."""
    known = ~torch.isnan(rates)
    if not known.any():
        return torch.zeros_like(rates)
    weights = counts[known].double()
    fill = float((rates[known] * weights).sum() / weights.sum().clamp_min(1.0))
    return torch.where(known, rates, torch.full_like(rates, fill))


def _project_to_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of a vector onto the probability simplex (Duchi et al., 2008)."""
    u, _ = torch.sort(v, descending=True)
    cumulative = torch.cumsum(u, 0) - 1.0
    positions = torch.arange(1, v.numel() + 1, dtype=v.dtype)
    support = u - cumulative / positions > 0
    rho = int(positions[support][-1])
    return (v - cumulative[rho - 1] / rho).clamp_min(0.0)


def _fista_simplex(gram: Tensor, ab: Tensor, iterations: int) -> Tensor:
    """Accelerated projected gradient (FISTA) for ``min 1/2 w'Gw - ab'w`` on the simplex; deterministic."""
    lipschitz = float(torch.linalg.eigvalsh(gram).max().clamp_min(1e-12))
    weights = torch.full((gram.shape[0],), 1.0 / gram.shape[0], dtype=torch.float64)
    momentum, previous, step = weights.clone(), weights.clone(), 1.0
    for _ in range(iterations):
        weights = _project_to_simplex(momentum - (gram @ momentum - ab) / lipschitz)
        next_step = (1.0 + (1.0 + 4.0 * step * step) ** 0.5) / 2.0
        momentum = weights + ((step - 1.0) / next_step) * (weights - previous)
        if float((weights - previous).abs().max()) < 1e-12:
            break
        previous, step = weights.clone(), next_step
    return weights


def _active_set_simplex(gram: Tensor, ab: Tensor) -> Tensor | None:
    """Exact minimiser of ``1/2 w'Gw - ab'w`` over the simplex by a primal active-set method.

    Nocedal and Wright, Numerical Optimization, algorithm 16.3: from the uniform (feasible) point, each step solves
    the equality-constrained problem on the free weights (sum of the step zero), moves as far as the bounds allow,
    and frees the bound with the most negative multiplier once the step vanishes. Returns None when a system is
    singular (components that are not linearly independent) or it does not finish, so the caller falls back.
    """
    size = gram.shape[0]
    weights = torch.full((size,), 1.0 / size, dtype=torch.float64)
    at_bound = torch.zeros(size, dtype=torch.bool)
    scale = max(1.0, float(gram.abs().max()), float(ab.abs().max()))
    for _ in range(20 * size + 20):
        free = torch.nonzero(~at_bound).reshape(-1)
        gradient = gram @ weights - ab
        n = free.numel()
        kkt = torch.zeros(n + 1, n + 1, dtype=torch.float64)
        kkt[:n, :n] = gram[free][:, free]
        kkt[:n, n] = 1.0
        kkt[n, :n] = 1.0
        rhs = torch.cat([-gradient[free], torch.zeros(1, dtype=torch.float64)])
        try:
            solution = torch.linalg.solve(kkt, rhs)
        except RuntimeError:  # torch.linalg.LinAlgError: exactly singular
            return None
        if not bool(torch.isfinite(solution).all()) or float((kkt @ solution - rhs).abs().max()) > 1e-9 * scale:
            return None
        step = torch.zeros(size, dtype=torch.float64)
        step[free] = solution[:n]
        if float(step.abs().max()) <= 1e-13:
            # Stationary on the free set: a bound whose multiplier is negative is released, else this is optimal.
            multipliers = gradient + solution[n]
            multipliers[~at_bound] = float("inf")
            if float(multipliers.min()) >= -1e-10 * scale:
                return weights
            at_bound[int(multipliers.argmin())] = False
            continue
        shrinking = (step < 0) & ~at_bound
        ratios = torch.where(shrinking, -weights / step.where(shrinking, torch.ones_like(step)), torch.inf)
        blocking = int(ratios.argmin())
        length = min(1.0, float(ratios[blocking]))
        weights = weights + length * step
        if length < 1.0:
            weights[blocking] = 0.0
            at_bound[blocking] = True
        weights = weights.clamp_min(0.0)
        weights = weights / weights.sum()
    return None


def simplex_mixture_weights(target: Tensor, components: Tensor, iterations: int = 3000) -> Tensor:
    """Non-negative, sum-to-one weights ``w`` minimising ``||components.T @ w - target||^2``.

    Solved exactly by an active-set method in float64 (a few small linear solves: K is the class count); where the
    components are linearly dependent, so the minimiser need not be unique, accelerated projected gradient (FISTA)
    finds one instead. Both are deterministic.

    Args:
        target: the mixture's mean statistic, shape (D,).
        components: each component's mean statistic, shape (K, D).
        iterations: FISTA's gradient steps for the dependent case (the problem is K-dimensional and small).

    Returns:
        float64 tensor of shape (K,) on the CPU, summing to 1.
    """
    if components.ndim != 2 or target.ndim != 1 or components.shape[1] != target.shape[0]:
        raise ValueError(
            f"need target (D,) and components (K, D), got {tuple(target.shape)}, {tuple(components.shape)}"
        )
    a = components.detach().to("cpu", torch.float64)
    b = target.detach().to("cpu", torch.float64)
    gram, ab = a @ a.T, a @ b
    exact = _active_set_simplex(gram, ab)
    return exact if exact is not None else _fista_simplex(gram, ab, iterations)


def _mixture_rates(
    train_stats: Tensor, given: Tensor, val_stats: Tensor, val_labels: Tensor, num_classes: int, min_val: int
) -> Tensor:
    """Noise rate of each given class from the class-mean identity; NaN where it cannot be estimated."""
    counts = torch.bincount(given, minlength=num_classes)
    val_counts = torch.bincount(val_labels, minlength=num_classes)
    present = torch.nonzero(val_counts >= max(1, min_val)).reshape(-1)
    rates = torch.full((num_classes,), float("nan"), dtype=torch.float64)
    if present.numel() == 0:
        return rates
    components = torch.stack([val_stats[val_labels == y].mean(0) for y in present.tolist()])
    for i in range(num_classes):
        # A given class absent from validation has no clean reference: it cannot be told from its neighbours.
        if counts[i] == 0 or not bool((present == i).any()):
            continue
        weights = simplex_mixture_weights(train_stats[given == i].mean(0), components)
        rates[i] = 1.0 - float(weights[int((present == i).nonzero()[0, 0])])
    return rates


def confusion_inversion_rates(
    train_probs: Tensor,
    given: Tensor,
    val_probs: Tensor,
    val_labels: Tensor,
    num_classes: int,
    soft: bool = True,
    min_val_per_class: int = 5,
) -> Tensor:
    """Noise rate of each GIVEN class by inverting the model's validation confusion (black-box shift estimation).

    The validation set is expert-clean, so ``M[y] = E_val[prediction | true = y]`` is the model's behaviour on a
    correctly labelled sample of class y. Among training samples with given label i the mean prediction is
    ``sum_y P(y | given = i) M[y]``; solving for those weights on the simplex gives ``P(i | given = i)``, the
    clean share. Unlike a loss mixture it needs no bimodality, so it holds when a class is 85% noise.

    Args:
        train_probs: softmax probabilities of the training samples from an eval-mode pass, shape (N, C).
        given: given (possibly wrong) training labels, shape (N,).
        val_probs: softmax probabilities of the validation samples, shape (M, C).
        val_labels: expert-clean validation labels, shape (M,).
        num_classes: C.
        soft: use the mean probability vectors; False uses one-hot argmax predictions (a hard confusion).
        min_val_per_class: a class with fewer validation samples is not used as a component, and its own
            rate falls back to the count-weighted mean of the other classes' rates.

    Returns:
        float64 tensor (C,) of noise rates in [0, 1]; a class with no training samples gets the fallback too.
    """
    train, given, val, val_labels = _check_inputs(train_probs, given, val_probs, val_labels, num_classes)
    if not soft:
        train = torch.nn.functional.one_hot(train.argmax(1), train.shape[1]).double()
        val = torch.nn.functional.one_hot(val.argmax(1), val.shape[1]).double()
    rates = _mixture_rates(train, given, val, val_labels, num_classes, min_val_per_class)
    return _fill_missing(rates, torch.bincount(given, minlength=num_classes)).clamp(0.0, 1.0)


def prototype_matching_rates(
    train_features: Tensor,
    given: Tensor,
    val_features: Tensor,
    val_labels: Tensor,
    num_classes: int,
    min_val_per_class: int = 5,
) -> Tensor:
    """Noise rate of each GIVEN class from penultimate features and clean validation prototypes.

    The same identity as :func:`confusion_inversion_rates` on L2-normalised features: the mean feature of the
    samples given label i is a mixture of the validation prototypes (class means), weighted by
    ``P(true | given = i)``. Features are wider than the class count, so the weights are over-determined.

    Args:
        train_features: penultimate features of the training samples, (N, D), or (P, N, D) for P peers
            (their normalised features are concatenated).
        given: given training labels, (N,).
        val_features: validation features, (M, D) or (P, M, D).
        val_labels: expert-clean validation labels, (M,).
        num_classes: C.
        min_val_per_class: as in :func:`confusion_inversion_rates`.

    Returns:
        float64 tensor (C,) of noise rates in [0, 1].
    """

    def flatten(features: Tensor) -> Tensor:
        features = features.detach().to("cpu", torch.float64)
        if features.ndim == 3:
            features = torch.cat(list(torch.nn.functional.normalize(features, dim=-1)), dim=-1)
        return torch.nn.functional.normalize(features, dim=-1)

    train, given, val, val_labels = _check_inputs(
        flatten(train_features), given, flatten(val_features), val_labels, num_classes
    )
    rates = _mixture_rates(train, given, val, val_labels, num_classes, min_val_per_class)
    return _fill_missing(rates, torch.bincount(given, minlength=num_classes)).clamp(0.0, 1.0)


def confident_joint_val_rates(
    train_probs: Tensor,
    given: Tensor,
    val_probs: Tensor,
    val_labels: Tensor,
    num_classes: int,
    min_val_per_class: int = 5,
) -> Tensor:
    """Noise rate of each GIVEN class from a confident joint whose thresholds come from the clean validation set.

    Confident learning (Northcutt et al., JAIR 2021) counts a training sample as "confidently class j" when its
    probability of j reaches a per-class threshold ``t_j``; cleanlab takes ``t_j`` as the mean probability of j
    over samples GIVEN label j, which, in a class that is mostly noise, is low and lets the noise count as
    clean. Here ``t_j`` is the mean probability of j over VALIDATION samples whose expert label is j. Each row
    of the joint (given label i) is calibrated to the class's size, so the noise rate of i is the share of its
    confidently assigned samples that land off the diagonal.

    Args:
        train_probs: softmax probabilities of the training samples, (N, C).
        given: given training labels, (N,).
        val_probs: softmax probabilities of the validation samples, (M, C).
        val_labels: expert-clean validation labels, (M,).
        num_classes: C.
        min_val_per_class: a class with fewer validation samples takes cleanlab's threshold (mean probability
            over the training samples given that label).

    Returns:
        float64 tensor (C,) of noise rates in [0, 1]; a class none of whose samples passes any threshold gets
        the count-weighted mean of the other classes' rates.
    """
    train, given, val, val_labels = _check_inputs(train_probs, given, val_probs, val_labels, num_classes)
    thresholds = torch.empty(num_classes, dtype=torch.float64)
    for j in range(num_classes):
        in_val = val_labels == j
        if int(in_val.sum()) >= max(1, min_val_per_class):
            thresholds[j] = val[in_val, j].mean()
        elif (given == j).any():
            thresholds[j] = train[given == j, j].mean()
        else:
            thresholds[j] = float("inf")  # nothing to calibrate against: never a confident class
    above = train >= thresholds
    confident = above.any(1)
    assigned = torch.where(above, train, torch.full_like(train, -1.0)).argmax(1)
    rates = torch.full((num_classes,), float("nan"), dtype=torch.float64)
    for i in range(num_classes):
        row = confident & (given == i)
        if row.any():
            rates[i] = 1.0 - float((assigned[row] == i).double().mean())
    return _fill_missing(rates, torch.bincount(given, minlength=num_classes)).clamp(0.0, 1.0)


# Several estimators, one decision. Each estimator above fails in its own way: the loss mixture splits a class
# whose clean and wrong losses overlap about in half; the validation-calibrated ones read the network rather than
# the labels while the network is weak, and memorisation pulls them towards 0 late in training. Where they agree,
# the common value is safe; where they disagree, the rate of that class is unknown: the run says so, and the
# first round's audit can measure it.
ENSEMBLE_METHODS: tuple[str, ...] = ("prototype_matching", "confident_joint_val", "confusion_inversion", "gmm")


def combine_estimates(estimates: dict[str, Tensor], tolerance: float = 0.15) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class noise rates from several estimators: their median, with the classes where they disagree flagged.

    The median of four estimators survives one that fails (on a binary long tail at symmetric 0.3, confusion
    inversion read 0.0 for a class 80% wrong while the others read 0.6-0.8). A class is flagged when no majority of
    its estimators agrees within ``tolerance`` (the narrowest range holding more than half of them is wider): then
    the median itself is uncertain, the run says so, and the first round's audit
    (:class:`~alr_monai.relabel.recut.TrustedRecut`) measures it. The full range (max - min) was the first rule:
    one estimator that is always off (the validation-calibrated confident joint, on most cells of the suite) made
    it flag 93 of 130 classes, and it hardly predicted the median's error (correlation 0.16); the majority rule
    flagged 31, half of the classes the median missed by more than 0.10 among them (correlation 0.39). Taking the
    LOWER estimate where they disagree (cut less, keep more) was tried: on that binary cell it cut the 80%-wrong
    class at 0.60 and lost 0.08 balanced accuracy against prototype matching alone (one seed), so the flag changes
    no rate. NaN estimates are ignored.

    Args:
        estimates: estimator name -> (C,) per-class rates.
        tolerance: the majority's range above which a class is flagged.

    Returns:
        ``(rates, spread, flagged)``: (C,) float64 median rates, (C,) spread (the narrowest range holding a
        majority of the estimators, NaN where fewer than two exist), and a (C,) boolean mask of the classes
        whose estimators disagree.
    """
    if not estimates:
        raise ValueError("no estimates to combine")
    stacked = torch.stack([torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in estimates.values()])
    finite = torch.isfinite(stacked)
    num_classes = stacked.shape[1]
    rates = torch.full((num_classes,), float("nan"), dtype=torch.float64)
    spread = torch.full((num_classes,), float("nan"), dtype=torch.float64)
    cautious = torch.zeros(num_classes, dtype=torch.bool)
    for c in range(num_classes):
        values = torch.sort(stacked[finite[:, c], c]).values
        if values.numel() == 0:
            continue
        rates[c] = (
            values.median() if values.numel() % 2 else values[values.numel() // 2 - 1 : values.numel() // 2 + 1].mean()
        )
        if values.numel() >= 2:
            majority = values.numel() // 2 + 1
            spread[c] = (values[majority - 1 :] - values[: values.numel() - majority + 1]).min()
            cautious[c] = float(spread[c]) > tolerance
    return rates, spread, cautious


def expert_corrected_rates(
    prior_rates: Sequence[float] | Tensor,
    class_sizes: Sequence[int] | Tensor,
    pool_sizes: Sequence[int] | Tensor,
    pool_answered: Sequence[int] | Tensor,
    pool_wrong: Sequence[int] | Tensor,
    trusted_answered: Sequence[int] | Tensor,
    trusted_wrong: Sequence[int] | Tensor,
    prior_strength: float = 10.0,
) -> Tensor:
    """Each given class's noise rate corrected by the expert's answers (a Beta-binomial update per part).

    A given class splits into the suspected pool (not trusted by phase 1) and the trusted set. The expert's
    answers on randomly drawn members of each part measure that part's wrong share; each part's prior is what
    the phase-1 estimate implies (the pool takes the wrong labels the trusted set's cut did not remove). With
    ``k`` answers of which ``w`` were wrong, a part's rate is ``(w + s * prior) / (k + s)`` for prior strength
    ``s``, so a handful of answers moves it a little and many answers decide it. The class's rate is the
    size-weighted mean of its two parts.

    Only answers on RANDOM draws belong here: acquisition-ranked queries over-sample the doubtful cases, and
    their wrong share is not the pool's.

    Args:
        prior_rates: (C,) phase-1 estimates per given class.
        class_sizes: (C,) training samples per given class.
        pool_sizes: (C,) of them in the suspected pool (the rest are trusted).
        pool_answered, pool_wrong: (C,) random pool answers and how many of them changed the label (or
            excluded the sample).
        trusted_answered, trusted_wrong: (C,) random audit answers on trusted samples and how many were wrong.
        prior_strength: pseudo-answers the phase-1 estimate is worth within each part.

    Returns:
        (C,) float64 corrected rates in [0, 1].
    """
    prior = torch.as_tensor(prior_rates, dtype=torch.float64).nan_to_num(0.0).clamp(0.0, 1.0)
    size = torch.as_tensor(class_sizes, dtype=torch.float64)
    pool = torch.as_tensor(pool_sizes, dtype=torch.float64)
    trusted = (size - pool).clamp_min(0.0)
    # what the phase-1 estimate implies per part: the trusted set's precision was assumed perfect, so every
    # wrong label it expected sits in the pool (capped at the pool's size)
    expected_wrong = prior * size
    prior_pool = torch.where(pool > 0, (expected_wrong / pool.clamp_min(1.0)).clamp(0.0, 1.0), torch.zeros_like(pool))
    prior_trusted = torch.zeros_like(prior)
    k_pool = torch.as_tensor(pool_answered, dtype=torch.float64)
    w_pool = torch.as_tensor(pool_wrong, dtype=torch.float64)
    k_trusted = torch.as_tensor(trusted_answered, dtype=torch.float64)
    w_trusted = torch.as_tensor(trusted_wrong, dtype=torch.float64)
    if bool((w_pool > k_pool).any()) or bool((w_trusted > k_trusted).any()):
        raise ValueError("more wrong answers than answers in some class")
    s = float(prior_strength)
    pool_rate = (w_pool + s * prior_pool) / (k_pool + s)
    trusted_rate = (w_trusted + s * prior_trusted) / (k_trusted + s)
    rates = (pool * pool_rate + trusted * trusted_rate) / size.clamp_min(1.0)
    return torch.where(size > 0, rates, prior).clamp(0.0, 1.0)
